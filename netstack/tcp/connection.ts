/**
 * One TCP connection: the RFC 9293 state machine with RFC 7323 (window scale,
 * timestamps, PAWS), RFC 5961 (challenge ACKs), RFC 6298 (RTO), RFC 5681 +
 * RFC 6582 (NewReno), RFC 2018 (SACK both ways) and RFC 2883 (D-SACK sent),
 * RFC 6675 + RFC 8985 (SACK recovery, RACK, TLP), RFC 3522 (Eifel undo of
 * a spurious timeout), RFC 7661 (cwnd validation) and RFC 1122's keepalive. It never sees a frame: the Stack (its host) demuxes
 * segments to `input()` and builds Ethernet/IPv4 around what `transmit()`
 * hands it.
 *
 * ## What the connection needs from its host (TcpHost)
 *
 * - `clock`, `timers`: the injected clock and the one timer wheel. Each
 *   connection creates four Timer objects once (retransmission, persist,
 *   keepalive, linger = TIME-WAIT/FIN-WAIT-2) and re-arms them.
 * - `transmit(conn, seg, source, from, len)`: send one segment now. The
 *   `seg` object (and its options) is reused by the connection for the next
 *   segment: the host must use it before returning. If len > 0 the payload is
 *   `source.copyOut(from, dst, dstOff, len)` (the send ring, `from` counted
 *   from SND.UNA's byte): the host copies it straight into the frame.
 * - `scheduleFlush(conn)`: call `conn.flushAck()` once at the end of the
 *   current input batch (or soon, when called from an application write or a
 *   timer). flushAck() sends everything the connection has to send: new data
 *   (as full segments: writes made in one turn are coalesced) and, if an ACK
 *   or window update is still owed, one pure ACK. ACKs are thereby coalesced
 *   per batch; out-of-order and duplicate segments are answered at once
 *   (immediate duplicate ACKs with SACK blocks, as Linux does, so that the
 *   peer's fast retransmit works).
 * - `released(conn)`: the connection reached CLOSED (after TIME-WAIT) or was
 *   aborted: remove it from the tables. Called exactly once.
 * - `localMss`: the largest segment we can receive, MTU - 40.
 * - `isn?(tuple)`: optional initial sequence number source (tests pass a
 *   fixed one; the Stack uses RFC 6528, tcp/isn.ts; default Math.random).
 * - `adoptTimeWait?(fields)`: optional; takes TIME-WAIT over as a small
 *   record (tcp/time-wait.ts) once the owner was told 'closed'.
 *
 * ## Choices
 *
 * - No Nagle (RFC 1122 §4.2.3.4 allows disabling it): a NAT must not add
 *   latency to the guest's or the host's writes. Small segments are still
 *   avoided because output happens once per flush, after every write of the
 *   turn has been buffered. Sender-side SWS avoidance (RFC 9293 §3.8.6.2.1):
 *   a segment smaller than both the MSS and the data waiting is not sent
 *   while data is in flight (the ACK clock will open the window further).
 * - ACKs leave at the end of the input batch (coalesced per batch), with one
 *   exception when `delayedAckMs` > 0: in-order data smaller than a
 *   full-sized segment (a request, a keystroke) is acknowledged up to
 *   delayedAckMs later (RFC 9293 §3.8.6.3, RFC 1122 §4.2.3.2 allow up to
 *   0.5 s), so that the application's answer carries the ACK instead of a
 *   separate segment costing a frame each way through the guest link. Only
 *   on a connection that has shown it answers within delayedAckMs (Linux's
 *   "pingpong" mode, left again when a delayed ACK had to be sent alone), so
 *   that a one-way flow or a Nagle-bound writer is not made to wait. A full
 *   segment, a FIN, out-of-order data or a window update is still
 *   acknowledged at the end of the batch.
 * - Zero-window probes are Linux's (tcp_xmit_probe_skb): an ACK with
 *   SEQ = SND.UNA - 1, which the peer must answer with its current window.
 * - Loss recovery: with SACK, RFC 6675 recovery over a scoreboard of the
 *   segments in flight (scoreboard.ts), losses found by RACK and tail losses
 *   by a tail loss probe (RFC 8985); without SACK, NewReno (RFC 6582) with
 *   limited transmit (RFC 3042). We offer SACK-permitted both ways.
 * - onClose('closed') is raised when the close completes from the
 *   application's point of view (entering TIME-WAIT or CLOSED); the host is
 *   told `released` only when TIME-WAIT ends, so the four-tuple keeps
 *   answering retransmitted FINs for timeWaitMs.
 * - The peer's window scale is capped at 14 (RFC 7323 §2.3).
 */
import type { FourTuple, TcpCloseReason, TcpHandlers, TcpSocket } from '../api.js';
import type { Clock } from '../clock.js';
import { Timer, type TimerWheel } from '../timer-wheel.js';
import { NewReno } from './congestion.js';
import {
  TCP_ACK,
  TCP_FIN,
  TCP_PSH,
  TCP_RST,
  TCP_SYN,
  maxSackBlocks,
  type TcpOptions,
  type TcpRepr,
  type TcpSegmentFields,
} from './header.js';
import { OooRanges, RecvRing } from './recv-buffer.js';
import { RttEstimator } from './rtt.js';
import { SendBuffer } from './send-buffer.js';
import { OOW_ACK_INTERVAL_MS, TS_RECENT_VALID_MS, type TimeWaitFields } from './time-wait.js';
import { Scoreboard } from './scoreboard.js';
import { seqAdd, seqDiff, seqGe, seqGt, seqLe, seqLt } from './seq.js';

export interface PayloadSource {
  copyOut(from: number, dst: Uint8Array, dstOff: number, len: number): void;
  /** The bytes from `from` on, as far as they lie in one piece (at most len): see SendBuffer.contiguous. */
  contiguous(from: number, len: number): Uint8Array;
}

export interface TcpHost {
  readonly clock: Clock;
  readonly timers: TimerWheel;
  /** Send one segment now (see the header comment). */
  transmit(conn: TcpConnection, seg: TcpSegmentFields, source: PayloadSource | null, from: number, len: number): void;
  /** Call conn.flushAck() once at the end of the current batch, or soon. */
  scheduleFlush(conn: TcpConnection): void;
  /** The connection is finished: forget it. Called once. */
  released(conn: TcpConnection): void;
  /** Largest segment this side can receive over IPv4: MTU - 40 (over IPv6 the connection takes 20 less: MTU - 60). */
  readonly localMss: number;
  /** Optional source of initial sequence numbers. */
  isn?(tuple: FourTuple): number;
  /**
   * Optional: take over TIME-WAIT as a small record (tcp/time-wait.ts) once
   * the owner has been told 'closed'; the connection is then released. A
   * host without it leaves the connection to wait out TIME-WAIT itself.
   */
  adoptTimeWait?(fields: TimeWaitFields): void;
}

export interface TcpConfig {
  sendBufferBytes: number;
  /** The receive window's maximum (and the receive ring's capacity): the window grows up to it (see recvWindowInitialBytes). */
  recvBufferBytes: number;
  /**
   * The receive window a connection starts with; it doubles (at most once
   * per window of data received) while the peer fills it and the owner takes
   * every byte at once, up to recvBufferBytes: a bulk sender across a fast
   * path gets the window its rate needs, a flow whose owner stalls keeps the
   * small one. Default: recvBufferBytes (no growth).
   */
  recvWindowInitialBytes?: number;
  /** Bound on out-of-order bytes held per connection. */
  oooBytes: number;
  /** Bound on separate out-of-order ranges (holes) per connection. Default 32. */
  oooRanges?: number;
  /** Default 200 (Linux TCP_RTO_MIN). */
  minRtoMs?: number;
  /** Default 120000 (Linux TCP_RTO_MAX). */
  maxRtoMs?: number;
  /** Default 1000 (RFC 6298 §2.1). */
  initialRtoMs?: number;
  /** Retransmissions of one segment (or unanswered zero-window probes) before giving up. Default 15 (Linux tcp_retries2). */
  maxRetries?: number;
  /** SYN retransmissions of an active open. Default 6 (Linux tcp_syn_retries). */
  synRetries?: number;
  /** SYN-ACK retransmissions of a passive open. Default 5 (Linux tcp_synack_retries). */
  synAckRetries?: number;
  /** Default 60000 (Linux TCP_TIMEWAIT_LEN). */
  timeWaitMs?: number;
  /**
   * Idle time allowed in FIN-WAIT-2 before giving up; null (the default) =
   * never. Linux times out FIN-WAIT-2 only for sockets their application has
   * let go of; ours always has an owner (the NAT), and a peer in long RTO
   * backoff can be silent for minutes while still alive, so deciding that a
   * half-closed flow is dead is the owner's job (it can abort()).
   */
  finWait2TimeoutMs?: number | null;
  /** Idle time before keepalive probes start; null or undefined = no keepalive (RFC 1122 §4.2.3.6: off by default). */
  keepaliveMs?: number | null;
  /** Default 75000 (Linux tcp_keepalive_intvl). */
  keepaliveIntervalMs?: number;
  /** Default 9 (Linux tcp_keepalive_probes). */
  keepaliveProbes?: number;
  /** Challenge ACKs allowed per second per connection (RFC 5961 §7). Default 10. */
  challengeAckPerSecond?: number;
  /**
   * How long an ACK for in-order data smaller than a full segment may wait
   * for outgoing data to ride on; 0 (the default) = ACK at the end of the batch.
   */
  delayedAckMs?: number;
  /** New data may leave in segments of up to this many payload bytes (MSS multiples) on an offloading link; 0 = one MSS. */
  segmentOffloadBytes?: number;
}

type ResolvedConfig = Required<Omit<TcpConfig, 'keepaliveMs' | 'finWait2TimeoutMs'>> & {
  keepaliveMs: number | null;
  finWait2TimeoutMs: number | null;
};

