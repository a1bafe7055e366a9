/**
 * Guest TCP connections to host sockets. "Dial first, answer after": the
 * guest's SYN is held (PendingTcp) while Moat connects to the destination on
 * the host, and only a successful connect is answered with SYN-ACK, so the
 * guest sees what a real network would show:
 *  - ECONNREFUSED, and any other immediate dial error (EHOSTUNREACH,
 *    ENETUNREACH...): pending.refuse() -> RST, "connection refused" at once
 *    (an ICMP unreachable would be more faithful for the routing errors, but
 *    the stack holds the SYN, not its IP header, and RST fails just as fast);
 *  - no answer within connectTimeoutMs: pending.ignore() -> the guest's own
 *    SYN retries time out, as behind a filtering firewall.
 * Once connected, a TcpPipe joins the two sockets until both are closed; the
 * flow leaves the table at that moment.
 */
import { connect as netConnect, type NetConnectOpts, type Socket } from 'node:net';
import type { PendingTcp, SynInfo, TcpHandlers, TcpSocket } from '../../netstack/api.js';
import { RefusalLog, type BufferBudget } from '../limits.js';
import type { Logger } from '../log.js';
import { TcpPipe, type FlowInspector } from './tcp-pipe.js';
import type { RateLimiter } from '../traffic/rate-limiter.js';
import type { ByteBudgets } from '../traffic/byte-budgets.js';
import { describe } from './udp-flows.js';

export interface TcpFlowTableOptions {
  maxFlows: number;
  connectTimeoutMs: number;
  perFlowBufferBytes: number;
  connectHost?: (opts: NetConnectOpts) => Socket;
  /** The cap on bytes buffered over all flows (none: each flow is bounded on its own only). */
  budget?: BufferBudget;
  /** Flows outside this table that count against maxFlows (connections held for their name). */
  extraFlows?: () => number;
  /** A SYN refused because maxFlows flows exist; logged by the caller's RefusalLog (per-refusal lines would flood). */
  onLimit?: (fields: Record<string, unknown>) => void;
  /** The guest's rate limits (--rate-egress, --rate-ingress), shared by all its flows. */
  rate?: { egress?: RateLimiter | undefined; ingress?: RateLimiter | undefined };
  /** Byte budgets per rule (--budget): a flow is charged to the rule that allowed it. */
  budgets?: ByteBudgets;
  /** A flow reset because its rule's budget ran out (the caller records it). */
  onBudgetSpent?: (syn: SynInfo, rule: string, pipe: TcpPipe) => void;
  /** Every flow that was open, when it closes, with its bytes (the decision log's flow lines: moat learn --budgets reads them). */
  onClosed?: (syn: SynInfo, tag: FlowTag, bytesToHost: number, bytesToGuest: number) => void;
}

/** What allowed a flow: the rule (charged with its bytes when it has a budget) and the name it was allowed for. */
export interface FlowTag {
  readonly rule: string | null;
  readonly name: string | null;
}

const UNTAGGED: FlowTag = Object.freeze({ rule: null, name: null });

export interface TcpFlowStats {
  /** Flows dialing or open. */
  flows: number;
  dialing: number;
  opened: number;
  refused: number;
  /** Of `refused`: because maxFlows flows existed. */
  limitRefused: number;
  timedOut: number;
  bytesToHost: number;
  bytesToGuest: number;
  /** Host bytes held in memory for guests whose send buffer is full (backpressure bound check). */
  heldBytes: number;
}

/**
 * One read buffer for every dialed host socket (Node's `onread`): a host
 * socket otherwise allocates a fresh 64 KiB Buffer per read, and during a
 * host->guest transfer that garbage was ~15% of Moat's CPU (bench:compare
 * --profile). Safe to share: the bytes are copied into the guest send ring
 * (or the pipe's held copy) before the callback returns, on one thread.
 *
 * A read is 256 KiB while the flow's send ring has room for all of it, else
 * 64 KiB (HOST_READ_SMALL): each read costs a callback, a pass of the
 * stack's output and a TAP write in which the guest's kernel receives, and
 * a download through 64 KiB reads went out as one full segment plus a runt
 * per read, the guest's window never more than one read deep (guest tcpdump;
 * 1.6x the rate host->guest with 256 KiB, h16-big). What a pipe may have to
 * hold aside stays one 64 KiB read: a read only gets large when it fits.
 */
