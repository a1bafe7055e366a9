/**
 * One connection, one name, end to end (issue 14, findings 6 and 7; the
 * Acceptance bullets "a second Host on a kept-alive connection and a second
 * ClientHello after HRR naming another host are refused and the other
 * virtual host sees nothing" and "an ECH hello is recorded with ech: true").
 *
 * The real Linux kernel is the guest (a namespace bridged by moat-shim to
 * Moat); "the internet" is one address in the remote namespace serving two
 * virtual hosts, like a CDN edge:
 *
 *   www.mz14.test      -> internetAddrs[0]  allowed
 *   blocked.mz14.test  -> internetAddrs[0]  never allowed (same server)
 *
 *   :80   a keep-alive node HTTP server that logs "request HOST URL"
 *   :443  a TCP front that logs "saw-blocked" if the bytes it receives ever
 *         contain the blocked name, and relays everything to
 *         `openssl s_server -groups P-256` on the remote's 127.0.0.1:4433,
 *         so a first ClientHello offering only an x25519 key share gets a
 *         real HelloRetryRequest.
 *
 * The guest's probes are a node script sending bytes the test built (HTTP
 * requests; ClientHellos from test/sni/support/hello-builder.ts) and
 * reporting what came back and how the connection ended.
 *
 * Network safety: internetAddrs[0] is on remote's lo and routes from the root
 * namespace via the topology's veth (checked by the fixture before the guest
 * may name it); the guest never resolves through the system resolver.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { e2eGate, waitFor, type TrackedProcess } from './harness.js';
import { FIXTURE_TOOLS, startMoatFixture, type MoatFixture } from './moat-fixture.js';
import { linesStartingWith, makeSelfSignedCert, type TestCert } from './egress-support.js';
import { buildClientHello, CHANGE_CIPHER_SPEC, concat, toRecords } from '../sni/support/hello-builder.js';

const gate = e2eGate([...FIXTURE_TOOLS, 'openssl', 'curl']);

const WWW = 'www.mz14.test';
const BLOCKED = 'blocked.mz14.test';
const SETTLE_MS = 400;

/** Keep-alive HTTP server with virtual hosts. Args: ADDR PORT. */
const VHOST_HTTP_JS = `
const http = require('node:http');
const [addr, port] = process.argv.slice(1);
const srv = http.createServer((req, res) => {
  console.log('request ' + req.headers.host + ' ' + req.url);
  req.resume();
  req.on('end', () => {
    const body = 'vhost ' + req.headers.host + ' ' + req.url + '\\n';
    res.writeHead(200, { 'content-length': Buffer.byteLength(body) });
    res.end(body);
  });
});
srv.keepAliveTimeout = 30000;
srv.listen(Number(port), addr, () => console.log('ready'));
`;

/**
 * TCP front on ADDR:PORT relaying to 127.0.0.1:BACKEND; logs "conn",
 * "saw-blocked" (NAME in the client's bytes) and "hrr" (the server sent a
 * HelloRetryRequest: its random is in the server's bytes).
 */
const TLS_FRONT_JS = `
const net = require('node:net');
const [addr, port, backend, name] = process.argv.slice(1);
net.createServer((c) => {
  console.log('conn');
  let seen = Buffer.alloc(0);
  let reported = false;
  const b = net.connect(Number(backend), '127.0.0.1');
  c.on('data', (d) => {
    if (seen.length < 262144) seen = Buffer.concat([seen, d]);
    if (!reported && seen.includes(name)) { reported = true; console.log('saw-blocked'); }
    b.write(d);
  });
  let server = Buffer.alloc(0);
  let hrr = false;
  b.on('data', (d) => {
    if (server.length < 65536) server = Buffer.concat([server, d]);
    if (!hrr && server.includes(Buffer.from('cf21ad74e59a6111be1d8c021e65b891c2a211167abb8c5e079e09e2c8a8339c', 'hex'))) { hrr = true; console.log('hrr'); }
    c.write(d);
  });
  c.on('end', () => b.end());
  b.on('end', () => c.end());
  c.on('error', () => b.destroy());
  b.on('error', () => c.destroy());
  c.on('close', () => b.destroy());
  b.on('close', () => c.destroy());
}).listen(Number(port), addr, () => console.log('ready'));
`;

