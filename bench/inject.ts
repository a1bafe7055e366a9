/**
 * Credential injection: what an intercepted connection costs against a
 * direct one, on loopback (one process: servers, Moat's interceptor and
 * clients alike).
 *
 *  direct       client --TLS--> upstream
 *  relay        client --TLS through a plain TCP relay--> upstream (what an
 *               allowed, unintercepted flow is: bytes piped, TLS end to end)
 *  intercepted  client --TLS (Moat's leaf)--> Injector --TLS--> upstream,
 *               every request parsed, its Authorization rewritten, the
 *               response masked
 *
 *  latency      sequential GETs (13-byte body) on one kept-alive HTTP/1.1
 *               connection: median microseconds per request
 *  throughput   one GET of BULK_MIB MiB: MiB/s
 *
 *   npm run build && node dist/bench/inject.js [--runs 5] [--requests 2000] [--mib 256]
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { Agent, request } from 'node:https';
import { createServer as createHttpsServer } from 'node:https';
import { connect, createServer as createNetServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { loadOrCreateCa } from '../src/inject/ca.js';
import { LeafCertificates } from '../src/inject/certs.js';
import { Injector } from '../src/inject/interceptor.js';
import { InjectRules, parseInjectRule, parseSecret } from '../src/inject/secrets.js';

const { values } = parseArgs({ options: { runs: { type: 'string', default: '5' }, requests: { type: 'string', default: '2000' }, mib: { type: 'string', default: '256' } } });
const RUNS = Number(values.runs);
const REQUESTS = Number(values.requests);
const BULK_MIB = Number(values.mib);
const HOST = 'bench.test';

const dirs = [mkdtempSync(join(tmpdir(), 'moat-bench-inject-')), mkdtempSync(join(tmpdir(), 'moat-bench-inject-'))];
const upCa = loadOrCreateCa(dirs[0]!);
const moatCa = loadOrCreateCa(dirs[1]!);
const upLeaves = new LeafCertificates(upCa);
const CHUNK = Buffer.alloc(64 * 1024, 0x61);

const listen = (s: Server): Promise<number> => new Promise((r) => s.listen(0, '127.0.0.1', () => r((s.address() as { port: number }).port)));

async function main(): Promise<void> {
  const upstream = createHttpsServer({ SNICallback: (n, cb) => cb(null, upLeaves.contextFor(n)), keepAlive: true }, (req, res) => {
    if (req.url === '/bulk') {
      res.writeHead(200, { 'content-length': BULK_MIB * 1024 * 1024 });
      let left = BULK_MIB * 16;
      const pump = (): void => {
        while (left > 0) {
          left--;
          if (!res.write(CHUNK)) return void res.once('drain', pump);
        }
        res.end();
      };
      pump();
      return;
    }
    res.writeHead(200, { 'content-length': 13 });
    res.end('hello, world\n');
  });
  const upPort = await listen(upstream as unknown as Server);
  const dial = (): Promise<Socket> =>
    new Promise((resolve, reject) => {
      const s = connect(upPort, '127.0.0.1', () => resolve(s));
      s.once('error', reject);
    });
  const relay = createNetServer((c) => {
    void dial().then((u) => {
      c.pipe(u);
      u.pipe(c);
      c.on('error', () => u.destroy());
      u.on('error', () => c.destroy());
    });
  });
  const relayPort = await listen(relay);
  const secret = parseSecret('api=env:X', { readEnv: () => 'sk-bench-value-0123456789', readFile: () => '' }) as Exclude<ReturnType<typeof parseSecret>, string>;
  const rule = parseInjectRule(`${HOST}:${upPort} Authorization: Bearer \${api}`, new Map([['api', secret]])) as Exclude<ReturnType<typeof parseInjectRule>, string>;
  const injector = new Injector({ secrets: [secret], rules: new InjectRules([rule]), stateDir: dirs[1]!, upstreamCa: upCa.certPem }, moatCa);
  const front = createNetServer((guest) => {
    guest.on('error', () => undefined);
    void (async () => {
      const up = await injector.connectUpstream(await dial(), HOST, ['http/1.1']);
      injector.serve(guest, up, { host: HOST, port: upPort, dial }, { injected: () => undefined, refused: () => undefined, closed: () => undefined });
    })();
  });
  const frontPort = await listen(front);

  const modes = [
    { name: 'direct', port: upPort, ca: upCa.certPem },
    { name: 'relay', port: relayPort, ca: upCa.certPem },
    { name: 'intercepted', port: frontPort, ca: moatCa.certPem },
  ];
  const results: Record<string, { lat: number[]; tput: number[] }> = {};
  for (let run = 0; run < RUNS; run++) {
    for (const m of modes) {
      const agent = new Agent({ keepAlive: true, maxSockets: 1, ca: m.ca, servername: HOST });
      const get = (path: string, sink = false): Promise<number> =>
        new Promise((resolve, reject) => {
          const req = request({ host: '127.0.0.1', port: m.port, path, agent, servername: HOST, headers: { host: `${HOST}:${upPort}`, authorization: 'Bearer moat-secret-api' } }, (res) => {
            let n = 0;
            res.on('data', (c: Buffer) => (n += c.length));
            res.on('end', () => resolve(n));
            void sink;
          });
          req.on('error', reject);
          req.end();
        });
      for (let i = 0; i < 100; i++) await get('/small'); // warm: TLS, leaf, JIT
      const t0 = process.hrtime.bigint();
      for (let i = 0; i < REQUESTS; i++) await get('/small');
      const lat = Number(process.hrtime.bigint() - t0) / 1000 / REQUESTS;
      const t1 = process.hrtime.bigint();
      const bytes = await get('/bulk', true);
      const secs = Number(process.hrtime.bigint() - t1) / 1e9;
      agent.destroy();
      (results[m.name] ??= { lat: [], tput: [] }).lat.push(lat);
      results[m.name]!.tput.push(bytes / 1048576 / secs);
    }
  }
  const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
  const d = results['direct']!;
  console.log(`credential injection on loopback, ${RUNS} runs (medians), ${REQUESTS} sequential requests, ${BULK_MIB} MiB bulk`);
  console.log('mode         µs/request  added µs   MiB/s   vs direct');
  for (const m of modes) {
    const r = results[m.name]!;
    const lat = median(r.lat);
    const tput = median(r.tput);
    console.log(`${m.name.padEnd(12)} ${lat.toFixed(0).padStart(10)} ${(lat - median(d.lat)).toFixed(0).padStart(9)} ${tput.toFixed(0).padStart(7)}   ${(tput / median(d.tput)).toFixed(2)}x`);
  }
  upstream.close();
  relay.close();
  front.close();
  for (const dir of dirs) rmSync(dir, { recursive: true, force: true });
  process.exit(0);
}

void main();