const HOST_READ_BUFFER = new Uint8Array(256 * 1024); // not a Buffer: its views are plain Uint8Arrays, whose slice() copies
const HOST_READ_SMALL = HOST_READ_BUFFER.subarray(0, 64 * 1024);

interface Dial {
  readonly pending: PendingTcp;
  readonly socket: Socket;
  readonly timer: NodeJS.Timeout;
  readonly admit: DialAdmission | undefined;
  /** What allowed it. */
  readonly tag: FlowTag;
}

/**
 * Asked again whether a flow decided by the egress policy may still go on
 * (the allowlist may have been reloaded since): when its dial connects, and
 * when a reload drops what the new rules refuse (`why` says which, for the
 * record). false: the SYN is refused (RST) or the open flow reset, and the
 * host socket destroyed; the callee has recorded why.
 */
export type DialAdmission = (why: 'while dialing' | 'while open') => boolean;

export class TcpFlowTable {
  private readonly dials = new Set<Dial>();
  private readonly pipes = new Set<TcpPipe>();
  /** The pipe each dialed socket's reads go to (sockets with the shared read buffer). */
  private readonly readers = new WeakMap<Socket, TcpPipe>();
  /** How each flow decided by the egress policy is asked again (recheckOpen); flows without one are never re-decided. */
  private readonly admissions = new Map<TcpPipe, DialAdmission>();
  private readonly counters = { opened: 0, refused: 0, limitRefused: 0, timedOut: 0, bytesToHost: 0, bytesToGuest: 0 };

  /**
   * Refusals are logged per reason at most once per interval (a summary line
   * counts the rest): a guest dialing a closed port in a loop must not fill the log.
   */
  private readonly refusals: RefusalLog;
  /** Per-flow debug lines are written (the level is fixed for the logger's life). */
  private readonly debug: boolean;

  constructor(
    private readonly opts: TcpFlowTableOptions,
    private readonly log: Logger,
  ) {
    this.debug = log.enabled('debug');
    this.refusals = new RefusalLog(log, undefined, {
      level: 'info',
      first: 'tcp flow refused',
      summary: 'tcp flows refused since the last line',
      keyField: 'reason',
    });
  }

  get size(): number {
    return this.dials.size + this.pipes.size;
  }

  stats(): TcpFlowStats {
    let toHost = this.counters.bytesToHost;
    let toGuest = this.counters.bytesToGuest;
    let held = 0;
    for (const p of this.pipes) {
      held += p.heldBytes;
      toHost += p.bytesToHost;
      toGuest += p.bytesToGuest;
    }
    return {
      flows: this.size,
      dialing: this.dials.size,
      opened: this.counters.opened,
      refused: this.counters.refused,
      limitRefused: this.counters.limitRefused,
      timedOut: this.counters.timedOut,
      bytesToHost: toHost,
      bytesToGuest: toGuest,
      heldBytes: held,
    };
  }

  /** Are maxFlows flows (this table's and the extra ones) open or dialing? */
  atLimit(): boolean {
    return this.size + (this.opts.extraFlows?.() ?? 0) >= this.opts.maxFlows;
  }

  /** Refuses `pending` with RST because of maxFlows: counted, logged through onLimit (rate-limited there). */
  refuseAtLimit(pending: PendingTcp): void {
    this.counters.refused++;
    this.counters.limitRefused++;
    if (this.opts.onLimit !== undefined) this.opts.onLimit({ ...describe(pending.syn), max: this.opts.maxFlows });
    else this.log.debug('tcp flow refused', { ...describe(pending.syn), reason: 'too-many-flows' });
    pending.refuse();
  }

  /** Refuses `pending` with RST, logging why (the first of each reason per interval, then a count). */
  refuse(pending: PendingTcp, reason: string, extra?: Record<string, unknown>): void {
    this.counters.refused++;
    this.refusals.refused(reason, { ...describe(pending.syn), ...extra });
    pending.refuse();
  }

