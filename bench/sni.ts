/**
 * The flow wall's per-connection cost, in process: what Moat spends on a
 * connection before it dials anything.
 *
 *  peek      NamePeeker over each real ClientHello fixture (test/fixtures/
 *            clienthello/), fed whole, and an HTTP/1.1 request head: the
 *            work done once per held connection.
 *  peek-split  the same hellos cut into 100-byte chunks (a hello spread over
 *            several TCP segments: the buffering path).
 *  decide    EgressPolicy.decide() for a SYN (no name yet) and again with
 *            the peeked name, over a 500-rule allowlist (exact hosts,
 *            wildcards, CIDRs) and a mix of allowed and refused flows.
 *  watch     what a piped flow pays afterwards (one connection, one name):
 *            HttpRequestStream over kept-alive requests (per request), over
 *            a request body in 64 KiB chunks (ns per chunk), and
 *            TlsHandshakeWatcher over a hello + the server's answer (per
 *            connection; then it stops).
 *  quic      QuicInitialReader over each captured client flight (test/
 *            fixtures/quic/: chromium's 2-packet post-quantum hello, ngtcp2),
 *            one datagram at a time with node:crypto's AES-GCM/ECB and HMAC
 *            (key derivation, header protection, decryption, reassembly,
 *            the hello parse): the work done once per UDP flow held for its
 *            name, in µs per flow.
 *
 * Prints operations per second and ns per operation, medians of --runs runs.
 *
 *   node dist/bench/sni.js [--runs 5] [--ops 200000]
 */
import { readdirSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseRules } from '../dns/rules.js';
import { HttpRequestStream } from '../sni/http-stream.js';
import { NamePeeker } from '../sni/peek.js';
import { TlsHandshakeWatcher } from '../sni/tls-watch.js';
import { PinTable } from '../sni/pins.js';
import { EgressPolicy, type FlowInput } from '../sni/policy.js';
import { QuicInitialReader } from '../sni/quic-initial.js';
import { nodeQuicCrypto } from '../src/egress/quic-crypto.js';

const args = process.argv.slice(2);
const flag = (name: string, fallback: number): number => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? Number(args[i + 1]) : fallback;
};
const RUNS = flag('runs', 5);
const OPS = flag('ops', 200_000);

function repoRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  while (!readdirSync(dir).includes('package.json')) dir = dirname(dir);
  return dir;
}

const fixtureDir = join(repoRoot(), 'test', 'fixtures', 'clienthello');
const hellos = readdirSync(fixtureDir)
  .filter((f) => f.endsWith('.bin'))
  .map((f) => new Uint8Array(readFileSync(join(fixtureDir, f))));
const httpHead = new TextEncoder().encode('GET /index.html HTTP/1.1\r\nHost: www.example.org\r\nUser-Agent: curl/8.5.0\r\nAccept: */*\r\n\r\n');

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
}

/** Runs `body(i)` OPS times per run; returns the median ns per op. */
function measure(body: (i: number) => void, ops = OPS): number {
  const ns: number[] = [];
  for (let r = 0; r < RUNS; r++) {
    const t0 = process.hrtime.bigint();
    for (let i = 0; i < ops; i++) body(i);
    ns.push(Number(process.hrtime.bigint() - t0) / ops);
  }
  return median(ns);
}

let sink = 0;
const inputs = [...hellos, httpHead];
const peekWhole = measure((i) => {
  const r = new NamePeeker().push(inputs[i % inputs.length]!);
  if (r.kind === 'name') sink += r.name?.length ?? 0;
});
const peekSplit = measure((i) => {
  const hello = hellos[i % hellos.length]!;
  const p = new NamePeeker();
  for (let off = 0; off < hello.length; off += 100) {
    const r = p.push(hello.subarray(off, off + 100));
    if (r.kind !== 'need-more') {
      if (r.kind === 'name') sink += r.name?.length ?? 0;
      break;
    }
  }
});

// 500 rules: 300 exact hosts, 150 wildcards, 50 CIDRs.
const ruleTexts: string[] = [];
for (let i = 0; i < 300; i++) ruleTexts.push(`host${i}.example${i % 17}.com`);
for (let i = 0; i < 150; i++) ruleTexts.push(`*.cdn${i}.example.net`);
for (let i = 0; i < 50; i++) ruleTexts.push(`10.${i}.0.0/16`);
const policy = EgressPolicy.compile({ rules: parseRules(ruleTexts), guestSubnet: { network: '192.168.127.0', prefix: 24 }, hostAlias: '192.168.127.254' });
const pins = new PinTable(() => performance.now());
const flows: FlowInput[] = [];
for (let i = 0; i < 1024; i++) {
  const dst = `203.0.${i % 256}.${(i * 7) % 256}`;
  const name = i % 3 === 0 ? `host${i % 300}.example${i % 300 % 17}.com` : i % 3 === 1 ? `img${i}.cdn${i % 150}.example.net` : `evil${i}.example.org`;
  flows.push({ proto: 'tcp', dst, port: 443 });
  flows.push({ proto: 'tcp', dst, port: 443, peeked: { via: 'sni', name } });
  flows.push({ proto: 'tcp', dst: `10.${i % 60}.1.1`, port: 22 });
}
const decide = measure((i) => {
  const d = policy.decide(flows[i % flows.length]!, pins);
  if (d.verdict === 'allow') sink++;
});