function resolveConfig(c: TcpConfig): ResolvedConfig {
  return {
    sendBufferBytes: c.sendBufferBytes,
    recvBufferBytes: c.recvBufferBytes,
    recvWindowInitialBytes: Math.max(1, Math.min(c.recvWindowInitialBytes ?? c.recvBufferBytes, c.recvBufferBytes)),
    oooBytes: c.oooBytes,
    oooRanges: c.oooRanges ?? 32,
    minRtoMs: c.minRtoMs ?? 200,
    maxRtoMs: c.maxRtoMs ?? 120_000,
    initialRtoMs: c.initialRtoMs ?? 1000,
    maxRetries: c.maxRetries ?? 15,
    synRetries: c.synRetries ?? 6,
    synAckRetries: c.synAckRetries ?? 5,
    timeWaitMs: c.timeWaitMs ?? 60_000,
    finWait2TimeoutMs: c.finWait2TimeoutMs ?? null,
    keepaliveMs: c.keepaliveMs ?? null,
    keepaliveIntervalMs: c.keepaliveIntervalMs ?? 75_000,
    keepaliveProbes: c.keepaliveProbes ?? 9,
    challengeAckPerSecond: c.challengeAckPerSecond ?? 10,
    delayedAckMs: c.delayedAckMs ?? 0,
    segmentOffloadBytes: c.segmentOffloadBytes ?? 0,
  };
}

const enum St {
  CLOSED,
  SYN_SENT,
  SYN_RECEIVED,
  ESTABLISHED,
  FIN_WAIT_1,
  FIN_WAIT_2,
  CLOSE_WAIT,
  CLOSING,
  LAST_ACK,
  TIME_WAIT,
}

const STATE_NAMES = [
  'CLOSED',
  'SYN-SENT',
  'SYN-RECEIVED',
  'ESTABLISHED',
  'FIN-WAIT-1',
  'FIN-WAIT-2',
  'CLOSE-WAIT',
  'CLOSING',
  'LAST-ACK',
  'TIME-WAIT',
];

/** Our window scale shift: the smallest that lets the whole buffer be advertised (RFC 7323 §2.2). */
function chooseShift(bytes: number): number {
  let s = 0;
  while (s < 14 && bytes > 0xffff * 2 ** s) s++;
  return s;
}

const TS_OPTION_BYTES = 12;
/** TCP option bytes a full-sized segment may carry besides its payload (the most options can take). */
const FULL_SEGMENT_SLACK = 40;
const DEFAULT_MSS = 536; // RFC 9293 §3.7.1: when the peer sends no MSS option
/** Tail loss probe (RFC 8985 §7.2): never sooner than this (older Linux's floor), whatever the RTT. */
const MIN_PTO_MS = 10;
/** Added to the PTO when one segment is in flight: the peer may hold its ACK (Linux's minimum delayed ACK). */
const PTO_DELAYED_ACK_MS = 40;
/** Duplicate ACKs that mean loss without SACK information (RFC 5681 DupThresh). */
const DUP_THRESH = 3;
/** Linux's TCP_MIN_SND_MSS: the smallest peer MSS we honour. */
const MIN_PEER_MSS = 48;

/** What a connection that has said onClose calls from then on: nothing. */
const DETACHED_HANDLERS: TcpHandlers = { onData() {}, onEnd() {}, onDrain() {}, onClose() {} };

export class TcpConnection implements TcpSocket {
  /** Owned by the Stack: this connection is in its flush queue (an ACK to coalesce). */
  flushQueued = false;
  private st: St = St.CLOSED;
  private readonly cfg: ResolvedConfig;

  // Send sequence space (RFC 9293 §3.3.1).
  private iss = 0;
  private sndUna = 0;
  private sndNxt = 0;
  /** Highest sequence number sent (SND.NXT goes back after a timeout, this does not). */
  private sndMax = 0;
  private sndWnd = 0;
  private maxSndWnd = 0;
  private sndWl1 = 0;
  private sndWl2 = 0;
  private sndShift = 0;
  /** end() was called: a FIN follows the data. */
  private finQueued = false;
  /** Sequence number of our FIN (valid when finQueued). */
  private finSeq = 0;

  // Receive sequence space.
  private irs = 0;
  private rcvNxt = 0;
  /** Right edge of the window last advertised: never moves left (RFC 9293 §3.8.6.2.1). */
  private rcvAdvRight = 0;
  private rcvShift = 0;
  /** Sequence number of the peer's FIN when it arrived out of order, or -1. */
  private peerFinSeq = -1;
  private finReceived = false;
  private endDelivered = false;

  // Options.
  private tsOk = false;
  /** Both sides sent the window scale option. */
  private wsOk = false;
  /** We sent the first SYN (Stack.connectTcp): onConnect is due. */
  private activeOpen = false;
  private sackOk = false;
  private tsRecent = 0;
  /** When TS.Recent was last set (RFC 7323 §5.5: it expires after 24 days). */
  private tsRecentAt = 0;
  /** Our TSval at the last retransmission timeout: older echoes give no RTT sample. */
  private tsSampleFloor = 0;
  private tsSampleFloorActive = false;
  /** The first RTO of an episode may prove spurious (Eifel, RFC 3522): the window to restore then. */
  private undoArmed = false;
  private undoCwnd = 0;
  private undoSsthresh = 0;
  private lastAckSent = 0;
  private readonly tsOffset: number;
  private peerMss = DEFAULT_MSS;
  /** Payload bytes per segment without SACK blocks: min(peer MSS, our MSS) less the timestamp option. */
  private smss = DEFAULT_MSS;

  // Buffers.
  private readonly sendBuf: SendBuffer;
  private readonly recv: RecvRing;
  private readonly ooo: OooRanges;
  /** Bytes of ring kept beyond recvBufferBytes so a window rounded up by the scale still fits. */
  private readonly recvSlack: number;
  /** The receive window's current ceiling: recvWindowInitialBytes, doubled by growWindow() up to recvBufferBytes. */
  private rcvWndCap: number;
  /** In-order bytes received since the ceiling last grew (it grows at most once per window of data, about once per RTT). */
  private rcvSinceGrow = 0;

  // Loss recovery.
  private readonly rtt: RttEstimator;
  private readonly cc: NewReno;
  private retries = 0;
  private rttTiming = false;
  private rttSeq = 0;
  private rttStart = 0;
  private persistBackoff = 0;
  private probesOut = 0;
  /** With SACK: the scoreboard for RFC 6675 recovery and RACK (RFC 8985); null without SACK (NewReno). */
  private board: Scoreboard | null = null;
  /** RACK's reordering timer and the tail loss probe's timer, made when first needed. */
  private reoTimer: Timer | null = null;
  private tlpTimer: Timer | null = null;
  /** A tail loss probe went out and no ACK advanced SND.UNA since (one probe per episode). */
  private tlpOut = false;
  /** Recovery just started: one lost segment is resent whatever the pipe (RFC 6675 §5 step 4.3). */
  private recoveryKick = false;
  /** Extra sending room for one output() call (the tail loss probe's one new segment). */
  private extraCwnd = 0;
  private readonly lostRange: [number, number] = [0, 0];
  /** When data last left (restart after idle, RFC 5681 §4.1). */
  private lastDataSentAt = 0;

  // Application side.
  private paused = false;
  private writeBlocked = false;
  private delivering = false;
  private closeNotified = false;
  /** The close completed while bytes still waited in the paused receive ring: onClose after they are delivered. */
  private closePendingDelivery = false;
  private isReleased = false;

  // Output bookkeeping.
  private ackOwed = false;
  /** In-order data arrived and is not acknowledged yet (the ACK may be delayed, see delayedAckMs). */
  private dataAckOwed = false;
  /** Made on the first delayed ACK: most connections (bulk, idle) never need it. */
  private delAckTimer: Timer | null = null;
  /** When in-order data last arrived (only kept while delayedAckMs > 0). */
  private lastDataAt = -Infinity;
  /** We answered the peer's data within delayedAckMs: its next small segment's ACK may wait for our answer. */
  private pingpong = false;
  private lastRecvAt = 0;
  private keepaliveProbesSent = 0;
  private challengeWindowStart = -Infinity;
  private challengeCount = 0;
  private lastOowAckAt = -Infinity;

  // Timers, made once.
  private readonly rtxTimer: Timer;
  private readonly persistTimer: Timer;
  private readonly keepaliveTimer: Timer;
  private readonly lingerTimer: Timer;

  // Reused outgoing segment.
  private readonly out: TcpSegmentFields;
  private readonly outOpts: TcpOptions;
  private readonly outTs = { value: 0, echo: 0 };
  private readonly outSack: number[] = [];
  /** Duplicate data arrived: the next segment reports it in a D-SACK block (RFC 2883). */
  private dsackPending = false;
  private dsackStart = 0;
  private dsackEnd = 0;
  /** Largest segment we can receive on this connection's family (see TcpHost.localMss). */
  private readonly localMss: number;

  private constructor(
    private readonly host: TcpHost,
    config: TcpConfig,
    readonly tuple: FourTuple,
    private handlers: TcpHandlers,
  ) {
    // One TCP for both families: only the network header's size differs (IPv6's is 20 bytes longer).
    this.localMss = typeof tuple.src === 'number' ? host.localMss : host.localMss - 20;
    this.cfg = resolveConfig(config);
    this.rcvShift = chooseShift(this.cfg.recvBufferBytes);
    this.recvSlack = (1 << this.rcvShift) - 1;
    this.rcvWndCap = this.cfg.recvWindowInitialBytes;
    this.sendBuf = new SendBuffer(this.cfg.sendBufferBytes);
    this.recv = new RecvRing(this.cfg.recvBufferBytes + this.recvSlack);
    this.ooo = new OooRanges(this.cfg.oooBytes, this.cfg.oooRanges);
    this.rtt = new RttEstimator(this.cfg.minRtoMs, this.cfg.maxRtoMs, this.cfg.initialRtoMs);
    this.iss = (host.isn !== undefined ? host.isn(tuple) : Math.floor(Math.random() * 0x100000000)) >>> 0;
    this.tsOffset = Math.imul(this.iss, 2654435761) >>> 0;
    this.sndUna = this.sndNxt = this.sndMax = this.iss;
    this.cc = new NewReno(DEFAULT_MSS, this.iss);
    this.rtxTimer = new Timer(() => this.onRetransmitTimer());
    this.persistTimer = new Timer(() => this.onPersistTimer());
    this.keepaliveTimer = new Timer(() => this.onKeepaliveTimer());
    this.lingerTimer = new Timer(() => this.onLingerTimer());
    this.outOpts = { mss: null, windowScale: null, sackPermitted: false, timestamp: null, sackBlocks: null };
    this.out = {
      srcPort: tuple.dstPort,
      dstPort: tuple.srcPort,
      seq: 0,
      ack: 0,
      flags: 0,
      window: 0,
      options: this.outOpts,
    };
    this.lastRecvAt = host.clock.now();
  }

