/**
 * What "one connection, one name" costs on the byte path: a request body of
 * --mib MiB (64 KiB chunks, one Content-Length request) pushed through a
 * TcpPipe (src/nat/tcp-pipe.ts) to a sink on 127.0.0.1, with no inspector
 * (every flow that is not plain HTTP once its watch is done) and with the
 * FlowWatch an allowed plain-HTTP flow keeps for its whole life.
 *
 *   node dist/bench/flow-watch.js [--runs 5] [--mib 256]
 *
 * Prints MB/s per case, medians of --runs runs.
 */
import { createServer, connect, type AddressInfo, type Socket } from 'node:net';
import type { Egress } from '../src/egress/egress.js';
import { FlowWatch } from '../src/egress/flow-watch.js';
import { TcpPipe } from '../src/nat/tcp-pipe.js';
import { FakeTcpSocket } from '../test/src/nat-fake-stack.js';

const args = process.argv.slice(2);
const flag = (name: string, fallback: number): number => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? Number(args[i + 1]) : fallback;
};
const RUNS = flag('runs', 5);
const MIB = flag('mib', 256);
const CHUNK = 64 * 1024;

/** Just what FlowWatch reads from an Egress (it records nothing here: nothing is refused). */
const egress = {
  audit: false,
  options: { maxPeekBytes: 160 * 1024, refusalLingerMs: 5000 },
  policy: { ruleTexts: [] },
  recordBlock: () => 'bench',
} as unknown as Egress;

async function once(watched: boolean): Promise<number> {
  const total = MIB * 1024 * 1024;
  const head = Buffer.from(`POST /up HTTP/1.1\r\nHost: www.example.org\r\nContent-Length: ${total}\r\n\r\n`);
  let received = 0;
  let done: () => void = () => {};
  const finished = new Promise<void>((r) => (done = r));
  const sink = createServer((s) => {
    s.on('error', () => {});
    s.on('data', (d) => {
      received += d.length;
      if (received >= head.length + total) done();
    });
  });
  await new Promise<void>((r) => sink.listen(0, '127.0.0.1', r));
  const host: Socket = connect({ port: (sink.address() as AddressInfo).port, host: '127.0.0.1' });
  await new Promise<void>((r) => host.once('connect', () => r()));
  const pipe = new TcpPipe(host, { waitForConnect: false, onFinished: () => {}, ...(watched ? { inspector: new FlowWatch('http', egress, { dst: '192.0.2.1', port: 80 }) } : {}) });
  const tcp = new FakeTcpSocket({} as never, pipe.handlers, 1 << 20, true);
  pipe.bind(tcp);
  const chunk = Buffer.alloc(CHUNK, 0x61);
  const t0 = process.hrtime.bigint();
  tcp.guestSend(head);
  for (let sent = 0; sent < total; sent += CHUNK) {
    // The fake queues while the pipe has paused it (backpressure); wait for it to drain a little.
    while (tcp.queuedFromGuest > 4 * 1024 * 1024) await new Promise((r) => setImmediate(r));
    tcp.guestSend(chunk);
  }
  await finished;
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
  pipe.destroy();
  await new Promise<void>((r) => sink.close(() => r()));
  return total / seconds / 1e6;
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
}

const plain: number[] = [];
const watched: number[] = [];
for (let r = 0; r < RUNS; r++) {
  // Interleaved, so that machine load hits both alike.
  plain.push(await once(false));
  watched.push(await once(true));
}
console.log(`flow-watch bench: ${MIB} MiB request body in 64 KiB chunks through a TcpPipe to 127.0.0.1, medians of ${RUNS} runs (node ${process.version})`);
console.log(`no inspector               ${median(plain).toFixed(0).padStart(6)} MB/s`);
console.log(`FlowWatch (plain HTTP)     ${median(watched).toFixed(0).padStart(6)} MB/s  (${((median(watched) / median(plain)) * 100).toFixed(0)}% of it)`);
