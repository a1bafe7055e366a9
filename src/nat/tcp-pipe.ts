/**
 * Joins one host socket (node:net) to one guest TCP connection (netstack
 * TcpSocket), both ways, with backpressure and half-close. Used by the NAT
 * (guest dials out) and by the port forwarder (host dials in), so the two
 * cannot drift apart.
 *
 * Memory per pipe is bounded on both sides:
 *  - guest -> host: bytes go to host.write(); when it returns false (the
 *    socket's buffer passed its high-water mark) the guest side is paused, so
 *    the stack shrinks the advertised window instead of queueing here, and is
 *    resumed on 'drain'.
 *  - host -> guest: a host chunk goes to tcp.write(), which takes what fits in
 *    the send buffer. The rest (at most one chunk) is kept and the host socket
 *    is paused, so the kernel's receive window closes towards the server; on
 *    onDrain the rest is written and reading resumes.
 *
 * Closing: a guest FIN ends the host socket's writing side and a host FIN
 * ends the guest side (both sockets are half-open capable). An error or reset
 * on one side resets the other: host error -> tcp.abort() (RST to the guest),
 * guest RST/abort/timeout -> host.destroy(). The pipe reports `onFinished`
 * exactly once, when both sides are gone.
 *
 * Inspection (optional, `inspector`): a flow whose bytes must keep being
 * checked after it was allowed (one connection, one name: every HTTP request,
 * a TLS client's plaintext handshake) passes its guest bytes through the
 * inspector before they reach the host, and host bytes too while the
 * inspector asks for them. Flows without one pay one property check per
 * chunk; an inspector that is done is dropped.
 *
 * Rate limits (optional, `rate`): guest bytes beyond what the egress
 * limiter allows now are kept (one chunk: the guest side is paused at once,
 * so its window closes) and written when the limiter wakes the pipe; host
 * bytes beyond what the ingress limiter allows stay in `held` with the host
 * socket paused, exactly as when the guest's send buffer is full. Nothing
 * is dropped. Byte budget (optional, `meter`): every byte that passes is
 * charged to the budget of the rule that allowed the flow; when it runs
 * out, what it still allowed passes and the flow is reset (cutByBudget).
 */
import type { Socket } from 'node:net';
import type { TcpCloseReason, TcpHandlers, TcpSocket } from '../../netstack/api.js';
import type { BudgetMember, BufferBudget } from '../limits.js';
import type { RateLimiter } from '../traffic/rate-limiter.js';
import type { FlowMeter } from '../traffic/byte-budgets.js';
import { CopySlabs } from './copy-slabs.js';
import { hostWriteMode, uncorkAtBatchEnd, type Uncorkable } from './host-write-batch.js';
import { probeHostEnd } from './host-eof-probe.js';

/** How long a flow cut by its budget may take to hand the host what was already charged before it is reset. */
export const BUDGET_LINGER_MS = 5_000;

/** Copies of guest bytes waiting in host sockets' write queues, shared by every pipe (one thread). */
const GUEST_COPIES = new CopySlabs();
/** Largest piece copied into one slab (CopySlabs copies anything larger into a fresh buffer). */
const COPY_PIECE_BYTES = GUEST_COPIES.maxCopyBytes;

/**
 * What an inspector says after looking at bytes:
 *  - 'pass': go on;
 *  - 'hold': stop reading the guest until host bytes settle it ('release');
 *  - 'release': read the guest again (what was held has been forwarded);
 *  - 'done': nothing more to inspect; the inspector is dropped;
 *  - 'reset': refuse: reset both sides;
 *  - 'answer': refuse: the host's writing side is ended, guest bytes are
 *    dropped, and after the host's last byte the guest gets `answer` and a
 *    FIN (bounded by `lingerMs`, then both are reset).
 */
export type InspectVerdict = 'pass' | 'hold' | 'release' | 'done' | 'reset' | 'answer';