  // ------------------------------------------------------------------ opens

  /**
   * Passive open: answers the guest's SYN (RFC 9293 §3.10.7.2) with a SYN-ACK
   * carrying only the options the guest offered. State SYN-RECEIVED.
   */
  static acceptSyn(host: TcpHost, config: TcpConfig, tuple: FourTuple, syn: TcpRepr, handlers: TcpHandlers): TcpConnection {
    const c = new TcpConnection(host, config, tuple, handlers);
    const o = syn.options;
    c.irs = syn.seq >>> 0;
    c.rcvNxt = seqAdd(syn.seq, 1);
    c.peerMss = peerMssOf(o.mss);
    if (o.windowScale !== null) {
      c.wsOk = true;
      c.sndShift = Math.min(14, o.windowScale);
    } else {
      c.rcvShift = 0; // RFC 7323 §2.2: scaling only if both sides offered it
    }
    c.sackOk = o.sackPermitted;
    if (o.timestamp !== null) {
      c.tsOk = true;
      c.tsRecent = o.timestamp.value;
      c.tsRecentAt = c.lastRecvAt;
    }
    // The SYN's window is never scaled (RFC 7323 §2.2).
    c.sndWnd = c.maxSndWnd = syn.window;
    c.sndWl1 = syn.seq;
    c.sndWl2 = c.iss;
    c.updateSmss();
    c.st = St.SYN_RECEIVED;
    c.sendSyn();
    return c;
  }

  /** Active open: sends SYN with every option we support. State SYN-SENT. */
  static connect(host: TcpHost, config: TcpConfig, tuple: FourTuple, handlers: TcpHandlers): TcpConnection {
    const c = new TcpConnection(host, config, tuple, handlers);
    c.st = St.SYN_SENT;
    c.activeOpen = true;
    c.sendSyn();
    return c;
  }

  // ------------------------------------------------------------------ TcpSocket

  get state(): string {
    return STATE_NAMES[this.st]!;
  }

  get bufferedAmount(): number {
    return this.sendBuf.length;
  }

  get recvBufferedAmount(): number {
    return this.recv.length + this.ooo.bytes;
  }

  get writableSpace(): number {
    return this.canWrite() ? this.sendBuf.free : 0;
  }

  write(data: Uint8Array): number {
    if (!this.canWrite()) return 0;
    const n = this.sendBuf.write(data);
    if (n < data.length) this.writeBlocked = true;
    if (n > 0 && this.isSynchronized()) this.host.scheduleFlush(this);
    return n;
  }

  waitForRoom(): boolean {
    if (!this.canWrite() || this.sendBuf.free >= this.sendBuf.capacity / 2) return false;
    this.writeBlocked = true; // onDrain once half the buffer is free, as after a short write
    return true;
  }

  end(): void {
    if (this.finQueued) return;
    switch (this.st) {
      case St.SYN_SENT:
        // Nothing was synchronized: there is nobody to say goodbye to (RFC 9293 §3.10.4).
        if (this.sendBuf.length === 0) {
          this.finish('closed', false);
          return;
        }
        break;
      case St.SYN_RECEIVED:
      case St.ESTABLISHED:
        break;
      case St.CLOSE_WAIT:
        break;
      default:
        return;
    }
    this.finQueued = true;
    this.finSeq = seqAdd(this.dataStartSeq(), this.sendBuf.length);
    if (this.st === St.ESTABLISHED) this.st = St.FIN_WAIT_1;
    else if (this.st === St.CLOSE_WAIT) this.st = St.LAST_ACK;
    // SYN-SENT / SYN-RECEIVED: the FIN leaves after the handshake completes.
    if (this.isSynchronized()) this.host.scheduleFlush(this);
  }

  abort(): void {
    if (this.st === St.CLOSED) return;
    // RFC 9293 §3.10.4: ABORT in a synchronized state sends RST; Linux sets ACK too.
    if (this.st !== St.SYN_SENT && this.st !== St.TIME_WAIT) {
      this.sendControl(TCP_RST | TCP_ACK, this.sndMax);
    }
    this.finish('aborted', false);
  }

  /** Drop the connection without sending anything (a SYN reuses a TIME-WAIT four-tuple; the guest went away). */
  abortSilently(): void {
    if (this.st === St.CLOSED) return;
    this.finish('aborted', false);
  }

  pause(): void {
    this.paused = true;
    // The owner could not take everything at once: its window is large enough (see growWindow).
    this.rcvSinceGrow = 0;
  }

  resume(): void {
    if (!this.paused) return;
    this.paused = false;
    const before = this.advertisedWindow();
    this.deliver();
    if (this.st === St.CLOSED && this.isReleased) return;
    // RFC 9293 §3.8.6.2.2: announce the reopened window when it grew by enough, or from zero.
    if (this.isSynchronized() && this.windowUpdateWorthSending(before)) {
      this.ackOwed = true;
      this.host.scheduleFlush(this);
    }
  }

  // ------------------------------------------------------------------ introspection for tests and stats

  /** Snapshot of internals (tests, logs). */
  get debug(): {
    sndUna: number; sndNxt: number; sndWnd: number; rcvNxt: number; rcvWnd: number; cwnd: number; ssthresh: number;
    rto: number; smss: number; tsOk: boolean; sackOk: boolean; sndShift: number; rcvShift: number; oooBytes: number;
    recvBuffered: number; inRecovery: boolean; iss: number; irs: number; allocatedBytes: number; rcvWndCap: number;
  } {
    return {
      sndUna: this.sndUna, sndNxt: this.sndNxt, sndWnd: this.sndWnd, rcvNxt: this.rcvNxt,
      rcvWnd: this.advertisedWindow(), cwnd: this.cc.cwnd, ssthresh: this.cc.ssthresh, rto: this.rtt.rto,
      smss: this.smss, tsOk: this.tsOk, sackOk: this.sackOk, sndShift: this.sndShift, rcvShift: this.rcvShift,
      oooBytes: this.ooo.bytes, recvBuffered: this.recv.length, inRecovery: this.cc.inRecovery, iss: this.iss, irs: this.irs,
      allocatedBytes: this.sendBuf.allocated + this.recv.allocated, rcvWndCap: this.rcvWndCap,
    };
  }

  // ------------------------------------------------------------------ input

