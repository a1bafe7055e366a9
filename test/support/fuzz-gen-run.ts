/**
 * The frame-fuzz runs shared by the CI slice (test/netstack/fuzz-*.test.ts)
 * and `npm run fuzz` (the same files with FUZZ_FRAMES=1000000).
 *
 * FUZZ_FRAMES: frames per run (CI default below); FUZZ_SEED: replay a seed.
 */
import fc from 'fast-check';
import type { OutputBatch, PendingTcp, StackConfig, StackEvents } from '../../netstack/api.js';
import { ManualClock } from '../../netstack/clock.js';
import { createStack, DEFAULT_STACK_CONFIG, type Stack } from '../../netstack/stack.js';
import { emitEthernetHeader, ETHERTYPE_IPV4 } from '../../netstack/ethernet.js';
import { emitIpv4Header, IPPROTO_TCP } from '../../netstack/ipv4.js';
import { emitTcpHeader, TCP_ACK, TCP_RST, TCP_SYN } from '../../netstack/tcp/header.js';
import { GW_MAC } from './frames.js';
import { almostValidFrame, randomBytesFrame, type FuzzFrame } from './fuzz-gen.js';
import { GUEST_IP, GUEST_MAC, HOST_ALIAS, Link } from './link.js';
import { Endpoint, sha, streamBytes } from './link-scenario.js';
import { prng } from './prng.js';

export const FUZZ_SEED = Number(process.env.FUZZ_SEED ?? 9);
export function fuzzFrames(ciDefault: number): number {
  const n = Number(process.env.FUZZ_FRAMES ?? ciDefault);
  if (!Number.isInteger(n) || n <= 0) throw new Error(`FUZZ_FRAMES must be a positive integer, got ${process.env.FUZZ_FRAMES}`);
  return n;
}

/** A Moat stack with owner callbacks that do what the NAT does cheaply (refuse TCP, swallow UDP). */
export function bareStack(events: Partial<StackEvents> = {}, config: Partial<StackConfig> = {}): { stack: Stack; clock: ManualClock; runDeferred(): void; outFrames(): number } {
  const clock = new ManualClock(0);
  const deferred: (() => void)[] = [];
  let out = 0;
  const stack = createStack(
    { ...DEFAULT_STACK_CONFIG, ...config },
    {
      onTcpSyn: (p: PendingTcp) => p.refuse(),
      onUdp: () => {},
      onIcmp: () => {},
      ...events,
      onOutput: (b: OutputBatch) => {
        out += b.frameCount;
        b.release();
      },
    },
    clock,
    (fn) => deferred.push(fn),
    { random: prng(FUZZ_SEED) },
  );
  return {
    stack,
    clock,
    runDeferred: () => {
      while (deferred.length) deferred.shift()!();
    },
    outFrames: () => out,
  };
}

/** Lazily draws `total` values of `arb` in chunks (so that a million frames never sit in memory at once). */
export function* drawFrames(arb: fc.Arbitrary<FuzzFrame>, total: number, seed: number, chunk = 5_000): Generator<FuzzFrame> {
  let drawn = 0;
  for (let i = 0; drawn < total; i++) {
    const n = Math.min(chunk, total - drawn);
    for (const f of fc.sample(arb, { numRuns: n, seed: seed + i })) yield f;
    drawn += n;
  }
}

export interface InterleavedResult {
  injected: number;
  mustDropInjected: number;
  transfers: number;
  bytesEachWay: number;
  failures: string[];
  internalErrors: number;
  drops: Record<string, number>;
  moat: Stack;
  link: Link;
}

/**
 * Healthy TCP transfers between a guest stack and Moat (both directions,
 * byte-exact), one after the other, while every link step also hands Moat a
 * batch of garbage: one-field-wrong frames, random bytes, copies of the
 * healthy connection's own frames with one byte flipped (checksum left
 * wrong), verbatim replays of its old frames, and blind RST/SYN at its
 * four-tuple with random sequence numbers (RFC 5961: challenge ACK, never a
 * reset). Runs until `frames` garbage frames were injected.
 */
