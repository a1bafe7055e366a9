/**
 * Loss recovery on the in-memory link (test/support/link.ts), simulated time:
 * a guest sends a small request, Moat answers with N full segments, and the
 * link loses exactly the chosen segments of the answer on their first
 * transmission (retransmissions get through). Prints how long the guest
 * waited for the whole answer, against the same transfer without loss.
 *
 * Loss on Moat's links comes in bursts (a full stream queue, a TAP that
 * drops a run of frames), so the patterns are bursts: 30 consecutive
 * segments in the middle, the last 3 (tail loss: nothing after them to
 * trigger duplicate ACKs), and the first of a 3-segment answer.
 *
 *   npm run build && node dist/bench/tcp-loss.js            # 2 ms RTT
 *   node dist/bench/tcp-loss.js --rtt 10
 *
 * The clock is a ManualClock: figures are exact and repeatable, and say
 * nothing about CPU cost (bench/netstack.ts measures that).
 */
import type { TcpSocket } from '../netstack/api.js';
import { GUEST_IP, HOST_ALIAS, Link } from '../test/support/link.js';
import { DEFAULT_STACK_CONFIG } from '../netstack/stack.js';

export interface LossCase {
  name: string;
  segments: number;
  /** Indexes (0-based, in first-transmission order) of the answer's segments to lose once. */
  lose: number[];
}

export const CASES: readonly LossCase[] = [
  { name: 'clean, 400 segments', segments: 400, lose: [] },
  { name: '30 consecutive lost (100..129 of 400)', segments: 400, lose: range(100, 130) },
  { name: 'last 3 lost (397..399 of 400)', segments: 400, lose: [397, 398, 399] },
  { name: 'first of a 3-segment answer lost', segments: 3, lose: [0] },
  { name: 'clean, 3 segments', segments: 3, lose: [] },
];

function range(from: number, to: number): number[] {
  return Array.from({ length: to - from }, (_, i) => from + i);
}

const MTU = 1500;
/** Payload per full segment with timestamps: 1500 - 20 (IPv4) - 20 (TCP) - 12 (timestamp option). */
const SEGMENT = 1448;

export interface LossResult {
  name: string;
  /** Milliseconds (simulated) from Moat's write to the guest holding every byte. */
  ms: number;
  /** Frames of the answer Moat sent, retransmissions included. */
  dataFrames: number;
  lost: number;
  complete: boolean;
}

/** One transfer: returns the time the guest waited for the answer. */
export function runCase(c: LossCase, rttMs: number): LossResult {
  const lose = new Set(c.lose);
  const firstSeen = new Set<number>();
  let index = 0;
  let dataFrames = 0;
  let lost = 0;
  let answerStarted = false;
  let moatSock: TcpSocket | undefined;
  let received = 0;
  let startedAt = 0;
  let doneAt = -1;
  const total = c.segments * SEGMENT;

  const link = new Link({
    mtu: MTU,
    seed: 1,
    faults: { drop: 0, duplicate: 0, reorder: 0, delayMs: rttMs / 2, jitterMs: 0 },
    dropIf: (to, frame) => {
      if (to !== 'guest' || !answerStarted) return false;
      const payload = tcpPayloadLength(frame);
      if (payload <= 0) return false;
      dataFrames++;
      const seq = tcpSeq(frame);
      if (firstSeen.has(seq)) return false; // a retransmission
      firstSeen.add(seq);
      if (!lose.has(index++)) return false;
      lost++;
      return true;
    },
    moatEvents: {
      onTcpSyn: (p) => {
        moatSock = p.accept({
          onData: () => {
            // The request arrived: answer it.
            answerStarted = true;
            startedAt = link.clock.now();
            moatSock!.write(new Uint8Array(total));
          },
          onEnd() {},
          onDrain() {},
          onClose() {},
        });
      },
      onUdp() {},
    },
    guestEvents: { onTcpSyn: (p) => p.ignore(), onUdp() {} },
    // The receiver's window is not what is measured: give it its full size from the start (as a
    // Linux guest's, grown long before), not the stack's small initial one.
    guestConfig: { tcp: { ...DEFAULT_STACK_CONFIG.tcp, recvWindowInitialBytes: DEFAULT_STACK_CONFIG.tcp.recvBufferBytes } },
  });
  const guest = link.guest.connectTcp(
    { from: GUEST_IP, fromPort: 40000, to: HOST_ALIAS, toPort: 80 },
    {
      onConnect: () => void guest.write(new Uint8Array(100)),
      onData: (d) => {
        received += d.length;
        if (received === total && doneAt < 0) doneAt = link.clock.now();
      },
      onEnd() {},
      onDrain() {},
      onClose() {},
    },
  );
  const complete = link.run(() => doneAt >= 0, 120_000);
  return { name: c.name, ms: complete ? doneAt - startedAt : NaN, dataFrames, lost, complete };
}

function tcpPayloadLength(frame: Uint8Array): number {
  if (frame.length < 54 || frame[12] !== 0x08 || frame[13] !== 0x00 || frame[23] !== 6) return -1;
  const ihl = (frame[14]! & 0x0f) * 4;
  const total = (frame[16]! << 8) | frame[17]!;
  const thl = (frame[14 + ihl + 12]! >> 4) * 4;
  return total - ihl - thl;
}

function tcpSeq(frame: Uint8Array): number {
  const t = 14 + (frame[14]! & 0x0f) * 4;
  return ((frame[t + 4]! << 24) | (frame[t + 5]! << 16) | (frame[t + 6]! << 8) | frame[t + 7]!) >>> 0;
}

function main(): void {
  const i = process.argv.indexOf('--rtt');
  const rtt = i > 0 ? Number(process.argv[i + 1]) : 2;
  console.log(`loss recovery on the in-memory link, RTT ${rtt} ms, MTU ${MTU}, simulated time`);
  for (const c of CASES) {
    const r = runCase(c, rtt);
    const rtts = r.ms / rtt;
    console.log(
      `${r.name.padEnd(42)} ${r.complete ? `${r.ms.toFixed(1).padStart(7)} ms = ${rtts.toFixed(1).padStart(5)} RTT` : 'did not complete'}` +
        `  (${r.dataFrames} data frames, ${r.lost} lost)`,
    );
  }
}

if (import.meta.url === `file://${process.argv[1]}`) main();