// One connection, one name: the watch after the pipe starts.
const keptAlive = new TextEncoder().encode('GET /index.html HTTP/1.1\r\nHost: www.example.org\r\nUser-Agent: curl/8.5.0\r\nAccept: */*\r\n\r\n'.repeat(64));
const discard = (b: Uint8Array): void => {
  sink += b.length;
};
const watchRequests = measure(() => {
  new HttpRequestStream().push(keptAlive, discard);
}, Math.max(1, Math.floor(OPS / 64))) / 64;
const BODY_CHUNK = new Uint8Array(64 * 1024);
const BODY_CHUNKS = 256; // 16 MiB per op
const bodyHead = new TextEncoder().encode(`POST /up HTTP/1.1\r\nHost: www.example.org\r\nContent-Length: ${BODY_CHUNK.length * BODY_CHUNKS}\r\n\r\n`);
const bodyOps = Math.max(1, Math.floor(OPS / 10_000));
const bodyNs: number[] = [];
for (let r = 0; r < RUNS; r++) {
  const t0 = process.hrtime.bigint();
  for (let i = 0; i < bodyOps; i++) {
    const s = new HttpRequestStream();
    s.push(bodyHead, discard);
    for (let c = 0; c < BODY_CHUNKS; c++) s.push(BODY_CHUNK, discard);
  }
  bodyNs.push(Number(process.hrtime.bigint() - t0) / (bodyOps * BODY_CHUNKS * BODY_CHUNK.length));
}
const watchBodyNsPerByte = median(bodyNs);
// A ServerHello record (not an HRR): the watch ends there.
const serverHello = Uint8Array.from([22, 3, 3, 0, 42, 2, 0, 0, 38, 3, 3, ...new Array<number>(32).fill(0x42), 0]);
const watchTls = measure((i) => {
  const w = new TlsHandshakeWatcher();
  w.fromClient(hellos[i % hellos.length]!);
  if (w.fromServer(serverHello) === 'done') sink++;
});

// QUIC: a whole Initial flight per op (each datagram as the NAT hands it over).
const quicDir = join(repoRoot(), 'test', 'fixtures', 'quic');
const quicFlights = readdirSync(quicDir)
  .filter((f) => f.endsWith('.json'))
  .sort()
  .map((f) => {
    const meta = JSON.parse(readFileSync(join(quicDir, f), 'utf8')) as { datagrams: string[] };
    return { name: f.slice(0, -5), datagrams: meta.datagrams.map((h) => new Uint8Array(Buffer.from(h, 'hex'))) };
  });
const QUIC_OPS = Math.max(1, Math.floor(OPS / 20));
const readFlight = (datagrams: readonly Uint8Array[]): void => {
  const r = new QuicInitialReader(nodeQuicCrypto);
  for (const d of datagrams) {
    const x = r.push(d);
    if (x.kind === 'found') sink += x.sni?.length ?? 0;
  }
};
const quicPerFlight = quicFlights.map((f) => ({ name: f.name, packets: f.datagrams.length, ns: measure(() => readFlight(f.datagrams), QUIC_OPS) }));

const row = (what: string, ns: number): string => `${what.padEnd(34)} ${(1e9 / ns).toFixed(0).padStart(10)} ops/s  ${ns.toFixed(0).padStart(6)} ns/op`;
console.log(`sni bench: medians of ${RUNS} runs x ${OPS} ops (node ${process.version})`);
console.log(row(`peek, whole (${hellos.length} hellos + 1 head)`, peekWhole));
console.log(row('peek, hellos in 100-byte chunks', peekSplit));
console.log(row('decide (SYN, peeked name, IP rule)', decide));
console.log(row('watch: a kept-alive request (64/op)', watchRequests));
// A Content-Length body is skipped by counting, so the cost is per chunk, not per byte: print ns per 64 KiB chunk
// (a GB/s figure of a constant per chunk would only say how large the chunk was).
console.log(`${'watch: request body, per 64 KiB chunk'.padEnd(34)} ${(watchBodyNsPerByte * BODY_CHUNK.length).toFixed(0).padStart(10)} ns/chunk`);
console.log(row('watch: TLS hello + ServerHello', watchTls));
for (const q of quicPerFlight) {
  console.log(`${`quic: ${q.name} Initial flight (${q.packets} pkt)`.padEnd(34)} ${(1e9 / q.ns).toFixed(0).padStart(10)} flows/s ${(q.ns / 1000).toFixed(1).padStart(6)} µs/flow`);
}
if (sink < 0) console.log(sink); // keep the results alive