export interface FlowInspector {
  /** Guest bytes, before the host: calls `forward` with what may go (views valid during that call). */
  guest(data: Uint8Array, forward: (bytes: Uint8Array) => void): InspectVerdict;
  /** True while host bytes must be shown to host(). */
  readonly watchingHost: boolean;
  /** Host bytes (only while watchingHost), before the guest; `forward` sends held guest bytes on. */
  host(data: Uint8Array, forward: (bytes: Uint8Array) => void): InspectVerdict;
  /** For 'answer': what the guest gets after the host's last byte. */
  readonly answer: Uint8Array | null;
  /** For 'answer': how long the host may take to finish before both sides are reset. */
  readonly lingerMs: number;
}

export interface TcpPipeOptions {
  /**
   * The guest side is an active open (port forwarding): host bytes are held
   * (host socket paused) until the handshake completes (onConnect).
   */
  waitForConnect: boolean;
  /** Called once when both sides are closed; `reason` says how the guest side ended. */
  onFinished(pipe: TcpPipe, reason: TcpCloseReason | 'host-error'): void;
  /** Called when the guest side connected (active opens only). */
  onConnected?(pipe: TcpPipe): void;
  /**
   * The cap on bytes buffered over all flows (src/limits.ts). Each direction
   * charges what it takes; when the budget says so, the source of that
   * direction is paused (host socket not read / guest window closed) until
   * the budget resumes it.
   */
  budget?: BufferBudget;
  /** Checks guest bytes (and host bytes while it asks) before they pass; see FlowInspector. */
  inspector?: FlowInspector;
  /** The guest's (client's) rate limits: egress = guest bytes to the host, ingress = host bytes to the guest. */
  rate?: { egress?: RateLimiter | undefined; ingress?: RateLimiter | undefined };
  /** The byte budget of the rule that allowed the flow. */
  meter?: FlowMeter;
  /** The budget ran out under this flow: called once, just before both sides are reset (the owner records it). */
  onBudgetSpent?(pipe: TcpPipe): void;
}

export class TcpPipe implements BudgetMember, Uncorkable {
  readonly handlers: TcpHandlers;
  bytesToHost = 0;
  bytesToGuest = 0;

  private tcp: TcpSocket | undefined;
  private guestConnected: boolean;
  /** Host bytes the guest's send buffer did not take yet (at most one chunk). */
  private held: Uint8Array | undefined;
  private hostEnded = false; // host sent FIN
  private guestEndSent = false;
  private tcpClosed = false;
  private tcpCloseReason: TcpCloseReason | undefined;
  private hostClosed = false;
  private hostError: Error | undefined;
  private guestPausedForHost = false;
  /** Paused by the buffer budget: the host socket is not read / the guest side is paused. */
  private hostPausedForBudget = false;
  private guestPausedForBudget = false;
  private finished = false;
  private inspector: FlowInspector | undefined;
  /** The inspector holds guest bytes: the guest side is paused until it releases them. */
  private guestPausedForInspector = false;
  /** A guest FIN that came while guest bytes were held: passed on after them. */
  private guestEndPending = false;
  /** Refused by the inspector: guest bytes are dropped from now on. */
  private guestRefused = false;
  /** Bytes the guest gets after the host's last byte, before its FIN (a refusal). */
  private trailer: Uint8Array | undefined;
  private lingerTimer: NodeJS.Timeout | undefined;
  /** Guest bytes the egress rate limit did not let pass yet: the guest side is paused until they are written. */
  private egressQueue: Uint8Array | undefined;
  private guestPausedForRate = false;
  private budgetCut = false;

  constructor(
    readonly host: Socket,
    private readonly opts: TcpPipeOptions,
  ) {
    this.guestConnected = !opts.waitForConnect;
    this.handlers = {
      onData: (data) => this.guestData(data),
      onEnd: () => this.guestEnd(),
      onDrain: () => this.guestDrain(),
      onClose: (reason) => this.guestClosed(reason),
      onConnect: () => this.guestConnect(),
      // The receive window grows only while the buffer budget has room for it (see BufferBudget.growWindow).
      mayGrowWindow: (bytes) => this.opts.budget?.growWindow(this, bytes) ?? true,
    };
    this.inspector = opts.inspector;
    if (!this.guestConnected) host.pause();
    // Sockets dialed with a shared read buffer (TcpFlowTable) emit no 'data': their bytes come through hostBytes().
    host.on('data', (chunk: Buffer) => this.hostData(chunk, false));
    host.on('end', () => this.hostEnd());
    host.on('drain', () => this.hostDrain());
    host.on('error', (err) => {
      this.hostError = err;
    });
    host.on('close', () => this.hostClose());
    opts.budget?.add(this);
  }