  /** A segment for this four-tuple, checksum already verified. */
  input(seg: TcpRepr): void {
    if (this.st === St.CLOSED) return;
    this.lastRecvAt = this.host.clock.now();
    this.keepaliveProbesSent = 0;
    if (this.st === St.SYN_SENT) {
      this.inputSynSent(seg);
      return;
    }
    const flags = seg.flags;
    const ts = seg.options.timestamp;

    // RFC 7323 §5.3 R1 (PAWS): an old timestamp makes the segment unacceptable. Never applied to RST (§5.3).
    if (this.tsOk && ts !== null && (flags & TCP_RST) === 0 && seqLt(ts.value, this.tsRecent)) {
      if (this.lastRecvAt - this.tsRecentAt <= TS_RECENT_VALID_MS) {
        this.sendOutOfWindowAck(seg.payload.length + (flags & TCP_FIN));
        return;
      }
      // §5.5: TS.Recent older than 24 days may have wrapped past the peer's clock; it is invalid, not the segment.
      this.tsRecent = ts.value;
      this.tsRecentAt = this.lastRecvAt;
    }

    let seq = seg.seq >>> 0;
    let payload = seg.payload;
    let syn = (flags & TCP_SYN) !== 0;
    let fin = (flags & TCP_FIN) !== 0;

    if (this.st === St.SYN_RECEIVED && syn && seq === this.irs) {
      if ((flags & TCP_ACK) === 0) {
        // The guest retransmitted its SYN: our SYN-ACK was lost.
        if ((flags & TCP_RST) === 0) this.sendSyn();
        return;
      }
      // Simultaneous open: the peer's SYN-ACK; its SYN is old news, its ACK is not.
      syn = false;
      seq = seqAdd(seq, 1);
    }

    // RFC 9293 §3.10.7.4 first: sequence number acceptability.
    const rcvWnd = this.advertisedWindow();
    const segLen = payload.length + (syn ? 1 : 0) + (fin ? 1 : 0);
    let acceptable: boolean;
    if (segLen === 0) {
      acceptable = rcvWnd === 0 ? seq === this.rcvNxt : seqLe(this.rcvNxt, seq) && seqLt(seq, seqAdd(this.rcvNxt, rcvWnd));
    } else if (rcvWnd === 0) {
      acceptable = false;
    } else {
      const wndEnd = seqAdd(this.rcvNxt, rcvWnd);
      const last = seqAdd(seq, segLen - 1);
      acceptable =
        (seqLe(this.rcvNxt, seq) && seqLt(seq, wndEnd)) || (seqLe(this.rcvNxt, last) && seqLt(last, wndEnd));
    }
    if (!acceptable) {
      // §3.10.7.4: RFC 9293 lets ACK, RST and a bare FIN through a zero window at RCV.NXT.
      if (rcvWnd === 0 && seq === this.rcvNxt) {
        if (payload.length > 0) {
          payload = payload.subarray(0, 0);
          fin = false;
          this.ackOwed = true;
        }
      } else {
        // A SYN out of the window earns the same rate-limited challenge ACK as one inside it (RFC 5961 §4.2, §7; Linux syn_challenge).
        if (syn) this.sendChallengeAck();
        else if ((flags & TCP_RST) === 0) {
          // Data we have already: say so with a D-SACK block (RFC 2883), so the peer can undo a spurious retransmission.
          if (payload.length > 0 && seqLe(seqAdd(seq, payload.length), this.rcvNxt)) this.noteDsack(seq, seqAdd(seq, payload.length));
          this.sendOutOfWindowAck(segLen);
        }
        if (this.st === St.TIME_WAIT && fin) this.restartTimeWait();
        return;
      }
    }

    // RFC 5961 §3.2 judges an RST by its own SEG.SEQ, not by where trimming would move it.
    const rstSeq = seq;
    // Trim to the window: what precedes RCV.NXT was received already, what passes the right edge is not ours to take.
    if (seqLt(seq, this.rcvNxt)) {
      let d = seqDiff(this.rcvNxt, seq);
      if (syn) {
        syn = false;
        d--;
      }
      if (d > 0 && payload.length > 0) this.noteDsack(seqAdd(this.rcvNxt, -Math.min(d, payload.length)), this.rcvNxt);
      payload = payload.subarray(Math.min(d, payload.length));
      seq = this.rcvNxt;
      this.ackOwed = true; // part of it was a duplicate: tell the peer where we are
    }
    const wndEnd = seqAdd(this.rcvNxt, Math.max(rcvWnd, 0));
    if (seqGt(seqAdd(seq, payload.length), wndEnd)) {
      payload = payload.subarray(0, Math.max(0, seqDiff(wndEnd, seq)));
      fin = false;
    }

    // Second: RST (RFC 5961 §3.2: only an exact match resets; in-window otherwise earns a challenge ACK).
    if ((flags & TCP_RST) !== 0) {
      if (rstSeq === this.rcvNxt) {
        if (this.st === St.TIME_WAIT) this.finish('closed', true);
        else this.finish('reset', false);
      } else {
        this.sendChallengeAck();
      }
      return;
    }

    // Fourth: SYN in a synchronized state (RFC 5961 §4.2): challenge ACK, drop.
    if (syn) {
      this.sendChallengeAck();
      return;
    }

    // Fifth: ACK.
    if ((flags & TCP_ACK) === 0) return;
    const ack = seg.ack >>> 0;
    if (this.st === St.SYN_RECEIVED) {
      if (seqGt(ack, this.sndUna) && seqLe(ack, this.sndMax)) {
        this.sndWnd = seg.window * 2 ** this.sndShift;
        this.maxSndWnd = Math.max(this.maxSndWnd, this.sndWnd);
        this.sndWl1 = seq;
        this.sndWl2 = ack;
        this.enterEstablished();
        if (this.isReleased) return;
      } else {
        this.sendControl(TCP_RST, ack);
        return;
      }
    }
    if (!this.processAck(seg, seq, ack, payload.length, fin)) return;
    if (this.isReleased) return;

    // RFC 7323 §4.3: remember the timestamp to echo, from the segment that covers Last.ACK.sent.
    if (this.tsOk && ts !== null && seqLe(seq, this.lastAckSent) && seqGe(ts.value, this.tsRecent)) {
      this.tsRecent = ts.value;
      this.tsRecentAt = this.lastRecvAt;
    }

    // Seventh: segment text (URG is ignored: the urgent pointer changes nothing here).
    if (payload.length > 0) {
      if (this.st === St.ESTABLISHED || this.st === St.FIN_WAIT_1 || this.st === St.FIN_WAIT_2) {
        this.receiveText(seq, payload, fin);
        if (this.isReleased) return;
      } else {
        fin = false; // the peer already finished: whatever follows is noise
      }
    } else if (fin) {
      if (seq === this.rcvNxt) this.receiveFin();
      else if (this.st === St.ESTABLISHED || this.st === St.FIN_WAIT_1 || this.st === St.FIN_WAIT_2) {
        this.peerFinSeq = seq;
        this.sendAckNow();
      }
    }
    if (this.st === St.FIN_WAIT_2) this.armFinWait2Timer();
    if (this.ackOwed || this.dataAckOwed || this.hasOutput()) this.host.scheduleFlush(this);
  }

  /** RFC 9293 §3.10.7.3. */
  private inputSynSent(seg: TcpRepr): void {
    const flags = seg.flags;
    const hasAck = (flags & TCP_ACK) !== 0;
    const ack = seg.ack >>> 0;
    if (hasAck && (seqLe(ack, this.iss) || seqGt(ack, this.sndMax))) {
      if ((flags & TCP_RST) === 0) this.sendControl(TCP_RST, ack);
      return;
    }
    if ((flags & TCP_RST) !== 0) {
      if (hasAck) this.finish('refused', false);
      return;
    }
    if ((flags & TCP_SYN) === 0) return;
    const o = seg.options;
    this.irs = seg.seq >>> 0;
    this.rcvNxt = seqAdd(this.irs, 1);
    // The right edge our SYN advertised, now that RCV.NXT is known (sendSyn could not set it).
    this.rcvAdvRight = seqAdd(this.rcvNxt, this.synWindow());
    this.peerMss = peerMssOf(o.mss);
    if (o.windowScale !== null) {
      this.wsOk = true;
      this.sndShift = Math.min(14, o.windowScale);
    } else {
      this.rcvShift = 0;
    }
    this.sackOk = o.sackPermitted;
    if (o.timestamp !== null) {
      this.tsOk = true;
      this.tsRecent = o.timestamp.value;
      this.tsRecentAt = this.lastRecvAt;
    }
    this.updateSmss();
    this.sndWnd = this.maxSndWnd = seg.window; // unscaled in a SYN
    this.sndWl1 = this.irs;
    this.sndWl2 = ack;
    if (hasAck) {
      if (this.tsOk && o.timestamp !== null && o.timestamp.echo !== 0) this.rtt.sample(this.tsDiff(o.timestamp.echo));
      else if (this.retries === 0) this.rtt.sample(this.host.clock.now() - this.rttStart);
      this.sndUna = ack;
      this.host.timers.cancel(this.rtxTimer);
      this.retries = 0;
      this.enterEstablished();
      if (this.isReleased) return;
      this.ackOwed = true;
      this.host.scheduleFlush(this);
      // Data on a SYN-ACK is rare (no TFO here): the peer will retransmit it.
    } else {
      // Simultaneous open (RFC 9293 §3.10.7.3 fourth): SYN-RECEIVED, answer SYN-ACK.
      this.st = St.SYN_RECEIVED;
      this.sndNxt = this.iss;
      this.sendSyn();
    }
  }

  /** Returns false if the segment must be dropped. */
  private processAck(seg: TcpRepr, seq: number, ack: number, dataLen: number, fin: boolean): boolean {
    // RFC 5961 §5.2: an ACK older than one maximum window ago is a blind guess.
    if (seqLt(ack, seqAdd(this.sndUna, -this.maxSndWnd))) {
      this.sendChallengeAck();
      return false;
    }
    // RFC 9293: it acknowledges something not yet sent.
    if (seqGt(ack, this.sndMax)) {
      this.sendOutOfWindowAck(dataLen);
      return false;
    }
    this.probesOut = 0;
    const flightBefore = this.flightSize();
    // A shift, not `2 ** sndShift`: V8 calls its pow() for that on every ACK (perf on request/response).
    // window < 2^16 and sndShift <= 14, so the result stays a positive int32.
    const wndRaw = seg.window << this.sndShift;
    if (seqGt(ack, this.sndUna)) {
      this.onNewAck(seg, ack, flightBefore);
      if (this.isReleased) return false;
    } else if (
      ack === this.sndUna && dataLen === 0 && !fin && wndRaw === this.sndWnd && flightBefore > 0 &&
      (seg.flags & (TCP_SYN | TCP_FIN)) === 0
    ) {
      // RFC 5681 §2 duplicate ACK.
      if (this.board !== null) {
        // SACK recovery: RACK judges from the blocks; without any, DupThresh duplicates still mean the first segment is lost.
        this.cc.dupAcks++;
        if (this.cc.dupAcks >= DUP_THRESH && !this.board.hasSacked) this.board.markFirstLost();
      } else if (this.cc.onDupAck(ack, flightBefore, this.sndMax)) {
        this.rttTiming = false;
        this.retransmitFirst();
        this.host.timers.arm(this.rtxTimer, this.rtt.rto);
      } else if (!this.cc.inRecovery && this.cc.dupAcks < DUP_THRESH) {
        // RFC 3042 limited transmit: each of the first two duplicates lets one new segment out.
        this.host.scheduleFlush(this);
      }
    }
    if (this.board !== null && flightBefore > 0) this.sackRecovery(seg.options.sackBlocks);
    // Window update (RFC 9293 §3.10.7.4, SND.WL1/WL2 guard against old segments).
    if (seqLt(this.sndWl1, seq) || (this.sndWl1 === seq && seqLe(this.sndWl2, ack))) {
      const wasZero = this.sndWnd === 0;
      this.sndWnd = wndRaw;
      this.sndWl1 = seq;
      this.sndWl2 = ack;
      if (wndRaw > this.maxSndWnd) this.maxSndWnd = wndRaw;
      if (wasZero && wndRaw > 0) {
        this.host.timers.cancel(this.persistTimer);
        this.persistBackoff = 0;
      }
    }
    if (this.st === St.TIME_WAIT && fin) this.restartTimeWait();
    return true;
  }

