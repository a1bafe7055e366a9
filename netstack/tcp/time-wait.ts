/**
 * TIME-WAIT as a small record outside the connection table, as Linux keeps a
 * tcp_timewait_sock instead of the socket: once a connection that closed
 * first has told its owner 'closed', all TIME-WAIT needs is the four-tuple,
 * both sequence numbers, the window it last offered, the timestamp state and
 * a deadline. A host that closes first at a high rate (the server closes
 * the connection, so Moat holds the TIME-WAIT) would otherwise keep a full
 * connection per closed flow for 60 s, counted against the connection limit.
 *
 * The table is bounded on its own (Linux tcp_max_tw_buckets). When it is
 * full, the oldest record is recycled: TIME-WAIT protects against old
 * duplicates, and dropping the oldest early costs the least of that
 * protection, whereas refusing a new connection or keeping the closing one
 * in the connection table would cost a guest its service.
 *
 * What a record answers (RFC 9293 §3.10.7.4 in TIME-WAIT, Linux
 * tcp_timewait_state_process, RFC 7323 PAWS, RFC 5961):
 *  - a pure SYN reopens the four-tuple (RFC 6191, Moat is lenient: any ISN):
 *    the caller removes the record and treats the SYN as new;
 *  - an RST at exactly RCV.NXT ends TIME-WAIT; any other RST is ignored;
 *  - a bare ACK at RCV.NXT (the peer acknowledging our FIN again) is
 *    silently taken; segments up to RCV.NXT that pass PAWS refresh TS.Recent;
 *  - everything else is answered with an ACK of RCV.NXT: a retransmitted FIN
 *    (and it restarts the 2MSL timer), data, an old timestamp; segments
 *    without payload or FIN are answered at most once per 500 ms, so two
 *    confused ends cannot ping-pong.
 *
 * Deadlines are all `timeWaitMs` from the last (re)start, so insertion order
 * is deadline order: one timer at the oldest deadline serves the table.
 */
import type { IpAddress } from '../addr.js';
import { key6 } from '../flow-table.js';
import type { FourTuple } from '../api.js';
import type { Clock } from '../clock.js';
import { Timer, type TimerWheel } from '../timer-wheel.js';
import { TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN, type TcpOptions, type TcpRepr, type TcpSegmentFields } from './header.js';
import { seqLe, seqLt } from './seq.js';

export interface TimeWaitRecord {
  readonly tuple: FourTuple;
  /** Our next sequence number: after our FIN (SND.MAX). */
  readonly sndNxt: number;
  /** The peer's next sequence number: after its FIN. */
  readonly rcvNxt: number;
  /** The raw (scaled) window field to offer in our ACKs. */
  readonly window: number;
  /** Timestamps were negotiated: our ACKs carry TSval (clock + tsOffset) and echo tsRecent; PAWS applies. */
  readonly tsOk: boolean;
  readonly tsOffset: number;
  tsRecent: number;
  /** Clock ms when tsRecent was set (RFC 7323 §5.5: invalid after 24 days). */
  tsRecentAt: number;
  /** Clock ms when TIME-WAIT ends. */
  deadline: number;
  /** Last rate-limited ACK (pure ACKs out of window). */
  lastOowAckAt: number;
}

/** Answers a zero-length out-of-window segment at most this often (Linux tcp_invalid_ratelimit). */
export const OOW_ACK_INTERVAL_MS = 500;
/** RFC 7323 §5.5: a TS.Recent not refreshed for 24 days is no longer valid for PAWS. */
export const TS_RECENT_VALID_MS = 24 * 24 * 3600 * 1000;

/** What a connection hands over when it enters TIME-WAIT. */
export type TimeWaitFields = Omit<TimeWaitRecord, 'deadline' | 'lastOowAckAt'>;

export interface TimeWaitStats {
  /** Records held now. */
  size: number;
  /** Records dropped early because the table was full (oldest first). */
  recycled: number;
}