/**
 * Guest probe: connect to ADDR:PORT and send each HEX payload in turn; after
 * each but the last, wait for an answer (then 200 ms more for the rest of it).
 * Prints "recv HEX" (everything received) and "end eof|reset|timeout".
 */
const STEPS_JS = `
const net = require('node:net');
const [addr, port, ...hexes] = process.argv.slice(1);
const s = net.connect(Number(port), addr);
let got = Buffer.alloc(0);
let waiting = null;
let ended = null;
s.on('data', (d) => { got = Buffer.concat([got, d]); if (waiting) { const w = waiting; waiting = null; setTimeout(w, 200); } });
const finish = (how) => { if (ended) return; ended = how; console.log('recv ' + got.toString('hex')); console.log('end ' + how); process.exit(0); };
s.on('error', (e) => finish(e.code === 'ECONNRESET' ? 'reset' : 'error-' + e.code));
s.on('end', () => finish('eof'));
s.on('close', () => finish('eof'));
setTimeout(() => finish('timeout'), 8000);
s.on('connect', async () => {
  for (let i = 0; i < hexes.length; i++) {
    s.write(Buffer.from(hexes[i], 'hex'));
    if (i < hexes.length - 1) await new Promise((r) => { waiting = r; });
  }
});
`;

const hex = (b: Uint8Array | string): string => Buffer.from(typeof b === 'string' ? Buffer.from(b, 'latin1') : b).toString('hex');

/** TLS 1.3 extensions a real server needs to answer: groups x25519 + P-256, a key share for `group`, signature algorithms. */
function tls13Extensions(group: 'x25519' | 'p256'): { type: number; data: Uint8Array }[] {
  const groups = Uint8Array.of(0, 4, 0x00, 0x1d, 0x00, 0x17);
  const share = group === 'x25519'
    ? concat([Uint8Array.of(0, 36, 0x00, 0x1d, 0, 32), new Uint8Array(32).fill(9)])
    : concat([Uint8Array.of(0, 69, 0x00, 0x17, 0, 65, 0x04), new Uint8Array(64).fill(7)]);
  return [
    { type: 10, data: groups },
    { type: 51, data: share },
    { type: 13, data: Uint8Array.of(0, 4, 0x04, 0x03, 0x08, 0x04) },
  ];
}