  private onNewAck(seg: TcpRepr, ack: number, flightBefore: number): void {
    let acked = seqDiff(ack, this.sndUna);
    // Our SYN (in SYN-RECEIVED it was acknowledged just now) takes no room in the send ring.
    if (this.sndUna === this.iss) acked--;
    const dataAcked = Math.min(acked, this.sendBuf.length);
    this.sendBuf.consume(dataAcked);
    const totalAcked = seqDiff(ack, this.sndUna);
    this.sndUna = ack;
    if (seqLt(this.sndNxt, ack)) this.sndNxt = ack; // after a go-back-N timeout
    this.retries = 0;
    this.rtt.resetBackoff();

    // RTT: timestamps (RFC 7323 §4) when present, else one timed segment at a time with Karn's rule.
    const ts = seg.options.timestamp;
    if (this.undoArmed && ts !== null && ts.echo !== 0) this.checkSpuriousTimeout(ts.echo);
    if (this.tsOk && ts !== null && ts.echo !== 0) {
      // Karn's rule for timestamps: after a timeout, an echo from before it
      // measures the silence, not the path (seen: 600 s "samples" pinning the
      // RTO at its 120 s ceiling). Linux likewise prefers per-segment send times.
      if (!this.tsSampleFloorActive || seqGe(ts.echo, this.tsSampleFloor)) {
        this.tsSampleFloorActive = false;
        this.rtt.sample(this.tsDiff(ts.echo));
      }
    } else if (this.rttTiming && seqGt(ack, this.rttSeq)) {
      this.rtt.sample(this.host.clock.now() - this.rttStart);
    }
    if (this.rttTiming && seqGt(ack, this.rttSeq)) this.rttTiming = false;

    this.tlpOut = false;
    if (this.cc.onNewAck(ack, totalAcked, flightBefore, this.board !== null) === 'partial') {
      // RFC 6582 §3.2 step 4: retransmit the next hole at once.
      this.retransmitFirst();
    }
    // RFC 6298 §5.2/5.3.
    if (this.flightSize() === 0) {
      this.host.timers.cancel(this.rtxTimer);
      if (this.tlpTimer !== null) this.host.timers.cancel(this.tlpTimer);
    } else {
      this.host.timers.arm(this.rtxTimer, this.rtt.rto);
      this.armTlp();
    }

    const finAcked = this.finQueued && seqGt(ack, this.finSeq);
    if (finAcked) {
      switch (this.st) {
        case St.FIN_WAIT_1:
          this.st = St.FIN_WAIT_2;
          this.armFinWait2Timer();
          break;
        case St.CLOSING:
          this.enterTimeWait();
          break;
        case St.LAST_ACK:
          this.finish('closed', true);
          return;
        default:
          break;
      }
    }
    if (this.writeBlocked && this.sendBuf.free >= this.sendBuf.capacity / 2 && this.canWrite()) {
      this.writeBlocked = false;
      this.handlers.onDrain();
    }
  }

  /**
   * The first ACK after a timeout (RFC 3522, Eifel detection): if it echoes
   * a TSval from before the timeout, it was drawn by the original segment,
   * not by our retransmission: nothing was lost, the peer or the path only
   * stalled (a guest descheduled for longer than the RTO). Then restore the
   * window and carry on with new data instead of resending the whole
   * flight (RFC 4015's response, in short).
   */
  private checkSpuriousTimeout(echo: number): void {
    this.undoArmed = false;
    if (!seqLt(echo, this.tsSampleFloor)) return;
    this.cc.undoTimeout(this.undoCwnd, this.undoSsthresh);
    this.sndNxt = this.sndMax;
    const board = this.board;
    if (board !== null) {
      // The scoreboard was cleared by the timeout: take the flight back at segment granularity.
      board.clear();
      const now = this.host.clock.now();
      for (let s = this.sndUna; seqLt(s, this.sndMax); ) {
        const e = seqLt(seqAdd(s, this.smss), this.sndMax) ? seqAdd(s, this.smss) : this.sndMax;
        board.sent(s, e, now);
        s = e;
      }
    }
  }

  private receiveText(seq: number, payload: Uint8Array, fin: boolean): void {
    const len = payload.length;
    if (seq === this.rcvNxt) {
      this.dataAckOwed = true;
      if (this.cfg.delayedAckMs > 0) this.lastDataAt = this.host.clock.now();
      if (!this.paused && this.recv.length === 0 && !this.delivering) {
        // Fast path: hand the segment's own bytes to the application, no copy.
        this.recv.skip(len);
        this.rcvNxt = seqAdd(this.rcvNxt, len);
        this.handlers.onData(payload);
        if (this.isReleased) return;
      } else {
        this.recv.writeAt(0, payload);
        this.recv.commit(len);
        this.rcvNxt = seqAdd(this.rcvNxt, len);
      }
      if (this.rcvWndCap < this.cfg.recvBufferBytes) this.rcvSinceGrow += len;
      if (this.ooo.count > 0) {
        const next = this.ooo.advance(this.rcvNxt);
        const extra = seqDiff(next, this.rcvNxt);
        if (extra > 0) {
          this.recv.commit(extra);
          this.rcvNxt = next;
        }
        // Linux acknowledges at once while a hole is being filled (quick ACK).
        this.sendAckNow();
      }
      if (fin) this.peerFinSeq = seqAdd(seq, len);
      if (this.peerFinSeq !== -1 && this.peerFinSeq === this.rcvNxt) this.receiveFin();
      else this.deliver();
      return;
    }
    // Out of order: keep it in the ring at its place if the bounds allow, and say so at once.
    const off = seqDiff(seq, this.rcvNxt);
    const end = seqAdd(seq, len);
    if (off + len <= this.recv.free && this.ooo.insert(seq, end)) {
      this.recv.writeAt(off, payload);
      if (fin) this.peerFinSeq = end;
    }
    this.sendAckNow();
  }

  /**
   * Receive-window autotuning (after Linux's tcp_rcv_space_adjust, which
   * keeps the window at about twice what arrives per round trip). Our ACKs
   * leave once per input batch, so a batch is our round: when the in-order
   * data one ACK covers is a quarter of the window or more, the peer is
   * sending a window in a few batches and will wait for our ACKs (a 1 MiB
   * window kept a single guest upload through a TAP, 512 KiB per batch,
   * window-limited ~45% of the time: guest `ss -ti` rwnd_limited). Then the
   * window doubles, at most once per window of data received, never above
   * recvBufferBytes, and only while the owner takes every byte at once (not
   * paused, nothing waiting in the ring): an owner that pauses even once
   * within a window's worth of data (a host slower than the guest) restarts
   * the count, so its window does not grow and the ring holds at most the
   * window it had. The owner has the last word (TcpHandlers.mayGrowWindow):
   * the NAT grants growth only while its buffer budget has room for it.
   */
  private growWindow(): void {
    if (this.rcvSinceGrow < this.rcvWndCap || this.paused || this.recv.length > 0) return;
    if (seqDiff(this.rcvNxt, this.lastAckSent) < this.rcvWndCap / 4) return;
    const next = Math.min(this.cfg.recvBufferBytes, this.rcvWndCap * 2);
    this.rcvSinceGrow = 0;
    // The owner may refuse (a shared memory budget without room, as Linux's
    // tcp_mem pressure clamps rcv_ssthresh): the window keeps its size, and
    // the right edge already advertised stays where it is (RFC 9293).
    if (this.handlers.mayGrowWindow !== undefined && !this.handlers.mayGrowWindow(next - this.rcvWndCap)) return;
    this.rcvWndCap = next;
  }

  private receiveFin(): void {
    this.peerFinSeq = -1;
    this.rcvNxt = seqAdd(this.rcvNxt, 1);
    this.finReceived = true;
    this.ackOwed = true;
    switch (this.st) {
      case St.SYN_RECEIVED:
      case St.ESTABLISHED:
        this.st = St.CLOSE_WAIT;
        break;
      case St.FIN_WAIT_1:
        this.st = St.CLOSING;
        break;
      case St.FIN_WAIT_2:
        this.host.timers.cancel(this.lingerTimer);
        this.enterTimeWait();
        break;
      default:
        break;
    }
    this.deliver();
  }

  /** Delivers buffered bytes (and then the end of stream, and a pending close) unless paused. */
  private deliver(): void {
    if (this.delivering) return;
    this.delivering = true;
    try {
      while (!this.paused && this.recv.length > 0 && !this.isReleasedOrAborted()) {
        const view = this.recv.peek();
        const n = view.length;
        this.handlers.onData(view);
        if (this.isReleasedOrAborted()) return;
        this.recv.consume(n);
      }
      if (this.paused || this.recv.length > 0 || this.isReleasedOrAborted()) return;
      if (this.finReceived && !this.endDelivered) {
        this.endDelivered = true;
        this.handlers.onEnd();
        if (this.isReleasedOrAborted()) return;
      }
      if (this.closePendingDelivery) {
        this.closePendingDelivery = false;
        this.notifyClose('closed');
      }
    } finally {
      this.delivering = false;
    }
  }

  private isReleasedOrAborted(): boolean {
    return this.closeNotified;
  }

  // ------------------------------------------------------------------ output

  /** End of batch (or soon after a write/timer): send what is owed. */
  flushAck(): void {
    if (!this.isSynchronized()) return;
    this.output();
    if (this.st === St.CLOSED) return;
    if (!this.ackOwed && this.dataAckOwed && this.mayDelayAck()) {
      let t = this.delAckTimer;
      if (t === null) t = this.delAckTimer = new Timer(() => this.onDelayedAckTimer());
      if (!t.armed) this.host.timers.arm(t, this.cfg.delayedAckMs);
      return;
    }
    // Pure ACKs carry SND.MAX, not a rolled-back SND.NXT: the peer would find an old sequence number unacceptable and ignore the ACK (BSD does the same).
    if (this.ackOwed || this.dataAckOwed) this.sendControl(TCP_ACK, this.sndMax);
  }

  /**
   * Delay only an ACK for less than one full-sized segment of new in-order
   * data: a bulk sender's full segments are acknowledged per batch as
   * before (RFC 9293 §3.8.6.3: at least every second full-sized segment).
   */
  private mayDelayAck(): boolean {
    if (!this.pingpong || this.st !== St.ESTABLISHED) return false;
    return seqDiff(this.rcvNxt, this.lastAckSent) < this.localMss - FULL_SEGMENT_SLACK;
  }

  private onDelayedAckTimer(): void {
    if (this.st === St.CLOSED || (!this.dataAckOwed && !this.ackOwed)) return;
    // No answer came in time: this is not a request/response flow (now).
    this.pingpong = false;
    this.sendAckNow();
  }

  private hasOutput(): boolean {
    const offset = seqDiff(this.sndNxt, this.sndUna);
    return this.sendBuf.length > offset || (this.finQueued && seqLe(this.sndNxt, this.finSeq));
  }

