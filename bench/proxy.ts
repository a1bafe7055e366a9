/**
 * `moat proxy` against a direct connection, side by side, on loopback.
 *
 *  throughput   one TCP stream writes BULK_MIB MiB to a sink server and waits
 *               for its byte count: direct, and through a CONNECT tunnel
 *               (the tunnel to bulk.test:9000 is allowed by a rule naming the
 *               port; its first bytes are peeked, then piped).
 *  keep-alive   short GET requests (a 13-byte body) over keep-alive
 *               connections, CONCURRENCY in flight for SECONDS: direct, and
 *               through the proxy as absolute-form requests (every request
 *               is decided by the policy, the upstream pooled per host).
 *  new conn     the same GET on a new connection each time: direct (TCP
 *               connect + request), and through the proxy (TCP connect,
 *               CONNECT, 200, request in the tunnel: admission + peek +
 *               upstream dial per request).
 *
 * The proxy is the built CLI in a child process (`moat proxy`, names from a
 * DNS server this program runs on 127.0.0.1); servers and clients run in
 * this process, for both columns alike. Medians of RUNS runs.
 *
 *   npm run bench:proxy                 # 5 runs
 *   node dist/bench/proxy.js --runs 3 --seconds 2 --mib 256
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { Agent, createServer as createHttpServer, request as httpRequest } from 'node:http';
import { connect, createServer as createNetServer, type Server, type Socket } from 'node:net';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { startTestUpstream } from '../test/src/allowlist-upstream.js';

const BULK = { name: 'bulk.test', address: '127.66.1.10', port: 9000 };
const SHORT = { name: 'short.test', address: '127.66.1.11', port: 8080 };

const { values } = parseArgs({
  options: {
    runs: { type: 'string', default: '5' },
    seconds: { type: 'string', default: '3' },
    mib: { type: 'string', default: '512' },
    concurrency: { type: 'string', default: '16' },
  },
});
const RUNS = Number(values.runs);
const SECONDS = Number(values.seconds);
const BULK_MIB = Number(values.mib);
const CONCURRENCY = Number(values.concurrency);

async function main(): Promise<void> {
  const closers: (() => Promise<void> | void)[] = [];
  try {
    const sink = createNetServer((s) => {
      let n = 0;
      s.on('data', (c: Buffer) => (n += c.length));
      s.on('end', () => s.end(`${n}\n`));
      s.on('error', () => s.destroy());
    });
    await listen(sink, BULK.address, BULK.port);
    closers.push(() => closeServer(sink));
    const body = 'hello, proxy\n';
    const web = createHttpServer((_req, res) => {
      res.writeHead(200, { 'content-type': 'text/plain', 'content-length': body.length });
      res.end(body);
    });
    web.keepAliveTimeout = 30_000;
    await listen(web, SHORT.address, SHORT.port);
    closers.push(() => {
      web.closeAllConnections();
      return closeServer(web);
    });
    const dns = await startTestUpstream({ [BULK.name]: { a: [BULK.address] }, [SHORT.name]: { a: [SHORT.address] } });
    closers.push(() => dns.close());

    const proxy = await startMoatProxy(dns.port);
    closers.push(() => {
      proxy.child.kill('SIGTERM');
    });

    const rows: { name: string; unit: string; direct: number[]; proxied: number[] }[] = [
      { name: 'throughput, 1 stream', unit: 'MiB/s', direct: [], proxied: [] },
      { name: `short GET, keep-alive, ${CONCURRENCY} in flight`, unit: 'req/s', direct: [], proxied: [] },
      { name: `short GET, new connection each, ${CONCURRENCY} in flight`, unit: 'req/s', direct: [], proxied: [] },
    ];
    for (let run = 0; run < RUNS; run++) {
      rows[0]!.direct.push(await bulk(() => connect(BULK.port, BULK.address)));
      rows[0]!.proxied.push(await bulk(() => tunnel(proxy, `${BULK.name}:${BULK.port}`)));
      rows[1]!.direct.push(await keepAliveRate(null));
      rows[1]!.proxied.push(await keepAliveRate(proxy));
      rows[2]!.direct.push(await newConnectionRate(() => connectReady(SHORT.port, SHORT.address), `http://${SHORT.address}:${SHORT.port}/`));
      rows[2]!.proxied.push(await newConnectionRate(() => tunnel(proxy, `${SHORT.name}:${SHORT.port}`), `http://${SHORT.name}:${SHORT.port}/`));
      process.stderr.write(`run ${run + 1}/${RUNS} done\n`);
    }

    console.log(`\nmoat proxy vs direct, loopback, median of ${RUNS} runs (node ${process.version}, ${BULK_MIB} MiB per stream, ${SECONDS} s per rate run)\n`);
    console.log(`| case | unit | direct | through moat proxy | proxy / direct |`);
    console.log(`|---|---|---:|---:|---:|`);
    for (const r of rows) {
      const d = median(r.direct);
      const p = median(r.proxied);
      console.log(`| ${r.name} | ${r.unit} | ${d.toFixed(0)} | ${p.toFixed(0)} | ${((p / d) * 100).toFixed(0)}% |`);
    }
  } finally {
    for (const c of closers.reverse()) await c();
  }
}

interface MoatProxy {
  child: ChildProcess;
  host: string;
  port: number;
}

async function startMoatProxy(dnsPort: number): Promise<MoatProxy> {
  const bin = fileURLToPath(new URL('../../bin/moat.mjs', import.meta.url));
  const child = spawn(
    process.execPath,
    [bin, 'proxy', '--listen', '127.0.0.1:0', '--allow', `${BULK.name}:${BULK.port}`, '--allow', `${SHORT.name}:${SHORT.port}`,
      '--resolver', `127.0.0.1:${dnsPort}`, '--admit-resolved', '127.0.0.0/8', '--log-level', 'warn', '--max-connections', '4096'],
    { stdio: ['ignore', 'pipe', 'inherit'] },
  );
  const addr = await new Promise<string>((resolve, reject) => {
    let out = '';
    child.stdout!.on('data', (c) => {
      out += String(c);
      const m = /export HTTP_PROXY=http:\/\/(\S+)/.exec(out);
      if (m) resolve(m[1]!);
    });
    child.once('exit', (code) => reject(new Error(`moat proxy exited with ${code}`)));
  });
  const colon = addr.lastIndexOf(':');
  return { child, host: addr.slice(0, colon), port: Number(addr.slice(colon + 1)) };
}

/** A socket through a CONNECT tunnel, once the 200 arrived. */
function tunnel(proxy: MoatProxy, target: string): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const s = connect(proxy.port, proxy.host);
    s.setNoDelay(true);
    let head = '';
    const onData = (c: Buffer): void => {
      head += c.toString('latin1');
      const end = head.indexOf('\r\n\r\n');
      if (end < 0) return;
      s.off('data', onData);
      if (!head.startsWith('HTTP/1.1 200')) return reject(new Error(`CONNECT ${target}: ${head.split('\r\n')[0]}`));
      if (end + 4 < head.length) s.unshift(Buffer.from(head.slice(end + 4), 'latin1'));
      resolve(s);
    };
    s.on('data', onData);
    s.once('error', reject);
    s.write(`CONNECT ${target} HTTP/1.1\r\nHost: ${target}\r\n\r\n`);
  });
}