  /**
   * Bytes this flow holds now: towards the guest (send buffer + held chunk),
   * from the guest (the stack's receive ring: what the guest sent into its
   * window while this side was paused) and towards the host (socket buffer).
   */
  bufferedBytes(): number {
    const guest = this.tcpClosed || this.tcp === undefined ? 0 : this.tcp.bufferedAmount + this.tcp.recvBufferedAmount;
    return guest + this.heldBytes + (this.host.destroyed ? 0 : this.host.writableLength);
  }

  /** Of bufferedBytes(), what the guest sent into its window that this side has not taken yet (the stack's receive ring). */
  receivedBytes(): number {
    return this.tcpClosed || this.tcp === undefined ? 0 : this.tcp.recvBufferedAmount;
  }

  resumeFromBudget(): void {
    if (this.hostPausedForBudget) {
      this.hostPausedForBudget = false;
      if (this.held === undefined && !this.tcpClosed && this.guestConnected && !this.host.destroyed) this.host.resume();
    }
    if (this.guestPausedForBudget) {
      this.guestPausedForBudget = false;
      this.resumeGuest();
    }
  }

  /** Reads the guest again unless something else still holds it. */
  private resumeGuest(): void {
    if (!this.tcpClosed && !this.guestPausedForHost && !this.guestPausedForBudget && !this.guestPausedForInspector && !this.guestPausedForRate) this.tcp?.resume();
  }

  /**
   * The byte budget of the flow's rule ran out (this flow spent it, or
   * another one under the same rule did): the owner is told and the guest
   * is reset at once. The host still gets the bytes already charged (queued
   * in its socket: a reset would drop them, and on a slow server most of
   * the budget with them), then FIN; one that has not closed within
   * BUDGET_LINGER_MS is reset. Bytes the rate limit still held were not
   * charged and are dropped.
   */
  cutByBudget(): void {
    if (this.budgetCut || this.finished) return;
    this.budgetCut = true;
    this.opts.onBudgetSpent?.(this);
    this.egressQueue = undefined;
    this.guestEndPending = false;
    if (this.tcpClosed || this.tcp === undefined) this.destroy();
    else this.abortGuest(); // guestClosed ends the host gracefully for a cut flow
  }

  /** A pipe that never got its guest socket (accept failed): its budget account is closed. */
  releaseMeter(): void {
    this.opts.meter?.close();
  }

  /** Gives the pipe its guest socket (returned by accept() or connectTcp()). */
  bind(tcp: TcpSocket): void {
    this.tcp = tcp;
    if (this.tcpClosed) return; // closed during accept/connect: nothing to start
    if (this.hostClosed) {
      this.abortGuest();
      return;
    }
    if (this.guestConnected) this.flushHeld();
  }

  /** Host bytes waiting for room in the guest's send buffer (bounded by about one read chunk). */
  get heldBytes(): number {
    return this.held?.length ?? 0;
  }

  /**
   * How many host bytes the next read may bring with none held aside: the
   * guest send ring's free room; 0 while a read would not go to the ring
   * whole (not connected yet, bytes already held, an ingress rate limit or
   * meter that may take less), and never more than the buffer budget's room,
   * so that what a flow may overshoot the budget by stays one small read. The
   * shared host read buffer sizes reads by it.
   */
  get hostReadRoom(): number {
    if (this.tcp === undefined || !this.guestConnected || this.held !== undefined || this.tcpClosed) return 0;
    if (this.opts.rate?.ingress !== undefined || this.opts.meter !== undefined) return 0;
    const room = this.tcp.writableSpace;
    return this.opts.budget === undefined ? room : Math.min(room, this.opts.budget.room);
  }

  /** Why the host socket failed, if it did. */
  get error(): Error | undefined {
    return this.hostError;
  }