  /** Sends new data (and the FIN) as the windows allow. */
  private output(): void {
    const st = this.st;
    if (st !== St.ESTABLISHED && st !== St.CLOSE_WAIT && st !== St.FIN_WAIT_1 && st !== St.LAST_ACK && st !== St.CLOSING) return;
    const sndMaxBefore = this.sndMax;
    if (this.flightSize() === 0 && this.sendBuf.length > 0) {
      const idle = this.host.clock.now() - this.lastDataSentAt;
      if (idle > this.rtt.rto) this.cc.restartAfterIdle(idle, this.rtt.rto);
    }
    if (this.board !== null && this.board.hasLost) this.retransmitLost();
    for (;;) {
      const offset = seqDiff(this.sndNxt, this.sndUna);
      const unsent = this.sendBuf.length - offset;
      const flight = offset;
      if (unsent > 0) {
        // The congestion window counts what is in the network: with SACK, RFC 6675's pipe; without, the flight
        // (plus RFC 3042's limited transmit on the first two duplicate ACKs).
        const inNetwork = this.board !== null ? this.board.pipe(flight) : flight;
        const limited = this.board === null && !this.cc.inRecovery && this.cc.dupAcks < DUP_THRESH ? this.cc.dupAcks * this.smss : 0;
        const cwndRoom = this.cc.cwnd + limited + this.extraCwnd - inNetwork;
        const mss = this.dataMss();
        let len = Math.min(unsent, this.segmentLimit(mss), this.sndWnd - flight, cwndRoom);
        if (len <= 0) break;
        // Sender SWS avoidance (RFC 9293 §3.8.6.2.1), without Nagle: hold a runt only while the ACK clock runs.
        if (len < mss && len < unsent && flight > 0 && len < this.maxSndWnd / 2) break;
        // An offloaded super-segment is cut to whole MSS multiples, so that only the last segment of the data may be short.
        if (len > mss && len < unsent) len -= len % mss;
        const last = len === unsent;
        let flags = TCP_ACK;
        if (last) flags |= TCP_PSH;
        if (last && this.finQueued) flags |= TCP_FIN;
        if (!this.rttTiming && !this.tsOk && this.sndNxt === this.sndMax) {
          this.rttTiming = true;
          this.rttSeq = this.sndNxt;
          this.rttStart = this.host.clock.now();
        }
        this.sendData(flags, this.sndNxt, offset, len);
        const covered = len + ((flags & TCP_FIN) !== 0 ? 1 : 0);
        this.board?.sent(this.sndNxt, seqAdd(this.sndNxt, covered), this.host.clock.now());
        this.sndNxt = seqAdd(this.sndNxt, covered);
        if (seqGt(this.sndNxt, this.sndMax)) this.sndMax = this.sndNxt;
        if (!this.rtxTimer.armed) this.host.timers.arm(this.rtxTimer, this.rtt.rto);
        continue;
      }
      if (this.finQueued && this.sndNxt === this.finSeq) {
        // A bare FIN needs no window (Linux accepts one even at a zero window).
        this.sendControl(TCP_FIN | TCP_ACK, this.sndNxt);
        this.board?.sent(this.sndNxt, seqAdd(this.sndNxt, 1), this.host.clock.now());
        this.sndNxt = seqAdd(this.sndNxt, 1);
        if (seqGt(this.sndNxt, this.sndMax)) this.sndMax = this.sndNxt;
        if (!this.rtxTimer.armed) this.host.timers.arm(this.rtxTimer, this.rtt.rto);
      }
      break;
    }
    // New data leaving soon after the peer's data: an answer (Linux's tcp_event_data_sent enters pingpong mode the same way).
    if (
      this.sndMax !== sndMaxBefore && !this.pingpong && this.cfg.delayedAckMs > 0 &&
      this.host.clock.now() - this.lastDataAt < this.cfg.delayedAckMs
    ) {
      this.pingpong = true;
    }
    if (this.sndMax !== sndMaxBefore) this.armTlp();
    // Zero window with data waiting and nothing in flight: probe (RFC 9293 §3.8.6.1).
    const waiting = this.sendBuf.length - seqDiff(this.sndNxt, this.sndUna) > 0;
    if (waiting && this.flightSize() === 0 && this.sndWnd === 0) {
      if (!this.persistTimer.armed) this.host.timers.arm(this.persistTimer, this.persistDelay());
    }
  }

  /**
   * Retransmits the first unacknowledged segment (fast retransmit, partial
   * ACK, timeout). Returns the sequence space it covered (data + FIN).
   */
  private retransmitFirst(): number {
    return this.sendAgain(this.sndUna, this.dataMss());
  }

  /**
   * Sends already-sent sequence space again from `seq` (SND.UNA <= seq <
   * SND.MAX): up to maxLen data bytes, and our FIN if they reach it. Returns
   * the sequence space covered (data + FIN).
   */
  private sendAgain(seq: number, maxLen: number): number {
    const from = seqDiff(seq, this.sndUna);
    const inFlightData = Math.min(this.sendBuf.length, seqDiff(this.sndMax, this.sndUna)) - from;
    const len = Math.min(inFlightData, maxLen);
    let covered = 0;
    if (len > 0) {
      let flags = TCP_ACK;
      const finNext = this.finQueued && seqAdd(seq, len) === this.finSeq && seqGt(this.sndMax, this.finSeq);
      if (from + len === this.sendBuf.length) flags |= TCP_PSH;
      if (finNext) flags |= TCP_FIN;
      this.sendData(flags, seq, from, len);
      covered = len + (finNext ? 1 : 0);
    } else if (this.finQueued && seq === this.finSeq && seqGt(this.sndMax, this.finSeq)) {
      this.sendControl(TCP_FIN | TCP_ACK, this.finSeq);
      covered = 1;
    }
    if (covered > 0) this.board?.sent(seq, seqAdd(seq, covered), this.host.clock.now());
    return covered;
  }

  /** A whole scoreboard record [s, e) again, in segments that fit the link now. */
  private sendRecordAgain(s: number, e: number): void {
    let seq = s;
    while (seqLt(seq, e)) {
      const n = this.sendAgain(seq, Math.min(seqDiff(e, seq), this.segmentLimit(this.dataMss())));
      if (n === 0) return;
      seq = seqAdd(seq, n);
    }
  }

  // ------------------------------------------------------------------ SACK recovery, RACK, TLP

  /**
   * After each ACK with data in flight (SACK negotiated): update the
   * scoreboard, let RACK mark losses, enter RFC 6675 recovery on the first
   * one, and have output() resend what is lost.
   */
  private sackRecovery(blocks: readonly number[] | null): void {
    const board = this.board!;
    board.ack(this.sndUna, blocks, this.sndMax, this.host.clock.now());
    this.detectLoss();
  }

  private detectLoss(): void {
    const board = this.board!;
    const wait = board.detectLoss(this.host.clock.now());
    if (wait > 0) {
      let t = this.reoTimer;
      if (t === null) t = this.reoTimer = new Timer(() => this.onReoTimer());
      this.host.timers.arm(t, Math.ceil(wait));
    } else if (this.reoTimer !== null) {
      this.host.timers.cancel(this.reoTimer);
    }
    if (!board.hasLost) return;
    if (!this.cc.inRecovery) {
      this.cc.enterSackRecovery(this.flightSize(), this.sndMax);
      this.rttTiming = false;
      // RFC 6675 §5 step 4.3: the first lost segment goes at once, whatever pipe says.
      this.recoveryKick = true;
    }
    this.host.scheduleFlush(this);
  }

  private onReoTimer(): void {
    if (this.board === null || !this.isSynchronized() || this.flightSize() <= 0) return;
    this.detectLoss();
  }

  /** RFC 6675 §5 step (C): resend lost records while the congestion window has room. */
  private retransmitLost(): void {
    const board = this.board!;
    const r = this.lostRange;
    while (board.nextLost(r)) {
      const pipe = board.pipe(this.flightSize());
      if (!this.recoveryKick && pipe > 0 && pipe + this.smss > this.cc.cwnd + this.extraCwnd) return;
      this.recoveryKick = false;
      this.sendRecordAgain(r[0], r[1]);
      this.host.timers.arm(this.rtxTimer, this.rtt.rto);
    }
  }

  /** RFC 8985 §7.2: arm the tail loss probe for the data in flight, if it would fire before the RTO. */
  private armTlp(): void {
    // Not during recovery (RFC 8985 §7.2): RACK and the RTO already watch every segment in flight.
    if (this.board === null || this.tlpOut || this.cc.inRecovery || !this.rtt.hasSample) return;
    const flight = this.flightSize();
    if (flight <= 0) return;
    let pto = Math.max(2 * this.rtt.srtt, MIN_PTO_MS);
    if (flight <= this.smss) pto += PTO_DELAYED_ACK_MS;
    if (pto >= this.rtt.rto) return;
    let t = this.tlpTimer;
    if (t === null) t = this.tlpTimer = new Timer(() => this.onTlpTimer());
    this.host.timers.arm(t, pto);
  }

  /**
   * RFC 8985 §7.3: no ACK for PTO. Send one new segment if there is one and
   * the peer's window allows, else the last segment again, so that the ACK
   * it draws lets RACK find what the tail lost, instead of waiting for the RTO.
   */
  private onTlpTimer(): void {
    if (this.board === null || !this.isSynchronized() || this.flightSize() <= 0 || this.tlpOut) return;
    this.tlpOut = true;
    const sndMaxBefore = this.sndMax;
    const unsent = this.sendBuf.length - seqDiff(this.sndNxt, this.sndUna);
    if (unsent > 0 && this.sndWnd - this.flightSize() > 0) {
      this.extraCwnd = this.smss;
      this.output();
      this.extraCwnd = 0;
    }
    if (this.sndMax === sndMaxBefore && this.board.last(this.lostRange)) {
      const [s, e] = this.lostRange;
      const seg = this.segmentLimit(this.dataMss());
      this.sendRecordAgain(seqDiff(e, s) > seg ? seqAdd(e, -seg) : s, e);
    }
    this.host.timers.arm(this.rtxTimer, this.rtt.rto);
  }

  private sendData(flags: number, seq: number, from: number, len: number): void {
    this.lastDataSentAt = this.host.clock.now();
    this.fillSegment(flags, seq);
    this.host.transmit(this, this.out, this.sendBuf, from, len);
  }

  /** A segment without payload (ACK, FIN, RST). */
  private sendControl(flags: number, seq: number): void {
    this.fillSegment(flags, seq);
    if ((flags & TCP_RST) !== 0) {
      this.out.options = null; // Linux's RSTs carry no SACK; keep them plain
      if ((flags & TCP_ACK) === 0) this.out.ack = 0;
    }
    this.host.transmit(this, this.out, null, 0, 0);
    this.out.options = this.outOpts;
  }