/**
 * The table's key for a four-tuple. A string, unlike FlowTable's nested
 * numeric maps: those cost an inner Map per guest port, several times the
 * record itself, and this table is looked up only for segments that match
 * no connection (new SYNs, strays), not per data segment.
 */
function keyOf(src: IpAddress, srcPort: number, dst: IpAddress, dstPort: number): string {
  // IPv6 keys are 18 fixed-width code units (flow-table.ts); IPv4 keys are 6 (each address as two 16-bit
  // halves, each port as one): the two never meet. Built without number-to-text conversions (an IPv4
  // address above 2^31 is a heap number): 0.5-0.8 us instead of 2-4 us for the three keys a churned
  // connection builds (lookup on its SYN, add on close, remove on reuse).
  if (typeof src !== 'number') return key6(src, srcPort, dst, dstPort);
  return String.fromCharCode(src >>> 16, src & 0xffff, srcPort, (dst as number) >>> 16, (dst as number) & 0xffff, dstPort);
}

export class TimeWaitTable {
  /** Every record by four-tuple, oldest deadline first (a Map keeps insertion order; a restart re-inserts). */
  private readonly byAge = new Map<string, TimeWaitRecord>();
  private readonly timer: Timer;
  private recycledCount = 0;
  private readonly ack: TcpSegmentFields;
  private readonly ackOpts: TcpOptions = { mss: null, windowScale: null, sackPermitted: false, timestamp: null, sackBlocks: null };
  private readonly ackTs = { value: 0, echo: 0 };

  constructor(
    /** Most records held at once; more recycle the oldest. */
    readonly max: number,
    private readonly timeWaitMs: number,
    private readonly clock: Clock,
    private readonly timers: TimerWheel,
    /** Sends one segment from the record's four-tuple (our side is tuple.dst). The fields object is reused. */
    private readonly send: (tuple: FourTuple, seg: TcpSegmentFields) => void,
  ) {
    if (!Number.isInteger(max) || max < 1) throw new RangeError(`TimeWaitTable: max must be a positive integer, got ${max}`);
    this.timer = new Timer(() => this.expire());
    this.ack = { srcPort: 0, dstPort: 0, seq: 0, ack: 0, flags: TCP_ACK, window: 0, options: this.ackOpts };
  }

  get size(): number {
    return this.byAge.size;
  }

  stats(): TimeWaitStats {
    return { size: this.byAge.size, recycled: this.recycledCount };
  }

  get(src: IpAddress, srcPort: number, dst: IpAddress, dstPort: number): TimeWaitRecord | undefined {
    return this.byAge.get(keyOf(src, srcPort, dst, dstPort));
  }

  /** Starts TIME-WAIT for `fields.tuple` (replacing a record on the same tuple); recycles the oldest when full. */
  add(fields: TimeWaitFields): TimeWaitRecord {
    const t = fields.tuple;
    const key = keyOf(t.src, t.srcPort, t.dst, t.dstPort);
    const old = this.byAge.get(key);
    if (old !== undefined) this.remove(old);
    if (this.byAge.size >= this.max) {
      const oldest = this.byAge.values().next().value as TimeWaitRecord;
      this.remove(oldest);
      this.recycledCount++;
    }
    const rec: TimeWaitRecord = {
      tuple: t,
      sndNxt: fields.sndNxt,
      rcvNxt: fields.rcvNxt,
      window: fields.window,
      tsOk: fields.tsOk,
      tsOffset: fields.tsOffset,
      tsRecent: fields.tsRecent,
      tsRecentAt: fields.tsRecentAt,
      deadline: this.clock.now() + this.timeWaitMs,
      lastOowAckAt: -Infinity,
    };
    this.byAge.set(key, rec);
    if (!this.timer.armed) this.armForOldest();
    return rec;
  }

