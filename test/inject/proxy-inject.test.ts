/**
 * `moat proxy` with credential injection (issue 21 acceptance, the proxy
 * half), through the library's proxy() with the CLI's flags, and curl as the
 * process (HTTPS_PROXY in its environment, Moat's CA from `moat ca`).
 *
 *   api.test    127.66.21.10:443   --inject 'api.test Authorization: Bearer ${api}'
 *   api.test    127.66.21.10:8443  the same host on another port: allowed, no rule
 *   other.test  127.66.21.11:443   allowed, no rule
 *   rogue.test  127.66.21.12:443   a rule, but a certificate from a CA Moat does not trust
 *
 * Servers answer h2 and HTTP/1.1 with certificates from a test CA (made by
 * src/inject/ca.ts in its own directory), trusted by Moat via --upstream-ca.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createSecureServer, type Http2SecureServer } from 'node:http2';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { runCli } from '../../src/cli.js';
import { proxy, type MoatProxy } from '../../src/embed.js';
import { loadOrCreateCa } from '../../src/inject/ca.js';
import { LeafCertificates } from '../../src/inject/certs.js';
import { startTestUpstream, type TestUpstream } from '../src/allowlist-upstream.js';

const run = promisify(execFile);
const VALUE = 'sk-proxy-REAL-VALUE-0c1d2e3f';
const PLACEHOLDER = 'moat-secret-api';
const API_IP = '127.66.21.10';
const OTHER_IP = '127.66.21.11';
const ROGUE_IP = '127.66.21.12';

describe('moat proxy: credential injection into CONNECT tunnels to a declared host', () => {
  const dir = mkdtempSync(join(tmpdir(), 'mz21p-'));
  const stateDir = join(dir, 'state');
  const decisionLog = join(dir, 'decisions.jsonl');
  const upstreamCaFile = join(dir, 'upstream-ca.pem');
  const moatCaFile = join(dir, 'moat-ca.pem');
  const log: string[] = [];
  const seen: string[] = [];
  const curlSaw: string[] = [];
  const servers: Http2SecureServer[] = [];
  let dns: TestUpstream;
  let p: MoatProxy;

  beforeAll(async () => {
    const upCa = loadOrCreateCa(join(dir, 'upstream-ca'));
    writeFileSync(upstreamCaFile, upCa.certPem);
    const leaves = new LeafCertificates(upCa);
    for (const [ip, port, name] of [[API_IP, 443, 'api'], [API_IP, 8443, 'api8443'], [OTHER_IP, 443, 'other']] as const) {
      const s = createSecureServer({ allowHTTP1: true, SNICallback: (sni, cb) => cb(null, leaves.contextFor(sni)) }, (req, res) => {
        const auth = String(req.headers['authorization'] ?? '-');
        seen.push(`${name} ${req.httpVersion} ${auth}`);
        const body = `${name} ${auth}\n`;
        res.writeHead(200, { 'x-echo': auth, 'content-length': Buffer.byteLength(body) });
        res.end(body);
      });
      await new Promise<void>((r) => s.listen(port, ip, r));
      servers.push(s);
    }
    const rogueLeaves = new LeafCertificates(loadOrCreateCa(join(dir, 'rogue-ca')));
    const rogue = createSecureServer({ allowHTTP1: true, SNICallback: (sni, cb) => cb(null, rogueLeaves.contextFor(sni)) }, (req, res) => {
      seen.push(`rogue ${req.httpVersion} ${String(req.headers['authorization'] ?? '-')}`);
      res.end('rogue\n');
    });
    await new Promise<void>((r) => rogue.listen(443, ROGUE_IP, r));
    servers.push(rogue);
    dns = await startTestUpstream({ 'api.test': { a: [API_IP] }, 'other.test': { a: [OTHER_IP] }, 'rogue.test': { a: [ROGUE_IP] } });
    process.env['MZ21P_SECRET'] = VALUE;
    p = await proxy(
      {
        listen: '127.0.0.1:0',
        resolver: `127.0.0.1:${dns.port}`,
        admitResolved: '127.66.21.0/24',
        allow: ['api.test', 'api.test:8443', 'other.test', 'rogue.test'],
        secret: ['api=env:MZ21P_SECRET'],
        inject: ['api.test Authorization: Bearer ${api}', 'rogue.test Authorization: Bearer ${api}'],
        upstreamCa: upstreamCaFile,
        stateDir,
        decisionLog,
        logFormat: 'json',
      },
      { log: { write: (s: string) => void log.push(s) } },
    );
    delete process.env['MZ21P_SECRET'];
    // The CA the process must trust, as an operator gets it: `moat ca --state-dir`.
    let pem = '';
    const code = await runCli(['ca', '--state-dir', stateDir], { stdout: { write: (s: string) => void (pem += s) }, stderr: { write: () => undefined }, config: { readFile: () => '', readResolvConf: () => undefined }, stopSignal: () => new Promise(() => undefined) });
    expect(code).toBe(0);
    writeFileSync(moatCaFile, pem);
  }, 30_000);

  afterAll(async () => {
    await p?.close();
    for (const s of servers) s.close();
    await dns?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  /** curl as a separate process, told of the proxy only by HTTPS_PROXY. */
  const curl = async (args: string[]): Promise<{ code: number; out: string }> => {
    try {
      const r = await run('curl', ['-sS', '--max-time', '10', ...args], { env: { ...process.env, HTTPS_PROXY: `http://${p.http}`, NO_PROXY: '' } });
      curlSaw.push(r.stdout, r.stderr);
      return { code: 0, out: r.stdout };
    } catch (e) {
      const err = e as { code: number; stdout: string; stderr: string };
      curlSaw.push(err.stdout, err.stderr);
      return { code: err.code, out: err.stdout + err.stderr };
    }
  };

  it('HTTP/1.1 and HTTP/2 through HTTPS_PROXY: every request on the tunnel to the declared host carries the value; the echo is masked', async () => {
    seen.length = 0;
    const h1 = await curl(['--http1.1', '--cacert', moatCaFile, '-H', `Authorization: Bearer ${PLACEHOLDER}`, 'https://api.test/', 'https://api.test/']);
    const h2 = await curl(['--http2', '--cacert', moatCaFile, '-H', `Authorization: Bearer ${PLACEHOLDER}`, 'https://api.test/', 'https://api.test/']);
    expect(h1.code, h1.out).toBe(0);
    expect(h2.code, h2.out).toBe(0);
    expect(seen).toEqual([`api 1.1 Bearer ${VALUE}`, `api 1.1 Bearer ${VALUE}`, `api 2.0 Bearer ${VALUE}`, `api 2.0 Bearer ${VALUE}`]);
    expect(h1.out + h2.out).toBe(`api Bearer ${'*'.repeat(VALUE.length)}\n`.repeat(4));
  });

  it('a Host / :authority naming another host inside the tunnel gets 421 and reaches no server', async () => {
    seen.length = 0;
    for (const proto of ['--http1.1', '--http2']) {
      const r = await curl([proto, '-o', '/dev/null', '-w', '%{http_code}', '--cacert', moatCaFile, '-H', 'Host: other.test', '-H', `Authorization: Bearer ${PLACEHOLDER}`, 'https://api.test/']);
      expect(r.out).toBe('421');
    }
    expect(seen).toEqual([]);
  });

  it('the placeholder to another allowed host, or to the declared host on another port, goes unchanged over end-to-end TLS', async () => {
    seen.length = 0;
    const other = await curl(['--cacert', upstreamCaFile, '-H', `Authorization: Bearer ${PLACEHOLDER}`, 'https://other.test/']);
    const port = await curl(['--cacert', upstreamCaFile, '-H', `Authorization: Bearer ${PLACEHOLDER}`, 'https://api.test:8443/']);
    expect([other.code, port.code], other.out + port.out).toEqual([0, 0]);
    expect(seen).toEqual([`other 2.0 Bearer ${PLACEHOLDER}`, `api8443 2.0 Bearer ${PLACEHOLDER}`]);
  });

  it('a declared host whose certificate does not verify gets no request: the client gets a TLS alert (upstream-tls)', async () => {
    seen.length = 0;
    const r = await curl(['--cacert', moatCaFile, '-H', `Authorization: Bearer ${PLACEHOLDER}`, 'https://rogue.test/']);
    expect(r.code).not.toBe(0);
    expect(r.out).toMatch(/alert|reset/i);
    expect(seen).toEqual([]);
    expect(readFileSync(decisionLog, 'utf8')).toMatch(/"reason":"upstream-tls"[^\n]*"name":"rogue.test"/);
  });

  it('decisions record the secret by name; the value is in no log, decision record or anything curl received', async () => {
    const records = readFileSync(decisionLog, 'utf8');
    expect(records).toContain('"injected":"api"');
    expect(records).toContain('"reason":"inject-host-mismatch"');
    for (const [what, text] of [['log', log.join('')], ['decision log', records], ['curl', curlSaw.join('\n')], ['stats', JSON.stringify(p.stats())]] as const) {
      expect(text.includes(VALUE), `${what} holds the value`).toBe(false);
    }
    expect(log.join('')).toContain(PLACEHOLDER); // the start-up line names the placeholder
    // Only tunnels to api.test:443 were intercepted (2 curl runs + 2 refused-Host runs); other.test and :8443 were not.
    for (let i = 0; i < 100 && p.stats().inject?.open !== 0; i++) await new Promise((r) => setTimeout(r, 20));
    expect(p.stats().inject).toMatchObject({ intercepted: 4, open: 0, leaves: 2 }); // leaves: api.test and rogue.test, issued at start-up
  });
});