  private sendAckNow(): void {
    this.sendControl(TCP_ACK, this.sndMax);
  }

  private fillSegment(flags: number, seq: number): void {
    const o = this.out;
    const opts = this.outOpts;
    o.seq = seq >>> 0;
    o.flags = flags;
    o.options = opts;
    opts.mss = null;
    opts.windowScale = null;
    opts.sackPermitted = false;
    if (this.tsOk) {
      this.outTs.value = this.tsNow();
      this.outTs.echo = this.tsRecent;
      opts.timestamp = this.outTs;
    } else {
      opts.timestamp = null;
    }
    opts.sackBlocks = this.sackOk && (this.ooo.count > 0 || this.dsackPending) ? this.sackBlocksNow() : null;
    if ((flags & TCP_ACK) !== 0) {
      if (this.rcvWndCap < this.cfg.recvBufferBytes) this.growWindow();
      o.ack = this.rcvNxt;
      o.window = this.windowField();
      this.lastAckSent = this.rcvNxt;
      this.ackOwed = false;
      this.dataAckOwed = false;
      if (this.delAckTimer !== null && this.delAckTimer.armed) this.host.timers.cancel(this.delAckTimer);
    } else {
      o.ack = 0;
      o.window = 0;
    }
  }

  /** SYN or SYN-ACK with our options (RFC 7323, RFC 2018), Linux's layout. */
  private sendSyn(): void {
    const o = this.out;
    const opts = this.outOpts;
    const passive = this.st === St.SYN_RECEIVED;
    o.seq = this.iss;
    o.flags = passive ? TCP_SYN | TCP_ACK : TCP_SYN;
    o.ack = passive ? this.rcvNxt : 0;
    const wnd = this.synWindow();
    o.window = wnd;
    // An active open does not know RCV.NXT yet: inputSynSent sets the edge from the peer's ISN.
    if (passive) this.rcvAdvRight = seqAdd(this.rcvNxt, wnd);
    opts.mss = this.localMss;
    // Active open offers everything; passive open echoes what the peer offered.
    opts.windowScale = !passive || this.wsOk ? this.rcvShift : null;
    opts.sackPermitted = !passive || this.sackOk;
    if (!passive || this.tsOk) {
      this.outTs.value = this.tsNow();
      this.outTs.echo = passive ? this.tsRecent : 0;
      opts.timestamp = this.outTs;
    } else {
      opts.timestamp = null;
    }
    opts.sackBlocks = null;
    if (passive) this.lastAckSent = this.rcvNxt;
    if (!this.rttTiming) {
      this.rttStart = this.host.clock.now();
    }
    this.sndNxt = seqAdd(this.iss, 1);
    if (seqGt(this.sndNxt, this.sndMax)) this.sndMax = this.sndNxt;
    this.host.transmit(this, o, null, 0, 0);
    if (!this.rtxTimer.armed) this.host.timers.arm(this.rtxTimer, this.rtt.rto);
  }

  /** The window our SYN or SYN-ACK offers: never scaled (RFC 7323 §2.2). */
  private synWindow(): number {
    return Math.min(0xffff, this.rcvWndCap);
  }

  /** Out-of-window or old segment: ACK it, but rate-limit the answers to pure ACKs so that two confused ends can't ping-pong. */
  private sendOutOfWindowAck(dataLen: number): void {
    const now = this.host.clock.now();
    if (dataLen === 0) {
      if (now - this.lastOowAckAt < OOW_ACK_INTERVAL_MS) return;
      this.lastOowAckAt = now;
    }
    this.sendAckNow();
  }

  /** RFC 5961 §7: bounded number of challenge ACKs per second. */
  private sendChallengeAck(): void {
    const now = this.host.clock.now();
    if (now - this.challengeWindowStart >= 1000) {
      this.challengeWindowStart = now;
      this.challengeCount = 0;
    }
    if (this.challengeCount >= this.cfg.challengeAckPerSecond) return;
    this.challengeCount++;
    this.sendAckNow();
  }

  // ------------------------------------------------------------------ windows

  /** The receive window currently offered: from RCV.NXT to the advertised right edge. */
  private advertisedWindow(): number {
    return Math.max(0, seqDiff(this.rcvAdvRight, this.rcvNxt));
  }

  /** Free space the window may offer (the ring's slack only absorbs rounding). */
  private freeForWindow(): number {
    return Math.max(0, Math.min(this.recv.free - this.recvSlack, this.rcvWndCap - this.recv.length));
  }

  private windowUpdateWorthSending(before: number): boolean {
    const candidate = this.freeForWindow();
    if (candidate <= before) return false;
    return before === 0 || candidate - before >= Math.min(this.smss, this.rcvWndCap / 2);
  }

  /**
   * The raw window field for an outgoing segment, and the new right edge.
   * The edge only moves right, and only by a worthwhile amount (receiver SWS
   * avoidance, RFC 9293 §3.8.6.2.2); it never moves left (§3.8.6.2.1).
   *
   * The window is rounded up to the scale unit so that the edge already
   * offered is not retracted, but only while the edge stays within one unit
   * (the ring's slack) of the window granted (rcvWndCap) and the ring's
   * room. Rounding up from RCV.NXT unchecked moved the edge right by up to
   * a unit on every ACK: against a paused owner, a peer sending small
   * segments never saw the window close, and the ring filled to
   * recvBufferBytes whatever window the budget had granted (Linux has the
   * same ratchet, fixed by tcp_shrink_window in 6.5). Past that bound the
   * field is rounded down instead: the announced edge retracts by less than
   * one unit, which RFC 7323 §2.4 expects senders to handle, and every byte
   * up to the edge offered before is still accepted.
   */
  private windowField(): number {
    const unit = 2 ** this.rcvShift;
    const avail = this.freeForWindow();
    const candidateRight = seqAdd(this.rcvNxt, Math.min(avail, 0xffff * unit));
    let right = this.rcvAdvRight;
    if (seqGt(candidateRight, right)) {
      const grow = seqDiff(candidateRight, right);
      if (grow >= Math.min(this.smss, this.rcvWndCap / 2)) right = candidateRight;
    }
    const wnd = Math.max(0, seqDiff(right, this.rcvNxt));
    let raw = Math.min(0xffff, Math.ceil(wnd / unit));
    if (raw * unit > Math.min(avail + this.recvSlack, this.recv.free)) raw = Math.floor(wnd / unit);
    this.rcvAdvRight = seqMaxEdge(this.rcvAdvRight, seqAdd(this.rcvNxt, raw * unit));
    return raw;
  }

  // ------------------------------------------------------------------ timers

  private onRetransmitTimer(): void {
    switch (this.st) {
      case St.SYN_SENT:
      case St.SYN_RECEIVED: {
        const limit = this.st === St.SYN_SENT ? this.cfg.synRetries : this.cfg.synAckRetries;
        if (this.retries >= limit) {
          this.finish('timeout', false);
          return;
        }
        this.retries++;
        this.rtt.backoff();
        this.sendSyn();
        this.host.timers.arm(this.rtxTimer, this.rtt.rto);
        return;
      }
      case St.CLOSED:
      case St.TIME_WAIT:
      case St.FIN_WAIT_2:
        return;
      default:
        break;
    }
    const flight = seqDiff(this.sndMax, this.sndUna);
    if (flight <= 0) return;
    if (this.retries >= this.cfg.maxRetries) {
      this.sendControl(TCP_RST | TCP_ACK, this.sndMax);
      this.finish('timeout', false);
      return;
    }
    // With timestamps, the first timeout of an episode can be undone if it proves spurious (onNewAck).
    this.undoArmed = this.retries === 0 && this.tsOk;
    this.undoCwnd = this.cc.cwnd;
    this.undoSsthresh = this.cc.ssthresh;
    this.retries++;
    // RFC 5681 §3.1 eq. 4 and RFC 6298 §5.4-5.6: collapse to one segment, back off, go back to SND.UNA.
    this.cc.onTimeout(flight, this.sndMax);
    // Everything is sent again from SND.UNA: the scoreboard starts over (RFC 2018 lets the receiver renege anyway).
    this.board?.clear();
    this.tlpOut = false;
    if (this.tlpTimer !== null) this.host.timers.cancel(this.tlpTimer);
    if (this.reoTimer !== null) this.host.timers.cancel(this.reoTimer);
    this.rtt.backoff();
    this.rttTiming = false;
    this.tsSampleFloor = this.tsNow();
    this.tsSampleFloorActive = true;
    this.sndNxt = seqAdd(this.sndUna, this.retransmitFirst());
    this.host.timers.arm(this.rtxTimer, this.rtt.rto);
    // The rest of the window follows from output() as ACKs return (go-back-N from SND.UNA).
    this.host.scheduleFlush(this);
  }

  private persistDelay(): number {
    return Math.min(this.cfg.maxRtoMs, this.rtt.rto * 2 ** this.persistBackoff);
  }

  private onPersistTimer(): void {
    if (!this.isSynchronized() || this.sndWnd > 0) return;
    if (this.probesOut >= this.cfg.maxRetries) {
      this.sendControl(TCP_RST | TCP_ACK, this.sndMax);
      this.finish('timeout', false);
      return;
    }
    this.probesOut++;
    // Linux's window probe: an old sequence number the peer must answer with an ACK.
    this.sendControl(TCP_ACK, seqAdd(this.sndUna, -1));
    if (this.persistDelay() < this.cfg.maxRtoMs) this.persistBackoff++;
    this.host.timers.arm(this.persistTimer, this.persistDelay());
  }

  private onKeepaliveTimer(): void {
    const ka = this.cfg.keepaliveMs;
    if (ka === null || (this.st !== St.ESTABLISHED && this.st !== St.CLOSE_WAIT)) return;
    const idle = this.host.clock.now() - this.lastRecvAt;
    if (this.keepaliveProbesSent === 0 && idle < ka) {
      this.host.timers.arm(this.keepaliveTimer, ka - idle);
      return;
    }
    if (this.keepaliveProbesSent >= this.cfg.keepaliveProbes) {
      this.sendControl(TCP_RST | TCP_ACK, this.sndMax);
      this.finish('timeout', false);
      return;
    }
    this.keepaliveProbesSent++;
    // RFC 1122 §4.2.3.6: an already acknowledged sequence number (Linux: SND.UNA - 1), no data.
    this.sendControl(TCP_ACK, seqAdd(this.sndUna, -1));
    this.host.timers.arm(this.keepaliveTimer, this.cfg.keepaliveIntervalMs);
  }