describe.skipIf(gate.skip)('moat serve e2e: one connection, one name; ECH recorded', () => {
  let fx: MoatFixture;
  const dir = mkdtempSync(join(tmpdir(), 'mz14-watch-'));
  const decisionLogFile = join(dir, 'decisions.jsonl');
  let cert: TestCert;
  let http: TrackedProcess;
  let front: TrackedProcess;
  let ip: string;

  beforeAll(async () => {
    cert = makeSelfSignedCert(dir, [WWW, BLOCKED]);
    fx = await startMoatFixture({
      prefix: 'mz14w-',
      // MOAT_FLOW_WATCH_MOAT_BIN: run against another build (e.g. main's, to see these cases fail there).
      moatBin: process.env.MOAT_FLOW_WATCH_MOAT_BIN,
      internetAddresses: 1,
      extraMoatArgs: (topo) => [
        '--allow', WWW,
        '--resolver', `${topo.remoteAddr}:53`,
        '--admit-resolved', topo.internetSubnet,
        '--decision-log', decisionLogFile,
      ],
      dnsZone: (topo) => ({
        [WWW]: [{ type: 'A', data: topo.internetAddrs[0]! }],
        [BLOCKED]: [{ type: 'A', data: topo.internetAddrs[0]! }],
      }),
    });
    ip = fx.topo.internetAddrs[0]!;
    http = await fx.startNodeServer(fx.remoteNs, VHOST_HTTP_JS, [ip, '80']);
    // The real TLS server, on the remote's loopback only: P-256 only, so an x25519-only first hello gets an HRR.
    const sServer = fx.remoteSpawn('openssl', ['s_server', '-accept', '127.0.0.1:4433', '-tls1_3', '-groups', 'P-256', '-cert', cert.certFile, '-key', cert.keyFile, '-quiet']);
    await new Promise((r) => setTimeout(r, 500));
    expect(sServer.child.exitCode, sServer.stderr()).toBeNull();
    front = await fx.startNodeServer(fx.remoteNs, TLS_FRONT_JS, [ip, '443', '4433', BLOCKED]);
  }, 90_000);

  afterAll(async () => {
    await fx?.stop();
    rmSync(dir, { recursive: true, force: true });
  }, 30_000);

  const evidence = (): string => `\nmoat log tail:\n${fx.moatLog().slice(-3000)}`;
  const decisions = (): Record<string, unknown>[] =>
    existsSync(decisionLogFile)
      ? readFileSync(decisionLogFile, 'utf8').split('\n').filter((l) => l.trim() !== '').map((l) => JSON.parse(l) as Record<string, unknown>)
      : [];
  const steps = async (port: number, payloads: string[]): Promise<{ recv: string; end: string; out: string }> => {
    const r = await fx.guestRun(process.execPath, ['-e', STEPS_JS, ip, String(port), ...payloads], { timeoutMs: 15_000 });
    const recv = Buffer.from(/^recv ([0-9a-f]*)$/m.exec(r.stdout)?.[1] ?? '', 'hex').toString('latin1');
    return { recv, end: /^end (\S+)$/m.exec(r.stdout)?.[1] ?? `(none) ${r.stdout}${r.stderr}`, out: r.stdout + r.stderr };
  };
  const requestsFor = (host: string): string[] => linesStartingWith(http.stdout(), `request ${host}`);
  const get = (host: string, path: string): string => `GET ${path} HTTP/1.1\r\nHost: ${host}\r\n\r\n`;

  it('(i) kept-alive: a second request with Host: blocked is refused (403) and the blocked vhost sees nothing', async () => {
    const r = await steps(80, [hex(get(WWW, '/first')), hex(get(BLOCKED, '/second'))]);
    expect(r.recv, r.out + evidence()).toContain(`vhost ${WWW} /first`);
    expect(r.recv, r.out + evidence()).toMatch(/HTTP\/1\.1 403 Forbidden\r\n[\s\S]*x-moat-reason: second-name/);
    await new Promise((res) => setTimeout(res, SETTLE_MS));
    expect(requestsFor(WWW)).toContain(`request ${WWW} /first`);
    expect(requestsFor(BLOCKED), http.stdout()).toEqual([]);
    await waitFor('a second-name decision', () => decisions().find((d) => d['reason'] === 'second-name' && d['name'] === BLOCKED && d['via'] === 'host'), { timeoutMs: 3_000 });
  }, 30_000);

  it('(i) control: curl reusing one connection for two requests to the allowed host gets both answers', async () => {
    const r = await fx.guestRun('curl', ['-sS', '--max-time', '5', '--resolve', `${WWW}:80:${ip}`, '-w', 'connects=%{num_connects}\\n', `http://${WWW}/reuse-1`, `http://${WWW}/reuse-2`], { timeoutMs: 10_000 });
    expect(r.stdout, r.stderr + evidence()).toBe(`vhost ${WWW} /reuse-1\nconnects=1\nvhost ${WWW} /reuse-2\nconnects=0\n`);
  }, 30_000);

  it('(i) pipelined in one segment: the first is answered, the second refused, the blocked vhost sees nothing', async () => {
    const r = await steps(80, [hex(get(WWW, '/pipelined-1') + get(BLOCKED, '/pipelined-2'))]);
    expect(r.recv, r.out + evidence()).toContain(`vhost ${WWW} /pipelined-1`);
    expect(r.recv.indexOf('403 Forbidden'), r.recv).toBeGreaterThan(r.recv.indexOf(`vhost ${WWW} /pipelined-1`));
    await new Promise((res) => setTimeout(res, SETTLE_MS));
    expect(requestsFor(BLOCKED), http.stdout()).toEqual([]);
  }, 30_000);

  it('(ii) a second ClientHello after a real HelloRetryRequest naming another host: reset, and the server never sees it', async () => {
    const first = toRecords(buildClientHello({ sni: WWW, extraExtensions: tls13Extensions('x25519') }));
    const second = concat([CHANGE_CIPHER_SPEC, toRecords(buildClientHello({ sni: BLOCKED, extraExtensions: tls13Extensions('p256') }))]);
    const before = linesStartingWith(front.stdout(), 'conn').length;
    const r = await steps(443, [hex(first), hex(second)]);
    // The server really answered with an HRR (a ServerHello whose random is the HRR constant).
    expect(hex(Buffer.from(r.recv, 'latin1')), r.out + evidence()).toContain('cf21ad74e59a6111be1d8c021e65b891c2a211167abb8c5e079e09e2c8a8339c');
    expect(r.end, r.out + evidence()).toBe('reset');
    await new Promise((res) => setTimeout(res, SETTLE_MS));
    expect(linesStartingWith(front.stdout(), 'conn').length).toBe(before + 1);
    expect(linesStartingWith(front.stdout(), 'saw-blocked'), front.stdout()).toEqual([]);
    await waitFor('a second-name decision for the hello', () => decisions().find((d) => d['reason'] === 'second-name' && d['name'] === BLOCKED && d['via'] === 'sni'), { timeoutMs: 3_000 });
  }, 30_000);

  it('(ii) control: a real client that gets a HelloRetryRequest (openssl s_client, x25519 first) completes its handshake through the watch', async () => {
    const hrrBefore = linesStartingWith(front.stdout(), 'hrr').length;
    const r = await fx.guestRun('openssl', ['s_client', '-connect', `${ip}:443`, '-servername', WWW, '-groups', 'X25519:P-256', '-CAfile', cert.certFile, '-verify_return_error'], { timeoutMs: 10_000, input: '' });
    const out = r.stdout + r.stderr;
    expect(out, out + evidence()).toMatch(/Cipher is TLS_AES_/);
    expect(out).toMatch(/Verify return code: 0 \(ok\)/);
    expect(linesStartingWith(front.stdout(), 'hrr').length, front.stdout()).toBe(hrrBefore + 1);
  }, 30_000);

  it('(iii) a ClientHello with encrypted_client_hello is recorded with ech: true (and one without with ech: false)', async () => {
    const ech = toRecords(buildClientHello({ sni: WWW, ech: true, extraExtensions: tls13Extensions('p256') }));
    await steps(443, [hex(ech)]);
    await waitFor('an allowed decision with ech: true', () => decisions().find((d) => d['decision'] === 'allowed' && d['name'] === WWW && d['via'] === 'sni' && d['ech'] === true), { timeoutMs: 3_000 }).catch((e: Error) => {
      throw new Error(`${e.message}\n${readFileSync(decisionLogFile, 'utf8').slice(-2000)}${evidence()}`);
    });
    const allowedTls = decisions().filter((d) => d['decision'] === 'allowed' && d['via'] === 'sni');
    expect(allowedTls.every((d) => typeof d['ech'] === 'boolean'), JSON.stringify(allowedTls)).toBe(true);
    expect(allowedTls.some((d) => d['ech'] === false)).toBe(true); // (ii)'s first hello
  }, 30_000);
});
