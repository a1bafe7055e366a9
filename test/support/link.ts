/**
 * Two Stacks joined by an in-memory Ethernet link that can drop, duplicate,
 * reorder and delay frames, on a ManualClock: the second rung of the testing
 * ladder, and the harness of bench/netstack.ts.
 *
 * "moat" is a Stack with the default gateway config. "guest" is a Stack
 * configured as the mirror image: it plays 192.168.127.2 (gatewayIp = the
 * guest address, with the guest's MAC) and treats Moat's host alias
 * 192.168.127.254 as its neighbour, so `guest.connectTcp({ from: .2, to: .254 })`
 * is the guest's active open into Moat, which sees an ordinary guest SYN.
 */
import type { OutputBatch, StackConfig, StackEvents } from '../../netstack/api.js';
import { ipv4, parseIPv6, type IPv6 } from '../../netstack/addr.js';
import { ManualClock } from '../../netstack/clock.js';
import { createStack, DEFAULT_STACK_CONFIG, type Stack } from '../../netstack/stack.js';
import { RX_GSO_TCP, RX_L4_CHECKSUM_OK } from '../../netstack/rx-marks.js';
import { prng } from './prng.js';

export { prng };

export const GUEST_IP = ipv4(192, 168, 127, 2);
export const HOST_ALIAS = ipv4(192, 168, 127, 254);
export const GUEST_MAC = 0x020000000002;

/**
 * The IPv6 mirror image: Moat has the default /64 (gateway ::1, host alias
 * ::fe); the guest stack plays ::2 of it, so `guest.connectTcp({ from:
 * GUEST_IP6, to: HOST_ALIAS6 })` is the guest's IPv6 open into Moat. Pass
 * LINK_IPV6.moat / .guest as moatConfig / guestConfig.
 */
export const PREFIX6 = parseIPv6('fd6d:6f61:7400::')!;
export const GUEST_IP6: IPv6 = parseIPv6('fd6d:6f61:7400::2')!;
export const HOST_ALIAS6: IPv6 = parseIPv6('fd6d:6f61:7400::fe')!;
export const LINK_IPV6: { moat: Partial<StackConfig>; guest: Partial<StackConfig> } = {
  moat: { ipv6: { prefix: PREFIX6, gatewayIp: parseIPv6('fd6d:6f61:7400::1')!, hostIp: HOST_ALIAS6, dnsServers: [] } },
  guest: { ipv6: { prefix: PREFIX6, gatewayIp: GUEST_IP6, hostIp: parseIPv6('fd6d:6f61:7400::fd')!, dnsServers: [] } },
};

export interface LinkFaults {
  /** Probability that a frame is lost. */
  drop: number;
  /** Probability that a frame is delivered twice. */
  duplicate: number;
  /** Probability that a frame is held back behind later ones. */
  reorder: number;
  /** Base one-way delay and extra random jitter, ms. */
  delayMs: number;
  jitterMs: number;
}

export const PERFECT_LINK: LinkFaults = { drop: 0, duplicate: 0, reorder: 0, delayMs: 0, jitterMs: 0 };

/** A real copy even of a Node Buffer (whose slice() is a view). */
function copyOf(frame: Uint8Array): Uint8Array {
  const c = new Uint8Array(frame.length);
  c.set(frame);
  return c;
}

interface InFlight {
  at: number;
  seq: number;
  to: 'moat' | 'guest';
  frame: Uint8Array;
}

export interface LinkOptions {
  faults?: LinkFaults;
  seed?: number;
  mtu?: number;
  moatConfig?: Partial<StackConfig>;
  guestConfig?: Partial<StackConfig>;
  moatEvents: Omit<StackEvents, 'onOutput'>;
  guestEvents: Omit<StackEvents, 'onOutput'>;
  /** Copy frames as they cross the link (needed when faults hold them; the bench may skip it). */
  copyFrames?: boolean;
  /** Staging-buffer allocator for both stacks (the bench passes Buffer.allocUnsafe, as the service does). */
  allocate?: (size: number) => Uint8Array;
  /** Pins each stack's initial sequence numbers (see StackOptions.isn). */
  isn?: { moat?: () => number; guest?: () => number };
  /** Loses exactly the frames it returns true for (before the random faults): scripted loss patterns. */
  dropIf?: (to: 'moat' | 'guest', frame: Uint8Array) => boolean;
  /** Sees every frame handed to the link, before faults: for traces and pcaps. */
  onFrame?: (to: 'moat' | 'guest', frame: Uint8Array, lost: boolean) => void;
  /**
   * Offloads both ways, as a TAP with --tap-offload: both stacks leave TCP
   * checksums partial and may send super-segments (set their tcp config:
   * checksumOffload, segmentOffloadBytes), and every TCP frame is delivered
   * with the marks the link would give it (checksum vouched for; GSO past the MTU).
   */
  offload?: boolean;
}