  private armFinWait2Timer(): void {
    if (this.cfg.finWait2TimeoutMs !== null) this.host.timers.arm(this.lingerTimer, this.cfg.finWait2TimeoutMs);
  }

  private onLingerTimer(): void {
    if (this.st === St.TIME_WAIT) {
      this.finish('closed', true);
    } else if (this.st === St.FIN_WAIT_2) {
      // An idle timer, not a deadline: a peer that is still talking (data,
      // zero-window probes) or bytes our paused owner has not taken yet keep
      // the half-closed connection alive, as Linux does for a socket its
      // application still holds.
      const limit = this.cfg.finWait2TimeoutMs;
      if (limit === null) return;
      const idleFor = this.host.clock.now() - this.lastRecvAt;
      if (idleFor < limit || this.recv.length > 0) {
        this.host.timers.arm(this.lingerTimer, Math.max(1, limit - idleFor));
        return;
      }
      this.sendControl(TCP_RST | TCP_ACK, this.sndMax);
      this.finish('timeout', false);
    }
  }

  // ------------------------------------------------------------------ state changes

  private enterEstablished(): void {
    this.st = this.finQueued ? St.FIN_WAIT_1 : St.ESTABLISHED;
    if (this.cfg.keepaliveMs !== null) this.host.timers.arm(this.keepaliveTimer, this.cfg.keepaliveMs);
    this.cc.setMss(this.smss);
    if (this.sackOk) this.board = new Scoreboard();
    // onConnect only for active opens (passive ones were announced through PendingTcp).
    if (this.activeOpen && this.handlers.onConnect !== undefined) this.handlers.onConnect();
    if (this.sendBuf.length > 0 || this.finQueued) this.host.scheduleFlush(this);
  }

  private enterTimeWait(): void {
    this.st = St.TIME_WAIT;
    this.host.timers.cancel(this.rtxTimer);
    this.host.timers.cancel(this.persistTimer);
    this.host.timers.cancel(this.keepaliveTimer);
    this.host.timers.arm(this.lingerTimer, this.cfg.timeWaitMs);
    this.notifyCloseWhenDelivered();
  }

  private restartTimeWait(): void {
    this.host.timers.arm(this.lingerTimer, this.cfg.timeWaitMs);
  }

  /** Graceful completion: onClose('closed') once the application has every byte. */
  private notifyCloseWhenDelivered(): void {
    if (this.closeNotified || this.closePendingDelivery) return;
    if (this.recv.length > 0 || (this.finReceived && !this.endDelivered)) {
      this.closePendingDelivery = true;
      return;
    }
    this.notifyClose('closed');
  }

  private notifyClose(reason: TcpCloseReason): void {
    this.closeNotified = true;
    this.handlers.onClose(reason);
    if (this.st === St.TIME_WAIT && this.host.adoptTimeWait !== undefined) this.handOffTimeWait();
    else if (this.st === St.TIME_WAIT || this.st === St.CLOSED) this.shed();
  }

  /**
   * TIME-WAIT with the owner told: hand the four-tuple's state to the host's
   * TIME-WAIT table and go (the ACK of the peer's FIN leaves first).
   */
  private handOffTimeWait(): void {
    if (this.ackOwed || this.dataAckOwed) this.sendAckNow();
    this.host.adoptTimeWait!({
      tuple: this.tuple,
      sndNxt: this.sndMax,
      rcvNxt: this.rcvNxt,
      window: this.windowField(),
      tsOk: this.tsOk,
      tsOffset: this.tsOffset,
      tsRecent: this.tsRecent,
      tsRecentAt: this.tsRecentAt,
    });
    this.shed();
    this.finish('closed', true);
  }

  /**
   * The application is told and the connection only waits out TIME-WAIT (or
   * is gone): keep none of its buffers, and no reference to the owner's
   * objects (a NAT's host socket), as Linux keeps a small timewait sock.
   * A short-lived-connection load leaves thousands of these for 60 s.
   */
  private shed(): void {
    this.sendBuf.releaseIfEmpty();
    this.recv.releaseIfEmpty();
    this.handlers = DETACHED_HANDLERS;
  }

  /**
   * To CLOSED. `graceful` = the FIN exchange completed (onClose('closed') may
   * wait for paused bytes); otherwise onClose(reason) now and buffered bytes are dropped.
   */
  private finish(reason: TcpCloseReason, graceful: boolean): void {
    const t = this.host.timers;
    t.cancel(this.rtxTimer);
    t.cancel(this.persistTimer);
    t.cancel(this.keepaliveTimer);
    t.cancel(this.lingerTimer);
    if (this.delAckTimer !== null) t.cancel(this.delAckTimer);
    if (this.reoTimer !== null) t.cancel(this.reoTimer);
    if (this.tlpTimer !== null) t.cancel(this.tlpTimer);
    this.board?.clear();
    this.st = St.CLOSED;
    this.ackOwed = false;
    this.dataAckOwed = false;
    if (graceful) {
      this.notifyCloseWhenDelivered();
    } else {
      this.closePendingDelivery = false;
      if (!this.closeNotified) this.notifyClose(reason);
    }
    if (!this.isReleased) {
      this.isReleased = true;
      this.host.released(this);
    }
  }

  // ------------------------------------------------------------------ helpers

  private isSynchronized(): boolean {
    return this.st >= St.ESTABLISHED;
  }

  private canWrite(): boolean {
    return !this.finQueued && this.st !== St.CLOSED && this.st !== St.TIME_WAIT && this.st !== St.CLOSING && this.st !== St.LAST_ACK;
  }

  /** Sequence number of the first data byte: after our SYN. */
  private dataStartSeq(): number {
    return seqGt(this.sndUna, this.iss) ? this.sndUna : seqAdd(this.iss, 1);
  }

  private flightSize(): number {
    return seqDiff(this.sndNxt, this.sndUna);
  }

  private updateSmss(): void {
    this.smss = Math.max(1, Math.min(this.peerMss, this.localMss) - (this.tsOk ? TS_OPTION_BYTES : 0));
  }

  /**
   * The most payload one new-data segment may carry: one MSS, or with
   * segmentOffloadBytes as many whole MSS as fit in it. Not while SACK blocks
   * ride on the segment (their room is taken per segment on the wire).
   */
  private segmentLimit(mss: number): number {
    const offload = this.cfg.segmentOffloadBytes;
    if (offload <= mss || mss !== this.smss) return mss;
    // The host carries segmentSize with each super-segment to the link (a
    // TAP's gso_size), so a guest whose MSS is below the link MTU's (MSS
    // clamping, a smaller MTU inside) is cut at its own MSS.
    return offload - (offload % mss);
  }

  /**
   * Payload bytes per segment on the wire (SMSS less the timestamp option):
   * what a link with segmentation offload cuts this connection's
   * super-segments into. A super-segment never carries SACK blocks (segmentLimit).
   */
  get segmentSize(): number {
    return this.smss;
  }

  /** Payload bytes for the next data segment: SACK blocks take room from it (RFC 6691). */
  /** The SACK blocks for the next segment: a pending D-SACK block first (RFC 2883 §4), then the out-of-order ranges. */
  private sackBlocksNow(): number[] {
    const max = maxSackBlocks(this.tsOk);
    if (!this.dsackPending) return this.ooo.sackBlocks(this.outSack, max);
    this.dsackPending = false;
    const out = this.ooo.sackBlocks(this.outSack, max - 1);
    out.unshift(this.dsackStart, this.dsackEnd);
    return out;
  }

  private noteDsack(start: number, end: number): void {
    if (!this.sackOk) return;
    this.dsackStart = start;
    this.dsackEnd = end;
    this.dsackPending = true;
  }

  private dataMss(): number {
    if (this.sackOk && (this.ooo.count > 0 || this.dsackPending)) {
      const blocks = Math.min(this.ooo.count + (this.dsackPending ? 1 : 0), maxSackBlocks(this.tsOk));
      return Math.max(1, this.smss - 4 - 8 * blocks);
    }
    return this.smss;
  }

  private tsNow(): number {
    return (Math.floor(this.host.clock.now()) + this.tsOffset) >>> 0;
  }

  /** Milliseconds since our timestamp `echo` was sent. */
  private tsDiff(echo: number): number {
    return Math.max(0, seqDiff(this.tsNow(), echo));
  }
}

/**
 * The MSS we send with: the peer's option, 536 without one, and never below
 * MIN_PEER_MSS, as Linux clamps (tcp_min_snd_mss): a peer advertising a tiny
 * MSS would otherwise make us cut every write into byte-sized segments (one
 * frame and one queue entry per byte: CVE-2019-11479).
 */
function peerMssOf(option: number | null): number {
  return Math.max(MIN_PEER_MSS, option ?? DEFAULT_MSS);
}

function seqMaxEdge(a: number, b: number): number {
  return seqGt(b, a) ? b : a;
}

/**
 * RFC 9293 §3.10.7.1: the reset for a segment that matches no connection,
 * or null for an incoming RST (never answer a reset).
 */
export function rstForUnknown(seg: TcpRepr, payloadLength: number): TcpSegmentFields | null {
  if ((seg.flags & TCP_RST) !== 0) return null;
  if ((seg.flags & TCP_ACK) !== 0) {
    return { srcPort: seg.dstPort, dstPort: seg.srcPort, seq: seg.ack >>> 0, ack: 0, flags: TCP_RST, window: 0, options: null };
  }
  const segLen = payloadLength + ((seg.flags & TCP_SYN) !== 0 ? 1 : 0) + ((seg.flags & TCP_FIN) !== 0 ? 1 : 0);
  return {
    srcPort: seg.dstPort,
    dstPort: seg.srcPort,
    seq: 0,
    ack: seqAdd(seg.seq, segLen),
    flags: TCP_RST | TCP_ACK,
    window: 0,
    options: null,
  };
}