  remove(rec: TimeWaitRecord): void {
    const t = rec.tuple;
    const key = keyOf(t.src, t.srcPort, t.dst, t.dstPort);
    if (this.byAge.get(key) !== rec) return;
    this.byAge.delete(key);
    if (this.byAge.size === 0) this.timers.cancel(this.timer);
  }

  clear(): void {
    this.byAge.clear();
    this.timers.cancel(this.timer);
  }

  /**
   * A segment for a four-tuple in TIME-WAIT. Returns 'reopen' for a pure SYN
   * (the caller removes the record and opens anew), else 'done'.
   */
  input(rec: TimeWaitRecord, seg: TcpRepr): 'reopen' | 'done' {
    const flags = seg.flags;
    if ((flags & (TCP_SYN | TCP_ACK | TCP_RST)) === TCP_SYN) return 'reopen';
    const now = this.clock.now();
    const ts = seg.options.timestamp;
    const seq = seg.seq >>> 0;
    if ((flags & TCP_RST) !== 0) {
      // RFC 5961 §3.2: only an exact match resets (Linux kills TIME-WAIT on it, tcp_rfc1337 = 0).
      if (seq === rec.rcvNxt) this.remove(rec);
      return 'done';
    }
    const pawsReject =
      rec.tsOk && ts !== null && seqLt(ts.value, rec.tsRecent) && now - rec.tsRecentAt <= TS_RECENT_VALID_MS;
    const fin = (flags & TCP_FIN) !== 0;
    const empty = seg.payload.length === 0 && !fin && (flags & TCP_SYN) === 0;
    // RFC 7323 §4.3: a segment at or before Last.ACK.sent (= RCV.NXT here) sets the timestamp to echo.
    if (!pawsReject && rec.tsOk && ts !== null && seqLe(seq, rec.rcvNxt)) {
      rec.tsRecent = ts.value;
      rec.tsRecentAt = now;
    }
    // The peer's ACK of our FIN, again: nothing to say.
    if (!pawsReject && empty && seq === rec.rcvNxt) return 'done';
    // A retransmitted FIN means our last ACK was lost: answer it and wait 2MSL again (RFC 9293 §3.10.7.4).
    if (fin && !pawsReject) this.restart(rec);
    if (seg.payload.length === 0 && !fin) {
      if (now - rec.lastOowAckAt < OOW_ACK_INTERVAL_MS) return 'done';
      rec.lastOowAckAt = now;
    }
    this.sendAck(rec);
    return 'done';
  }

  private sendAck(rec: TimeWaitRecord): void {
    const a = this.ack;
    a.srcPort = rec.tuple.dstPort;
    a.dstPort = rec.tuple.srcPort;
    a.seq = rec.sndNxt;
    a.ack = rec.rcvNxt;
    a.window = rec.window;
    if (rec.tsOk) {
      this.ackTs.value = (Math.floor(this.clock.now()) + rec.tsOffset) >>> 0;
      this.ackTs.echo = rec.tsRecent;
      this.ackOpts.timestamp = this.ackTs;
    } else {
      this.ackOpts.timestamp = null;
    }
    this.send(rec.tuple, a);
  }

  private restart(rec: TimeWaitRecord): void {
    rec.deadline = this.clock.now() + this.timeWaitMs;
    const t = rec.tuple;
    const key = keyOf(t.src, t.srcPort, t.dst, t.dstPort);
    this.byAge.delete(key);
    this.byAge.set(key, rec);
    this.armForOldest();
  }

  private armForOldest(): void {
    const oldest = this.byAge.values().next().value as TimeWaitRecord | undefined;
    if (oldest === undefined) {
      this.timers.cancel(this.timer);
      return;
    }
    this.timers.arm(this.timer, Math.max(0, oldest.deadline - this.clock.now()));
  }

  private expire(): void {
    const now = this.clock.now();
    for (const [key, rec] of this.byAge) {
      if (rec.deadline > now) break;
      this.byAge.delete(key);
    }
    this.armForOldest();
  }
}