  /** Ends everything now: RST to the guest, host socket destroyed. */
  destroy(): void {
    this.abortGuest();
    if (!this.host.destroyed) this.host.resetAndDestroy();
  }

  // --- guest -> host -------------------------------------------------------

  private guestData(data: Uint8Array): void {
    if (this.host.destroyed || this.host.writableEnded) return;
    if (this.inspector !== undefined || this.guestRefused) {
      if (!this.guestRefused) this.apply(this.inspector!.guest(data, this.forwardToHost));
      return;
    }
    this.writeToHost(data);
  }

  private readonly forwardToHost = (bytes: Uint8Array): void => {
    if (!this.host.destroyed && !this.host.writableEnded) this.writeToHost(bytes);
  };

  private writeToHost(data: Uint8Array): void {
    const limiter = this.opts.rate?.egress;
    if (limiter !== undefined) {
      if (this.egressQueue !== undefined) {
        // Already waiting: keep the order (an inspector may forward more than one view per guest chunk).
        this.egressQueue = concat(this.egressQueue, data);
        return;
      }
      const n = Math.min(data.length, limiter.allowance());
      if (n < data.length) {
        this.egressQueue = Buffer.from(data.subarray(n));
        if (!this.guestPausedForRate) {
          this.guestPausedForRate = true;
          this.tcp?.pause();
        }
        limiter.wait(this.egressWake);
      }
      if (n === 0) return;
      limiter.spend(n);
      data = data.subarray(0, n);
    }
    this.passToHost(data);
  }

  /** The egress limiter has room again: write what waited, then read the guest again once nothing waits. */
  private readonly egressWake = (): void => {
    const limiter = this.opts.rate?.egress;
    const q = this.egressQueue;
    if (limiter === undefined || q === undefined || this.host.destroyed || this.host.writableEnded || this.finished) return;
    const n = Math.min(q.length, limiter.allowance());
    limiter.spend(n);
    this.egressQueue = n < q.length ? q.subarray(n) : undefined;
    if (n > 0) this.passToHost(q.subarray(0, n));
    if (this.egressQueue !== undefined) {
      limiter.wait(this.egressWake);
      return;
    }
    this.guestPausedForRate = false;
    this.resumeGuest();
    if (this.guestEndPending && !this.guestPausedForInspector) {
      this.guestEndPending = false;
      this.guestEnd();
    }
  };

  /** Guest bytes the rate limit let pass: charged to the budget, then written to the host. */
  private passToHost(data: Uint8Array): void {
    const meter = this.opts.meter;
    if (meter !== undefined) {
      const ok = meter.charge(data.length, 'egress');
      if (ok < data.length) data = data.subarray(0, ok);
    }
    if (data.length > 0) this.rawWriteToHost(data);
    if (meter?.ended === true) this.cutByBudget();
  }

  private rawWriteToHost(data: Uint8Array): void {
    this.bytesToHost += data.length;
    // A batch of several guest frames: cork so that its segments leave in one
    // writev once the batch is done, not one write syscall per segment; a lone
    // frame's bytes go at once (host-write-batch.ts).
    if (!this.corked) {
      const mode = hostWriteMode();
      if (mode !== 'now') {
        this.corked = true;
        this.host.cork();
        if (mode === 'batch') uncorkAtBatchEnd(this);
        else queueMicrotask(this.uncorkHost);
      }
    }
    // The view is only valid during the call: copy it into recycled slabs, a
    // slab-sized piece at a time (a ring paused for a while hands over up to
    // its whole window at once; a fresh buffer for that was ~14% of Moat's CPU).
    for (let off = 0; off < data.length; off += COPY_PIECE_BYTES) {
      const piece = off === 0 && data.length <= COPY_PIECE_BYTES ? data : data.subarray(off, Math.min(data.length, off + COPY_PIECE_BYTES));
      this.host.write(GUEST_COPIES.copy(piece), GUEST_COPIES.releaseLast());
    }
    // Whether the host keeps up is judged after the batch's writev (uncorkNow),
    // not by write()'s answer here: while corked every byte of the batch counts
    // as buffered, so a batch larger than the flow buffer paused the guest (and
    // copied the rest of the batch into its receive ring) although the kernel
    // then took the whole writev at once. A lone frame written at once is
    // judged now.
    if (!this.corked) this.pauseGuestIfHostBehind();
    if (this.opts.budget?.charge(this, data.length) === true && !this.guestPausedForBudget) {
      this.guestPausedForBudget = true;
      if (!this.guestPausedForHost) this.tcp?.pause();
    }
  }