export function runInterleaved(frames: number, seed: number, bytesEachWay = 256 * 1024): InterleavedResult {
  const rng = prng(seed);
  const garbage = drawFrames(fc.oneof({ weight: 4, arbitrary: almostValidFrame }, { weight: 1, arbitrary: randomBytesFrame }), frames, seed);
  /** Recent real frames from the guest to Moat (copies), for corrupted copies and replays. */
  const recent: Uint8Array[] = [];
  let injected = 0;
  let mustDropInjected = 0;
  let transfers = 0;
  const failures: string[] = [];

  let moatSide: Endpoint | undefined;
  const link = new Link({
    seed,
    onFrame: (to, frame) => {
      if (to !== 'moat' || frame.length < 54) return;
      if (recent.length < 64) recent.push(frame.slice());
      else recent[Math.floor(rng() * 64)] = frame.slice();
    },
    moatEvents: {
      onTcpSyn: (p) => {
        // Only the current healthy connection is accepted; fuzzed SYNs, and replayed SYNs of
        // earlier transfers (which reopen their TIME-WAIT four-tuple), are refused as a NAT would.
        if (p.syn.src !== GUEST_IP || p.syn.srcPort !== port || moatSide === undefined || moatSide.socket !== undefined) return p.refuse();
        moatSide.socket = p.accept(moatSide.handlers);
        moatSide.connected = true;
        moatSide.pump();
      },
      onUdp: () => {},
      onIcmp: () => {},
    },
    guestEvents: { onTcpSyn: (p) => p.refuse(), onUdp: () => {}, onIcmp: () => {} },
  });
  const moat = link.moat;
  let port = 40000;

  /** blindOk: the healthy connection is established on both sides (before that a spoofed SYN would simply be the first SYN). */
  const injectBatch = (tuplePort: number, blindOk: boolean) => {
    const batch: Uint8Array[] = [];
    const n = 4 + Math.floor(rng() * 12);
    for (let i = 0; i < n && injected < frames; i++) {
      const pick = rng();
      if (pick < 0.1 && recent.length > 0) {
        // A real segment of the healthy flow with one TCP byte flipped: the checksum no longer matches.
        const f = recent[Math.floor(rng() * recent.length)]!.slice();
        const at = 34 + Math.floor(rng() * (f.length - 34));
        f[at]! ^= 1 << Math.floor(rng() * 8);
        batch.push(f);
        mustDropInjected++;
      } else if (pick < 0.15 && recent.length > 0) {
        batch.push(recent[Math.floor(rng() * recent.length)]!.slice()); // an old duplicate
      } else if (pick < 0.2 && blindOk) {
        batch.push(blindSegment(tuplePort, rng));
      } else {
        const g = garbage.next();
        if (g.done) break;
        batch.push(g.value.frame);
        if (g.value.mustDrop) mustDropInjected++;
      }
      injected++;
    }
    if (batch.length > 0) moat.input(batch);
  };

  while (injected < frames) {
    port++;
    const up = streamBytes(seed * 31 + port, bytesEachWay);
    const down = streamBytes(seed * 37 + port, bytesEachWay);
    const guestSide = new Endpoint(up, 16 * 1024);
    moatSide = new Endpoint(down, 16 * 1024);
    const guestSocket = link.guest.connectTcp({ from: GUEST_IP, fromPort: port, to: HOST_ALIAS, toPort: 8080 }, guestSide.handlers);
    guestSide.socket = guestSocket;
    const current = moatSide;
    const ok = link.run(() => {
      if (guestSide.closed !== undefined && current.closed !== undefined) return true;
      injectBatch(port, current.socket?.state === 'ESTABLISHED' && guestSocket.state === 'ESTABLISHED');
      return false;
    }, 600_000);
    transfers++;
    const what = `transfer ${transfers} (port ${port})`;
    if (!ok) failures.push(`${what}: did not finish (guest ${guestSocket.state}, moat ${current.socket?.state})`);
    else {
      if (guestSide.closed !== 'closed' || current.closed !== 'closed') failures.push(`${what}: closed as ${guestSide.closed}/${current.closed}`);
      if (sha(current.receivedBytes()) !== sha(up)) failures.push(`${what}: guest->moat bytes differ (${current.received}/${up.length})`);
      if (sha(guestSide.receivedBytes()) !== sha(down)) failures.push(`${what}: moat->guest bytes differ (${guestSide.received}/${down.length})`);
    }
    if (failures.length > 0) break;
  }
  return {
    injected,
    mustDropInjected,
    transfers,
    bytesEachWay,
    failures,
    internalErrors: moat.stats.drops['stack:internal-error'] ?? 0,
    drops: moat.stats.drops,
    moat,
    link,
  };
}

/** RST or SYN at the healthy four-tuple with a random sequence number: what a blind off-path attacker can send. */
function blindSegment(port: number, rng: () => number): Uint8Array {
  const seq = Math.floor(rng() * 0x100000000) >>> 0;
  const flags = rng() < 0.5 ? TCP_RST : rng() < 0.5 ? TCP_SYN : TCP_RST | TCP_ACK;
  return tcpFrameFrom(seq, flags, port);
}

function tcpFrameFrom(seq: number, flags: number, port: number): Uint8Array {
  const f = new Uint8Array(14 + 20 + 20);
  emitEthernetHeader(f, 0, GW_MAC, GUEST_MAC, ETHERTYPE_IPV4);
  emitIpv4Header(f, 14, { src: GUEST_IP, dst: HOST_ALIAS, protocol: IPPROTO_TCP, payloadLength: 20, id: 7 });
  emitTcpHeader(f, 34, { srcPort: port, dstPort: 8080, seq, ack: flags & TCP_ACK ? seq ^ 0x5a5a5a5a : 0, flags, window: 1000 }, GUEST_IP, HOST_ALIAS, 0);
  return f;
}
