/**
 * Request/response through two Stacks joined in memory (test/support/link.ts,
 * as bench/netstack.ts): a guest opens CONNS connections one after another
 * and sends EXCHANGES 64-byte requests on each, which Moat's side echoes.
 * Prints the CPU (user + system, every thread: V8's compiler threads too) per
 * exchange of both stacks together, per connection and per 2,000 exchanges.
 *
 * What it shows: the steady cost of the stack per exchange (no I/O), and how
 * long the JIT takes to settle. The first connections run their first few
 * thousand exchanges at many times the steady cost (interpreted and
 * baseline code, optimisation, deoptimisation when a later connection takes
 * a path the first did not): a short benchmark run on a fresh Moat measures
 * part of that.
 *
 *   npm run bench:rr-mem -- [CONNS=8] [EXCHANGES=20000] [random|small|big]
 *
 * The last argument picks the initial sequence numbers of both sides: a fixed
 * mix below and above 2^30 (V8's small-integer bound), all small, or all
 * above 2^31.
 */
import type { TcpSocket } from '../netstack/api.js';
import { GUEST_IP, HOST_ALIAS, Link } from '../test/support/link.js';

const conns = Number(process.argv[2] ?? 8);
const per = Number(process.argv[3] ?? 20_000);
const isnMode = process.argv[4] ?? 'random';
const CHUNK = 2_000;
const MIXED_ISNS = [0x10000000, 0xf0000000, 0x20000000, 0x90000000, 0x30000000, 0xc0000000, 0x01000000, 0x70000000];
let k = 0;
const isn = (): number => (isnMode === 'small' ? 0x1000 + k++ * 7919 : isnMode === 'big' ? 0xf0000000 + k++ * 7919 : MIXED_ISNS[k++ % MIXED_ISNS.length]!);

let moatSide: TcpSocket | undefined;
const link = new Link({
  mtu: 65520,
  copyFrames: false,
  allocate: (size) => Buffer.allocUnsafe(size),
  isn: { moat: isn, guest: isn },
  moatEvents: {
    onTcpSyn: (p) => {
      moatSide = p.accept({ onData: (d) => void moatSide!.write(d), onEnd: () => {}, onDrain: () => {}, onClose: () => {} });
    },
    onUdp: () => {},
  },
  guestEvents: { onTcpSyn: (p) => p.refuse(), onUdp: () => {} },
});

const request = new Uint8Array(64).fill(0x72);
const cpuUs = (since: NodeJS.CpuUsage): number => {
  const d = process.cpuUsage(since);
  return d.user + d.system;
};
for (let c = 0; c < conns; c++) {
  let got = 0;
  let connected = false;
  const s = link.guest.connectTcp(
    { from: GUEST_IP, fromPort: 40_000 + c, to: HOST_ALIAS, toPort: 5201 },
    { onData: (d) => void (got += d.length), onEnd: () => {}, onDrain: () => {}, onClose: () => {}, onConnect: () => void (connected = true) },
  );
  if (!link.run(() => connected, 10_000)) throw new Error('rr-mem: handshake did not complete');
  const t0 = process.cpuUsage();
  let tc = process.cpuUsage();
  const chunks: string[] = [];
  for (let i = 0; i < per; i++) {
    if (i > 0 && i % CHUNK === 0) {
      chunks.push((cpuUs(tc) / CHUNK).toFixed(1));
      tc = process.cpuUsage();
    }
    const want = got + request.length;
    s.write(request);
    if (!link.run(() => got >= want, 10_000)) throw new Error('rr-mem: no echo');
  }
  console.log(`connection ${c}: ${(cpuUs(t0) / per).toFixed(2)} us CPU per exchange (both stacks); per ${CHUNK}: ${chunks.join(' ')}`);
}