  private corked = false;
  private readonly uncorkHost = (): void => this.uncorkNow();

  /**
   * End of the batch (host-write-batch.ts calls it) or of the turn: one
   * writev of what the cork held. Whatever the kernel did not take stays in
   * the socket's queue; past the flow buffer the guest side is paused (see
   * pauseGuestIfHostBehind). So the host socket holds at most the flow buffer
   * plus one batch, and a batch is bounded by the receive window the stack
   * advertised.
   */
  uncorkNow(): void {
    this.corked = false;
    if (this.host.destroyed) return;
    this.host.uncork();
    this.pauseGuestIfHostBehind();
  }

  /**
   * Past the flow buffer (writableHighWaterMark) the guest side is paused
   * until 'drain' (write() returned false for those bytes, so 'drain' comes
   * once the queue is empty).
   */
  private pauseGuestIfHostBehind(): void {
    const host = this.host;
    if (host.writableLength >= host.writableHighWaterMark && !this.guestPausedForHost && !host.destroyed) {
      this.guestPausedForHost = true;
      this.tcp?.pause();
    }
  }

  private hostDrain(): void {
    if (!this.guestPausedForHost) return;
    this.guestPausedForHost = false;
    this.resumeGuest();
  }

  private guestEnd(): void {
    if (this.guestPausedForInspector || this.egressQueue !== undefined) {
      this.guestEndPending = true;
      return;
    }
    if (!this.host.destroyed) this.host.end();
  }

  // --- inspection ------------------------------------------------------------

  private apply(v: InspectVerdict): void {
    switch (v) {
      case 'pass':
        return;
      case 'hold':
        if (!this.guestPausedForInspector) {
          this.guestPausedForInspector = true;
          this.tcp?.pause();
        }
        return;
      case 'release':
        this.unhold();
        return;
      case 'done':
        this.inspector = undefined;
        this.unhold();
        return;
      case 'reset':
        this.inspector = undefined;
        this.destroy();
        return;
      case 'answer':
        this.refuseWithAnswer();
        return;
    }
  }

  private unhold(): void {
    if (!this.guestPausedForInspector) return;
    this.guestPausedForInspector = false;
    this.resumeGuest();
    if (this.guestEndPending) {
      this.guestEndPending = false;
      this.guestEnd();
    }
  }

  /**
   * The server still answers what it was sent before the refused request
   * (its writing side is ended, so it closes after that); then the guest
   * gets the refusal and a FIN. A server that does not finish within the
   * linger time is reset, and the guest with it.
   */
  private refuseWithAnswer(): void {
    const inspector = this.inspector!;
    this.inspector = undefined;
    this.guestRefused = true;
    this.guestPausedForInspector = false;
    this.guestEndPending = false;
    this.trailer = inspector.answer ?? undefined;
    this.tcp?.pause(); // nothing more is read from the guest
    if (!this.host.destroyed) this.host.end();
    this.lingerTimer = setTimeout(() => this.destroy(), inspector.lingerMs);
    this.lingerTimer.unref?.();
    if (this.hostEnded && this.held === undefined) this.endGuest();
  }

  private guestConnect(): void {
    if (this.guestConnected) return;
    this.guestConnected = true;
    this.opts.onConnected?.(this);
    if (this.tcp !== undefined) this.flushHeld();
  }