/** The marks a TAP with offloads gives each frame: IPv4 TCP frames have their checksum vouched for, and GSO past the MTU. */
function offloadMarks(frames: readonly Uint8Array[], mtu: number): number[] {
  return frames.map((f) => {
    const tcp = f.length >= 34 && f[12] === 0x08 && f[13] === 0x00 && f[23] === 6 && ((f[20]! & 0x3f) | f[21]!) === 0;
    if (!tcp) return 0;
    return RX_L4_CHECKSUM_OK | (f.length > mtu + 14 ? RX_GSO_TCP : 0);
  });
}

export class Link {
  readonly clock = new ManualClock(1_000);
  readonly moat: Stack;
  readonly guest: Stack;
  /** Frames handed to the link, frames lost on it. */
  sent = 0;
  lost = 0;
  private readonly queue: InFlight[] = [];
  private readonly deferred: (() => void)[] = [];
  private readonly rng: () => number;
  private readonly faults: LinkFaults;
  private readonly copyFrames: boolean;
  private readonly onFrame: LinkOptions['onFrame'];
  private readonly dropIf: LinkOptions['dropIf'];
  private readonly perfect: boolean;
  private toMoat: Uint8Array[] = [];
  private toGuest: Uint8Array[] = [];
  private toRelease: OutputBatch[] = [];
  private seq = 0;
  private readonly offload: boolean;
  private readonly mtu: number;

  constructor(opts: LinkOptions) {
    this.offload = opts.offload === true;
    this.mtu = opts.mtu ?? 1500;
    this.faults = opts.faults ?? PERFECT_LINK;
    this.rng = prng(opts.seed ?? 1);
    this.copyFrames = opts.copyFrames ?? true;
    this.onFrame = opts.onFrame;
    this.dropIf = opts.dropIf;
    const f = this.faults;
    this.perfect = f.drop === 0 && f.duplicate === 0 && f.reorder === 0 && f.delayMs === 0 && f.jitterMs === 0;
    const mtu = opts.mtu ?? 1500;
    const defer = (fn: () => void) => void this.deferred.push(fn);
    this.moat = createStack(
      { ...DEFAULT_STACK_CONFIG, mtu, ...opts.moatConfig },
      { ...opts.moatEvents, onOutput: (b) => this.carry(b, 'guest') },
      this.clock,
      defer,
      {
        allocate: opts.allocate,
        random: prng((opts.seed ?? 1) * 7 + 1),
        isn: opts.isn?.moat,
        // Offloads on, frames copied as they cross: Moat writes TCP payload from its send rings, as over a TAP (StackOptions.gatherPayload).
        ...(this.offload && this.copyFrames ? { syncOutput: true, gatherPayload: true } : {}),
      },
    );
    this.guest = createStack(
      {
        ...DEFAULT_STACK_CONFIG,
        mtu,
        gatewayIp: GUEST_IP,
        gatewayMac: GUEST_MAC,
        guestIp: HOST_ALIAS,
        hostIp: ipv4(192, 168, 127, 253),
        ...opts.guestConfig,
      },
      { ...opts.guestEvents, onOutput: (b) => this.carry(b, 'moat') },
      this.clock,
      defer,
      { allocate: opts.allocate, random: prng((opts.seed ?? 1) * 13 + 2), isn: opts.isn?.guest },
    );
  }

