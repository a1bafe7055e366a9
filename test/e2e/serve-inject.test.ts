/**
 * Credential injection end to end (issue 21 acceptance): the real Linux
 * kernel as the guest, trusting Moat's CA (GET /ca.pem, given to curl with
 * --cacert), real curl in it, and HTTPS servers in "the internet" (the remote
 * namespace) with their own certificate, which Moat trusts through
 * --upstream-ca.
 *
 *   api.mzsi.test   -> internetAddrs[0]  --inject 'api.mzsi.test Authorization: Bearer ${api}'
 *   other.mzsi.test -> internetAddrs[1]  allowed, no injection rule (never intercepted)
 *   untrusted.mzsi.test -> internetAddrs[2]  an injection rule, but a certificate Moat does not trust
 *
 * Each server answers h2 and HTTP/1.1 (ALPN), logs one line per TLS
 * connection and per request (protocol, Host/:authority, Authorization),
 * and echoes the Authorization header back in a response header and the
 * body (a server that echoes the value: Moat masks it).
 *
 * Network safety: as serve-egress.test.ts (the fixture checks every address
 * routes into our namespaces; names reach curl only through --resolve).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { e2eGate, type TrackedProcess } from './harness.js';
import { FIXTURE_TOOLS, startMoatFixture, type MoatFixture } from './moat-fixture.js';
import { linesStartingWith, makeSelfSignedCert, type TestCert } from './egress-support.js';

const gate = e2eGate([...FIXTURE_TOOLS, 'curl', 'openssl']);

const API = 'api.mzsi.test';
const OTHER = 'other.mzsi.test';
const UNTRUSTED = 'untrusted.mzsi.test';
const VALUE = 'sk-e2e-REAL-VALUE-51f0c2d9a7';
const PLACEHOLDER = 'moat-secret-api';

/**
 * An HTTPS server (h2 + HTTP/1.1) on ADDR:443. Logs "conn" per TLS connection,
 * "request PROTO AUTHORITY AUTHORIZATION" per request; answers
 * "NAME PROTO AUTHORIZATION\n" with the Authorization echoed in x-echo.
 * Args: ADDR NAME CERT KEY
 */
const ECHO_SERVER_JS = `
const http2 = require('node:http2');
const fs = require('node:fs');
const [addr, name, cert, key] = process.argv.slice(1);
const s = http2.createSecureServer({ cert: fs.readFileSync(cert), key: fs.readFileSync(key), allowHTTP1: true }, (req, res) => {
  const auth = String(req.headers['authorization'] || '-');
  const authority = req.headers[':authority'] || req.headers.host;
  console.log('request ' + req.httpVersion + ' ' + authority + ' ' + auth);
  const body = name + ' ' + req.httpVersion + ' ' + auth + '\\n';
  res.writeHead(200, { 'x-echo': auth, 'content-length': Buffer.byteLength(body) });
  res.end(body);
});
s.on('secureConnection', (t) => console.log('conn ' + t.alpnProtocol));
s.listen(443, addr, () => console.log('ready'));
`;