  private guestClosed(reason: TcpCloseReason): void {
    if (this.tcpClosed) return;
    this.tcpClosed = true;
    this.tcpCloseReason = reason;
    this.held = undefined;
    if (reason === 'closed') {
      // Both FINs were exchanged (so the host already sent its FIN): let the
      // host socket flush what it still buffers towards the server; it closes
      // by itself once its writing side has finished. Bytes the rate limit
      // still holds go first (egressWake ends the host after them).
      if (!this.host.destroyed && this.egressQueue === undefined) this.host.end();
    } else if (!this.host.destroyed && this.budgetCut) {
      // Cut by its budget: what was charged reaches the host, then FIN (see cutByBudget); its answers are read and dropped.
      this.host.end();
      this.host.resume();
      this.lingerTimer ??= setTimeout(() => this.host.resetAndDestroy(), BUDGET_LINGER_MS);
      this.lingerTimer.unref?.();
    } else if (!this.host.destroyed) {
      // The guest reset, timed out or refused: reset the host side too, so
      // its peer sees ECONNRESET rather than a clean end of stream.
      this.host.resetAndDestroy();
    }
    this.maybeFinished();
  }

  // --- host -> guest -------------------------------------------------------

  /**
   * Host bytes read into a buffer the caller reuses (the socket's `onread`
   * buffer): valid only during the call; whatever is kept is copied.
   */
  hostBytes(view: Uint8Array): void {
    this.releaseHostRead();
    this.hostData(view, true);
  }

  /** The flow table sized this pipe's next host read at `bytes` on the budget's room: hold that room until the read lands. */
  reserveHostRead(bytes: number): void {
    this.releaseHostRead();
    if (this.opts.budget === undefined || this.finished) return;
    this.opts.budget.reserve(bytes);
    this.readReserved = bytes;
  }

  private readReserved = 0;

  private releaseHostRead(): void {
    if (this.readReserved === 0) return;
    this.opts.budget?.release(this.readReserved);
    this.readReserved = 0;
  }

  private hostData(chunk: Uint8Array, reused: boolean): void {
    if (this.tcpClosed) return;
    if (this.inspector?.watchingHost === true) {
      this.apply(this.inspector.host(chunk, this.forwardToHost));
      if (this.tcpClosed) return;
    }
    if (this.tcp === undefined || !this.guestConnected || this.held !== undefined) {
      // Not writable yet: keep this one chunk and stop reading.
      this.held = this.held === undefined ? (reused ? Buffer.from(chunk) : chunk) : concat(this.held, chunk);
      this.host.pause();
      return;
    }
    // The send ring copies what it takes.
    const taken = this.writeToGuest(chunk);
    if (taken < chunk.length && !this.tcpClosed) {
      const rest = chunk.subarray(taken);
      this.held = reused ? Buffer.from(rest) : rest;
      this.host.pause();
    } else if (reused && !this.tcpClosed && this.tcp.writableSpace < chunk.length && this.tcp.waitForRoom?.() === true) {
      // The next read from the shared buffer may not fit: stop reading now
      // rather than copy its rest aside (onDrain resumes, as after a short write).
      this.host.pause();
    }
    if (this.opts.budget?.charge(this, chunk.length) === true && !this.hostPausedForBudget) {
      this.hostPausedForBudget = true;
      this.host.pause();
    }
  }

  /** The flow's first short host read was probed for a FIN behind it. */
  private probedEnd = false;

  /**
   * The host read just handed over did not fill its buffer. On the flow's
   * first one, look whether the server's FIN is already queued behind it
   * (host-eof-probe.ts): then the guest's FIN leaves in this turn, on the
   * data's segment, instead of in a frame of its own a turn later. Once per
   * flow: a flow that stays open pays one failed read, not one per exchange.
   */
  afterShortRead(): void {
    if (this.probedEnd) return;
    this.probedEnd = true;
    // Only while everything read went to the guest and reading goes on: a held chunk or a pause must keep the FIN behind it.
    if (this.tcpClosed || this.hostEnded || this.held !== undefined || this.hostPausedForBudget || this.host.isPaused()) return;
    // At most what the guest's send ring and the buffer budget take whole (hostReadRoom): the probe adds nothing to what may be held.
    const r = probeHostEnd(this.host, this.hostReadRoom);
    if (r.kind === 'end') this.hostEnd();
    else if (r.kind === 'bytes') this.hostData(r.bytes, true);
    else if (r.kind === 'error') this.host.destroy(r.error);
  }

  private guestDrain(): void {
    this.flushHeld();
  }