  private carry(batch: OutputBatch, to: 'moat' | 'guest'): void {
    const f = this.faults;
    if (this.perfect && this.onFrame === undefined && this.dropIf === undefined) {
      // No faults, no delay: hand the frames straight over (the bench's path,
      // so that it measures the stacks rather than this harness).
      const direct = to === 'moat' ? this.toMoat : this.toGuest;
      batch.forEachFrame((frame) => {
        this.sent++;
        direct.push(this.copyFrames ? copyOf(frame) : frame);
      });
      // Views into the batch are only read by the next input(): release after it.
      if (this.copyFrames) batch.release();
      else this.toRelease.push(batch);
      return;
    }
    batch.forEachFrame((frame) => {
      this.sent++;
      const lost = this.dropIf?.(to, frame) === true || (f.drop > 0 && this.rng() < f.drop);
      this.onFrame?.(to, frame, lost);
      if (lost) {
        this.lost++;
        return;
      }
      const copies = f.duplicate > 0 && this.rng() < f.duplicate ? 2 : 1;
      for (let i = 0; i < copies; i++) {
        let at = this.clock.now() + f.delayMs + (f.jitterMs > 0 ? this.rng() * f.jitterMs : 0);
        if (f.reorder > 0 && this.rng() < f.reorder) at += 1 + this.rng() * 5;
        // Frames wait on the link while the stack reuses its buffers: always copy them.
        this.queue.push({ at, seq: this.seq++, to, frame: copyOf(frame) });
      }
    });
    batch.release();
  }

  private deliver(toMoat: Uint8Array[], toGuest: Uint8Array[]): void {
    if (toMoat.length > 0) this.moat.input(toMoat, this.offload ? offloadMarks(toMoat, this.mtu) : undefined);
    if (toGuest.length > 0) this.guest.input(toGuest, this.offload ? offloadMarks(toGuest, this.mtu) : undefined);
  }

  /** Runs deferred flushes until none is left. */
  private runDeferred(): boolean {
    let ran = false;
    while (this.deferred.length > 0) {
      const fns = this.deferred.splice(0);
      for (const fn of fns) fn();
      ran = true;
    }
    return ran;
  }

  /**
   * Moves time and frames until `done()` holds or `maxMs` of simulated time
   * passed. Returns whether done() held. Bounded: never loops forever.
   */
  run(done: () => boolean, maxMs = 600_000, maxSteps = 2_000_000): boolean {
    const end = this.clock.now() + maxMs;
    for (let step = 0; ; step++) {
      if (step >= maxSteps) throw new Error(`link: no progress after ${maxSteps} steps at t=${this.clock.now()} with ${this.queue.length} frames in flight`);
      this.runDeferred();
      if (done()) return true;
      if (this.toMoat.length > 0 || this.toGuest.length > 0) {
        const toMoat = this.toMoat;
        const toGuest = this.toGuest;
        this.toMoat = [];
        this.toGuest = [];
        const done = this.toRelease;
        this.toRelease = [];
        this.deliver(toMoat, toGuest);
        for (const b of done) b.release();
        continue;
      }
      if (this.queue.length === 0) {
        const next = Math.min(this.moat.nextDeadline() ?? Infinity, this.guest.nextDeadline() ?? Infinity);
        if (next === Infinity || next > end) return done();
        if (next > this.clock.now()) this.clock.set(next);
        this.moat.advance();
        this.guest.advance();
        continue;
      }
      // Deliver everything due now, in arrival order, as one batch per side.
      let t = Infinity;
      for (const q of this.queue) if (q.at < t) t = q.at;
      const deadline = Math.min(this.moat.nextDeadline() ?? Infinity, this.guest.nextDeadline() ?? Infinity);
      if (deadline < t) t = deadline;
      if (t > end) return done();
      if (t > this.clock.now()) this.clock.set(t);
      const now = this.clock.now();
      const due = this.queue.filter((q) => q.at <= now).sort((a, b) => a.at - b.at || a.seq - b.seq);
      if (due.length > 0) {
        const rest = this.queue.filter((q) => q.at > now);
        this.queue.length = 0;
        this.queue.push(...rest);
        const toMoat = due.filter((q) => q.to === 'moat').map((q) => q.frame);
        const toGuest = due.filter((q) => q.to === 'guest').map((q) => q.frame);
        this.deliver(toMoat, toGuest);
      }
      this.moat.advance();
      this.guest.advance();
    }
  }
}