  /** Dials `hostAddress:dstPort` for the guest's SYN; answers the SYN when the dial settles (and `admit`, if given, still says yes). */
  dial(pending: PendingTcp, hostAddress: string, admit?: DialAdmission, tag: FlowTag = UNTAGGED): void {
    if (this.atLimit()) {
      this.refuseAtLimit(pending);
      return;
    }
    const syn = pending.syn;
    const socket = this.open(hostAddress, syn.dstPort, true);
    const dial: Dial = {
      pending,
      socket,
      timer: setTimeout(() => {
        if (!this.dials.delete(dial)) return;
        this.counters.timedOut++;
        this.refusals.refused('connect-timeout', describe(syn));
        socket.destroy();
        pending.ignore();
      }, this.opts.connectTimeoutMs),
      admit,
      tag,
    };
    this.dials.add(dial);
    const onError = (err: NodeJS.ErrnoException): void => {
      if (!this.dials.delete(dial)) return;
      clearTimeout(dial.timer);
      socket.destroy();
      this.refuse(pending, 'dial-failed', { error: err.code ?? err.message });
    };
    socket.once('error', onError);
    socket.once('connect', () => {
      if (!this.dials.delete(dial)) {
        socket.destroy();
        return;
      }
      clearTimeout(dial.timer);
      socket.off('error', onError);
      // Decided before it connected: the rules may have changed meanwhile (issue 14 finding 4).
      if (dial.admit !== undefined && !dial.admit('while dialing')) {
        socket.destroy();
        this.refuse(pending, 'policy:reloaded');
        return;
      }
      this.connected(dial);
    });
  }

  /**
   * Asks every dial still in flight whether it may go on (an allowlist
   * reload with ?drop=1); refuses those it may not (RST, host socket
   * destroyed). Returns how many.
   */
  recheckDials(): number {
    let refused = 0;
    for (const dial of [...this.dials]) {
      if (dial.admit === undefined || dial.admit('while dialing')) continue;
      this.dials.delete(dial);
      clearTimeout(dial.timer);
      dial.socket.destroy();
      this.refuse(dial.pending, 'policy:reloaded');
      refused++;
    }
    return refused;
  }