  /**
   * Writes host bytes to the guest's send ring: at most what the ingress
   * rate limit allows now (when that is what stops it, the pipe waits for
   * the limiter; when the ring is full, for onDrain) and what the budget
   * allows (when it runs out: cut). Returns how many were taken.
   */
  private writeToGuest(bytes: Uint8Array): number {
    const tcp = this.tcp!;
    const limiter = this.opts.rate?.ingress;
    const meter = this.opts.meter;
    if (limiter === undefined && meter === undefined) {
      const taken = tcp.write(bytes);
      this.bytesToGuest += taken;
      return taken;
    }
    // Offered: what the rate and the budget allow now; charged: only what the send ring took (the rest stays held).
    let n = bytes.length;
    if (limiter !== undefined) {
      n = Math.min(n, limiter.allowance());
      if (n < bytes.length && n < tcp.writableSpace) limiter.wait(this.ingressWake);
    }
    if (meter !== undefined) n = Math.min(n, meter.remaining('ingress'));
    const taken = n > 0 ? tcp.write(n < bytes.length ? bytes.subarray(0, n) : bytes) : 0;
    limiter?.spend(taken);
    if (meter !== undefined && taken > 0) meter.charge(taken, 'ingress');
    this.bytesToGuest += taken;
    if (meter?.ended === true || (meter !== undefined && n < bytes.length && meter.remaining('ingress') === 0)) this.cutByBudget();
    return taken;
  }

  private readonly ingressWake = (): void => {
    if (!this.finished) this.flushHeld();
  };

  /** Writes held bytes to the guest; resumes the host (or sends FIN) once nothing is held. */
  private flushHeld(): void {
    const tcp = this.tcp;
    if (tcp === undefined || this.tcpClosed || !this.guestConnected) return;
    if (this.held !== undefined) {
      const taken = this.writeToGuest(this.held);
      if (this.tcpClosed) return;
      if (taken < this.held.length) {
        this.held = this.held.subarray(taken);
        return;
      }
      this.held = undefined;
    }
    if (this.hostEnded) this.endGuest();
    else if (!this.host.destroyed && !this.hostPausedForBudget) this.host.resume();
  }

  private hostEnd(): void {
    this.hostEnded = true;
    if (this.held === undefined && this.guestConnected) this.endGuest();
  }

  private endGuest(): void {
    if (this.guestEndSent || this.tcpClosed || this.tcp === undefined) return;
    if (this.trailer !== undefined) {
      // A refusal's answer goes after the host's last byte, then the FIN (flushHeld comes back here).
      this.held = this.trailer;
      this.trailer = undefined;
      this.flushHeld();
      return;
    }
    this.guestEndSent = true;
    this.tcp.end();
  }

  private hostClose(): void {
    this.hostClosed = true;
    // A host socket that closes without having ended cleanly (error, reset,
    // destroyed while data was pending) resets the guest side.
    if (!this.tcpClosed) {
      const clean = this.hostError === undefined && this.hostEnded;
      if (!clean) this.abortGuest();
      else if (this.held === undefined) this.endGuest();
    }
    this.maybeFinished();
  }

  private abortGuest(): void {
    if (this.tcpClosed || this.tcp === undefined) return;
    this.tcp.abort();
    // abort() is followed by onClose('aborted'); in case the stack does not
    // call back synchronously, treat the guest side as gone now.
    this.guestClosed('aborted');
  }

  private maybeFinished(): void {
    if (this.finished || !this.tcpClosed || !this.hostClosed) return;
    this.finished = true;
    if (this.lingerTimer !== undefined) clearTimeout(this.lingerTimer);
    this.opts.rate?.egress?.cancel(this.egressWake);
    this.opts.rate?.ingress?.cancel(this.ingressWake);
    this.opts.meter?.close();
    this.egressQueue = undefined;
    this.releaseHostRead();
    this.opts.budget?.remove(this);
    this.opts.onFinished(this, this.hostError !== undefined ? 'host-error' : (this.tcpCloseReason ?? 'aborted'));
  }
}

function concat(a: Uint8Array, b: Uint8Array): Buffer {
  return Buffer.concat([a, b]);
}