describe.skipIf(gate.skip)('moat serve credential injection e2e: guest -> moat-shim -> Moat -> remote', () => {
  let fx: MoatFixture;
  const dir = mkdtempSync(join(tmpdir(), 'mzsi-'));
  const stateDir = join(dir, 'state');
  const decisionLogFile = join(dir, 'decisions.jsonl');
  const secretFile = join(dir, 'api.key');
  const moatCaFile = join(dir, 'moat-ca.pem');
  let cert: TestCert;
  let api: TrackedProcess;
  let other: TrackedProcess;
  let apiIp: string;
  let otherIp: string;
  let untrustedIp: string;
  let untrusted: TrackedProcess;
  /** Everything the guest received (curl stdout/stderr), for the final grep. */
  const guestSaw: string[] = [];

  beforeAll(async () => {
    cert = makeSelfSignedCert(dir, [API, OTHER]);
    mkdirSync(join(dir, 'rogue'));
    writeFileSync(secretFile, `${VALUE}\n`, { mode: 0o600 });
    fx = await startMoatFixture({
      prefix: 'mzsi-',
      internetAddresses: 3,
      pcap: true,
      extraMoatArgs: (topo) => [
        '--allow', API,
        '--allow', OTHER,
        '--allow', UNTRUSTED,
        '--inject', `${UNTRUSTED} Authorization: Bearer \${api}`,
        '--resolver', `${topo.remoteAddr}:53`,
        '--admit-resolved', topo.internetSubnet,
        '--decision-log', decisionLogFile,
        '--secret', `api=file:${secretFile}`,
        '--inject', `${API} Authorization: Bearer \${api}`,
        '--upstream-ca', cert.certFile,
        '--state-dir', stateDir,
      ],
      dnsZone: (topo) => ({
        [API]: [{ type: 'A', data: topo.internetAddrs[0]! }],
        [OTHER]: [{ type: 'A', data: topo.internetAddrs[1]! }],
        [UNTRUSTED]: [{ type: 'A', data: topo.internetAddrs[2]! }],
      }),
    });
    [apiIp, otherIp, untrustedIp] = fx.topo.internetAddrs as [string, string, string];
    const rogue = makeSelfSignedCert(join(dir, 'rogue'), [UNTRUSTED]);
    untrusted = await fx.startNodeServer(fx.remoteNs, ECHO_SERVER_JS, [untrustedIp, 'untrusted', rogue.certFile, rogue.keyFile]);
    api = await fx.startNodeServer(fx.remoteNs, ECHO_SERVER_JS, [apiIp, 'api', cert.certFile, cert.keyFile]);
    other = await fx.startNodeServer(fx.remoteNs, ECHO_SERVER_JS, [otherIp, 'other', cert.certFile, cert.keyFile]);
    const ca = await fx.api('GET', '/ca.pem');
    expect(ca.status).toBe(200);
    writeFileSync(moatCaFile, ca.text);
  }, 90_000);

  afterAll(async () => {
    await fx?.stop();
    rmSync(dir, { recursive: true, force: true });
  }, 30_000);

  const evidence = (): string => `\nmoat log tail:\n${fx.moatLog().slice(-3000)}`;
  const curl = async (args: string[]) => {
    const r = await fx.guestRun('curl', ['-sS', '--max-time', '8', ...args], { timeoutMs: 15_000 });
    guestSaw.push(r.stdout, r.stderr);
    return r;
  };
  const requests = (p: TrackedProcess): string[] => linesStartingWith(p.stdout(), 'request ');
  const conns = (p: TrackedProcess): number => linesStartingWith(p.stdout(), 'conn ').length;
  const decisions = (): Record<string, unknown>[] =>
    existsSync(decisionLogFile) ? readFileSync(decisionLogFile, 'utf8').split('\n').filter((l) => l.trim() !== '').map((l) => JSON.parse(l) as Record<string, unknown>) : [];

  it('1. the CA is in the state directory (key 0600, directory 0700); GET /secrets shows the placeholder, never the value', async () => {
    expect(statSync(join(stateDir, 'ca.key')).mode & 0o777).toBe(0o600);
    expect(statSync(stateDir).mode & 0o777).toBe(0o700);
    expect(readFileSync(moatCaFile, 'utf8')).toBe(readFileSync(join(stateDir, 'ca.pem'), 'utf8'));
    const s = await fx.api('GET', '/secrets');
    expect(s.status).toBe(200);
    expect(s.text).toContain(PLACEHOLDER);
    expect(s.text).not.toContain(VALUE);
    expect(fx.moatLog()).toContain(PLACEHOLDER); // printed at start-up
  });

  it('2. HTTP/1.1: the server behind the declared host sees the value; a second request on the kept-alive connection too; the echo comes back masked', async () => {
    const before = requests(api).length;
    const beforeConns = conns(api);
    const url = `https://${API}/`;
    const r = await curl(['--http1.1', '-i', '--cacert', moatCaFile, '--resolve', `${API}:443:${apiIp}`, '-H', `Authorization: Bearer ${PLACEHOLDER}`, url, url]);
    expect(r.status, `curl: ${r.stderr}${evidence()}`).toBe(0);
    expect(requests(api).slice(before)).toEqual([`request 1.1 ${API} Bearer ${VALUE}`, `request 1.1 ${API} Bearer ${VALUE}`]);
    expect(conns(api) - beforeConns).toBe(1); // both requests on one upstream connection
    expect(r.stdout).toContain(`x-echo: Bearer ${'*'.repeat(VALUE.length)}`);
    expect(r.stdout).not.toContain(VALUE);
    const injected = decisions().filter((d) => d['reason'] === 'inject' && d['injected'] === 'api');
    expect(injected.length).toBeGreaterThanOrEqual(2);
  });

  it('3. HTTP/2 (curl --http2): every stream on the connection is injected', async () => {
    const before = requests(api).length;
    const url = `https://${API}/h2`;
    const r = await curl(['--http2', '--cacert', moatCaFile, '--resolve', `${API}:443:${apiIp}`, '-H', `Authorization: Bearer ${PLACEHOLDER}`, url, url]);
    expect(r.status, `curl: ${r.stderr}${evidence()}`).toBe(0);
    expect(requests(api).slice(before)).toEqual([`request 2.0 ${API} Bearer ${VALUE}`, `request 2.0 ${API} Bearer ${VALUE}`]);
    expect(r.stdout).toBe(`api 2.0 Bearer ${'*'.repeat(VALUE.length)}\n`.repeat(2));
  });

  it('4. a request whose Host (HTTP/1.1) or :authority (HTTP/2) names another host on the intercepted connection gets 421 and never reaches a server', async () => {
    const before = requests(api).length + requests(other).length;
    for (const proto of ['--http1.1', '--http2']) {
      const r = await curl([proto, '-o', '/dev/null', '-w', '%{http_code}', '--cacert', moatCaFile, '--resolve', `${API}:443:${apiIp}`, '-H', `Host: ${OTHER}`, '-H', `Authorization: Bearer ${PLACEHOLDER}`, `https://${API}/`]);
      expect(r.stdout, `${proto}: ${r.stderr}${evidence()}`).toBe('421');
    }
    expect(requests(api).length + requests(other).length).toBe(before);
    expect(decisions().filter((d) => d['reason'] === 'inject-host-mismatch').length).toBeGreaterThanOrEqual(2);
  });

  it('5. the placeholder sent to an allowed host without a rule reaches it unchanged, over TLS end to end (the guest verifies the real certificate)', async () => {
    const before = requests(other).length;
    const r = await curl(['--cacert', cert.certFile, '--resolve', `${OTHER}:443:${otherIp}`, '-H', `Authorization: Bearer ${PLACEHOLDER}`, `https://${OTHER}/`]);
    expect(r.status, `curl: ${r.stderr}${evidence()}`).toBe(0);
    expect(requests(other).slice(before)).toEqual([`request 2.0 ${OTHER} Bearer ${PLACEHOLDER}`]);
    // Moat's CA does not vouch for other: it was not intercepted.
    const mitm = await curl(['--cacert', moatCaFile, '--resolve', `${OTHER}:443:${otherIp}`, `https://${OTHER}/`]);
    expect(mitm.status).not.toBe(0);
  });

  it('5b. an upstream whose certificate does not verify gets no request: the guest gets a TLS alert, the decision says upstream-tls', async () => {
    const r = await curl(['--cacert', moatCaFile, '--resolve', `${UNTRUSTED}:443:${untrustedIp}`, '-H', `Authorization: Bearer ${PLACEHOLDER}`, `https://${UNTRUSTED}/`]);
    expect(r.status).not.toBe(0);
    expect(r.stderr).toMatch(/alert|reset/i);
    expect(requests(untrusted)).toEqual([]);
    expect(decisions().some((d) => d['reason'] === 'upstream-tls' && d['name'] === UNTRUSTED)).toBe(true);
  });

  it('6. the value appears in no file Moat wrote (log, decision log, pcap, CA state), no API answer, nothing the guest received', async () => {
    // Every intercepted connection ended with its curl (HTTP/2 ones too): none is left open.
    let inject: { open: number; intercepted: number } | undefined;
    for (let i = 0; i < 100; i++) {
      inject = ((await fx.api('GET', '/stats')).body as { inject?: { open: number; intercepted: number } }).inject;
      if (inject?.open === 0) break;
      await new Promise((r) => setTimeout(r, 30));
    }
    expect(inject?.open).toBe(0);
    expect(inject?.intercepted).toBeGreaterThanOrEqual(4);
    const stats = await fx.api('GET', '/stats');
    const secrets = await fx.api('GET', '/secrets');
    const files = [decisionLogFile, fx.pcapFile!, ...readdirSync(stateDir).map((f) => join(stateDir, f))];
    const haystacks: [string, Buffer | string][] = [
      ['moat log', fx.moatLog()],
      ['/stats', stats.text],
      ['/secrets', secrets.text],
      ['guest output', guestSaw.join('\n')],
      ...files.map((f): [string, Buffer] => [f, readFileSync(f)]),
    ];
    for (const [what, h] of haystacks) expect(Buffer.from(h).includes(VALUE), `${what} holds the value`).toBe(false);
    // The pcap of the guest link is not empty of the request: it holds what the guest sent, encrypted; the placeholder never in clear either.
    expect(readFileSync(fx.pcapFile!).length).toBeGreaterThan(1000);
  });
});