  /**
   * Connects to the first of `addresses` that accepts on `port`, trying them
   * in order, each attempt bounded by the connect timeout. For connections
   * the guest already opened (held for their SNI/Host): their SYN was
   * answered, so a failure here resets the guest side instead.
   */
  async connectFirst(addresses: readonly string[], port: number): Promise<Socket> {
    const errors: string[] = [];
    for (const address of addresses) {
      try {
        return await this.connectOne(address, port);
      } catch (err) {
        errors.push(`${address}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
      }
    }
    throw new Error(`no address answered on port ${port} (${errors.join('; ') || 'no address'})`);
  }

  /**
   * Joins an already accepted guest connection to a connected host socket;
   * returns the handlers the guest's events must go to. `admit`: how a
   * reload with drop asks whether the flow may go on (recheckOpen);
   * `inspector`: the watch the piped flow stays under (one connection, one name).
   */
  adopt(syn: SynInfo, tcp: TcpSocket, socket: Socket, admit?: DialAdmission, inspector?: FlowInspector, tag: FlowTag = UNTAGGED): TcpHandlers {
    const pipe = this.newPipe(syn, socket, inspector, tag);
    if (admit !== undefined) this.admissions.set(pipe, admit);
    this.counters.opened++;
    this.logOpen(syn);
    pipe.bind(tcp);
    return pipe.handlers;
  }

  /** `sharedReads`: read into HOST_READ_BUFFER and hand the bytes to the socket's pipe (see `readers`). */
  private open(address: string, port: number, sharedReads = false): Socket {
    const opts = {
      host: address,
      port,
      allowHalfOpen: true,
      noDelay: true, // the guest already sized its segments; do not delay them again
      writableHighWaterMark: this.opts.perFlowBufferBytes,
    } as NetConnectOpts; // Socket passes stream options on to its Duplex
    if (!sharedReads) return (this.opts.connectHost ?? netConnect)(opts);
    // Node asks `buffer` for the next read's buffer once before connect() returns (socket is still unset then).
    let socket: Socket | undefined;
    socket = (this.opts.connectHost ?? netConnect)({
      ...opts,
      onread: {
        buffer: (): Uint8Array => {
          const pipe = socket === undefined ? undefined : this.readers.get(socket);
          if (pipe === undefined || pipe.hostReadRoom < HOST_READ_BUFFER.length) return HOST_READ_SMALL;
          // The read comes later: its room is held until it lands (BufferBudget.reserve).
          pipe.reserveHostRead(HOST_READ_BUFFER.length);
          return HOST_READ_BUFFER;
        },
        callback: (n: number, buf: Uint8Array): boolean => {
          const pipe = this.readers.get(socket!);
          // Reading starts after 'connect', where the pipe is made; nothing else may read here.
          if (pipe === undefined) socket!.destroy(new Error('host bytes before the flow was joined'));
          else pipe.hostBytes(buf.subarray(0, n));
          if (n < buf.length && pipe !== undefined) pipe.afterShortRead(); // a FIN may wait behind it (host-eof-probe.ts)
          return true;
        },
      },
    });
    return socket;
  }

  private connectOne(address: string, port: number): Promise<Socket> {
    return new Promise((resolve, reject) => {
      const socket = this.open(address, port);
      const timer = setTimeout(() => {
        socket.destroy();
        this.counters.timedOut++;
        reject(new Error('connect timeout'));
      }, this.opts.connectTimeoutMs);
      socket.once('error', (err) => {
        clearTimeout(timer);
        socket.destroy();
        reject(err);
      });
      socket.once('connect', () => {
        clearTimeout(timer);
        socket.removeAllListeners('error');
        resolve(socket);
      });
    });
  }

  /** Closes every flow now: host sockets destroyed, guest sides reset, pending SYNs dropped. */
  closeAll(): void {
    for (const dial of [...this.dials]) {
      this.dials.delete(dial);
      clearTimeout(dial.timer);
      dial.socket.destroy();
      dial.pending.ignore();
    }
    for (const pipe of [...this.pipes]) pipe.destroy();
  }

  private newPipe(syn: SynInfo, socket: Socket, inspector?: FlowInspector, tag: FlowTag = UNTAGGED): TcpPipe {
    // The meter exists before the pipe: another flow may spend the budget first, which cuts this one.
    let self: TcpPipe | undefined;
    const meter = this.opts.budgets?.open(tag.rule, () => self?.cutByBudget());
    const onSpent = this.opts.onBudgetSpent;
    const pipe = new TcpPipe(socket, {
      waitForConnect: false,
      ...(inspector !== undefined ? { inspector } : {}),
      ...(this.opts.budget ? { budget: this.opts.budget } : {}),
      ...(this.opts.rate ? { rate: this.opts.rate } : {}),
      ...(meter !== undefined ? { meter } : {}),
      ...(meter !== undefined && onSpent !== undefined ? { onBudgetSpent: (p: TcpPipe) => onSpent(syn, meter.rule, p) } : {}),
      onFinished: (p, reason) => {
        this.pipes.delete(p);
        this.admissions.delete(p);
        this.counters.bytesToHost += p.bytesToHost;
        this.counters.bytesToGuest += p.bytesToGuest;
        this.opts.onClosed?.(syn, tag, p.bytesToHost, p.bytesToGuest);
        // Per-flow lines only at debug: their fields (two formatted addresses) are not built otherwise.
        if (this.debug)
          this.log.debug('tcp flow close', {
            ...describe(syn),
            reason,
            error: p.error?.message,
            bytesToHost: p.bytesToHost,
            bytesToGuest: p.bytesToGuest,
          });
      },
    });
    self = pipe;
    this.pipes.add(pipe);
    return pipe;
  }

  /**
   * Asks every open flow's admission whether it may go on (an allowlist
   * reload with ?drop=1; the admission records each refusal) and resets
   * those it may not. Returns how many were reset.
   */
  recheckOpen(): number {
    let reset = 0;
    for (const [pipe, admit] of [...this.admissions]) {
      if (admit('while open')) continue;
      pipe.destroy();
      reset++;
    }
    return reset;
  }

  private connected(dial: Dial): void {
    const pipe = this.newPipe(dial.pending.syn, dial.socket, undefined, dial.tag);
    this.readers.set(dial.socket, pipe);
    if (dial.admit !== undefined) this.admissions.set(pipe, dial.admit);
    let tcp;
    try {
      tcp = dial.pending.accept(pipe.handlers);
    } catch (err) {
      // The stack gave up on this SYN meanwhile (held too long, guest reset).
      this.pipes.delete(pipe);
      pipe.releaseMeter();
      dial.socket.destroy();
      if (this.debug) this.log.debug('tcp flow dropped', { ...describe(dial.pending.syn), reason: 'accept-failed', error: String(err) });
      return;
    }
    this.counters.opened++;
    this.logOpen(dial.pending.syn);
    pipe.bind(tcp);
  }

  private logOpen(syn: SynInfo): void {
    if (this.debug) this.log.debug('tcp flow open', describe(syn));
  }
}