function connectReady(port: number, host: string): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const s = connect(port, host, () => resolve(s));
    s.setNoDelay(true);
    s.once('error', reject);
  });
}

/** MiB/s for one stream of BULK_MIB MiB to the sink, until its byte count comes back. */
async function bulk(open: () => Socket | Promise<Socket>): Promise<number> {
  const s = await open();
  const chunk = Buffer.alloc(256 * 1024, 0x61); // 'a': not TLS, not HTTP — the tunnel's peek lets it through on a named port
  const total = BULK_MIB * 1024 * 1024;
  const started = process.hrtime.bigint();
  await new Promise<void>((resolve, reject) => {
    let sent = 0;
    let reply = '';
    s.on('data', (c: Buffer) => (reply += c.toString()));
    s.once('end', () => (Number(reply.trim()) === total ? resolve() : reject(new Error(`sink counted ${reply.trim()} of ${total}`))));
    s.once('error', reject);
    const pump = (): void => {
      while (sent < total) {
        sent += chunk.length;
        if (!s.write(chunk)) return void s.once('drain', pump);
      }
      s.end();
    };
    pump();
  });
  const seconds = Number(process.hrtime.bigint() - started) / 1e9;
  s.destroy();
  return total / 1048576 / seconds;
}

/** Requests/s for short keep-alive GETs, direct or as absolute-form requests through the proxy. */
async function keepAliveRate(proxy: MoatProxy | null): Promise<number> {
  const agent = new Agent({ keepAlive: true, maxSockets: CONCURRENCY });
  const options = proxy === null
    ? { host: SHORT.address, port: SHORT.port, path: '/', agent }
    : { host: proxy.host, port: proxy.port, path: `http://${SHORT.name}:${SHORT.port}/`, headers: { host: `${SHORT.name}:${SHORT.port}` }, agent };
  const one = (): Promise<void> =>
    new Promise((resolve, reject) => {
      const req = httpRequest(options, (res) => {
        if (res.statusCode !== 200) reject(new Error(`status ${res.statusCode}`));
        res.resume();
        res.on('end', () => resolve());
      });
      req.once('error', reject);
      req.end();
    });
  const n = await forSeconds(one);
  agent.destroy();
  return n;
}

/** Requests/s when every GET opens its own connection (and, through the proxy, its own tunnel). */
async function newConnectionRate(open: () => Promise<Socket>, url: string): Promise<number> {
  const u = new URL(url);
  const request = `GET / HTTP/1.1\r\nHost: ${u.host}\r\nConnection: close\r\n\r\n`;
  const one = async (): Promise<void> => {
    const s = await open();
    await new Promise<void>((resolve, reject) => {
      let got = '';
      s.on('data', (c: Buffer) => (got += c.toString('latin1')));
      s.once('end', () => (got.startsWith('HTTP/1.1 200') ? resolve() : reject(new Error(`got ${got.slice(0, 40)}`))));
      s.once('error', reject);
      s.write(request);
    });
    s.destroy();
  };
  return forSeconds(one);
}

/** Runs `one` with CONCURRENCY in flight for SECONDS; returns completions per second. */
async function forSeconds(one: () => Promise<void>): Promise<number> {
  const deadline = Date.now() + SECONDS * 1000;
  let done = 0;
  const started = process.hrtime.bigint();
  await Promise.all(
    Array.from({ length: CONCURRENCY }, async () => {
      while (Date.now() < deadline) {
        await one();
        done++;
      }
    }),
  );
  return done / (Number(process.hrtime.bigint() - started) / 1e9);
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 === 1 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
}

function listen(server: Server, host: string, port: number): Promise<void> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => resolve());
  });
}

function closeServer(server: Server): Promise<void> {
  return new Promise((resolve) => server.close(() => resolve()));
}

await main();
