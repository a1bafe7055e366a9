/**
 * Ask mode end to end (issue 18, acceptance): a real Linux kernel as the
 * guest behind moat-shim and `moat serve --on-unlisted ask`, and the same
 * through `moat proxy` with `curl -x` (in this process, root namespace).
 *
 *   www.mzk.test                -> internetAddrs[0]   allowed from the start
 *   every other *.mzk.test name -> internetAddrs[1]   unlisted: asked about
 *
 * Both addresses are on the remote namespace's lo and route from the root
 * namespace (where Moat and the proxy dial) via the topology's veth, which
 * the fixture checks before the guest may name them; the proxy's curl runs
 * in the root namespace against 127.0.0.1 and the proxy dials only those.
 * "The internet" is 198.18.x.x, so both run with --admit-resolved for it.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { e2eGate, hostRunAsync, waitFor, type TrackedProcess } from './harness.js';
import { FIXTURE_TOOLS, GATEWAY_IP, startMoatFixture, unixHttp, type MoatFixture } from './moat-fixture.js';
import { SITE_SERVER_JS, makeSelfSignedCert, type TestCert } from './egress-support.js';
import { NULL_LOGGER } from '../../src/log.js';
import { parseProxyArgs } from '../../src/proxy/config.js';
import { startProxy, type RunningProxy } from '../../src/proxy/index.js';

const gate = e2eGate([...FIXTURE_TOOLS, 'curl', 'dig', 'python3']);

const WWW = 'www.mzk.test';
const UNLISTED = ['new', 'fresh', 'deny', 'late', 'many', 'px', 'pxdeny', 'pxlate'].map((n) => `${n}.mzk.test`);
const [NEW, FRESH, DENY, LATE, MANY, PX, PXDENY, PXLATE] = UNLISTED as [string, string, string, string, string, string, string, string];
const ASK_TIMEOUT_MS = 3_000;

interface Pending {
  id: string;
  name: string;
  proto: string;
  port: number;
  dst: string;
  via: string;
  since: string;
  waiters: number;
}

/** 100 HTTP requests for NAME at ADDR:80 at once, each on its own connection; prints the count of 200s. */
const MANY_REQUESTS_PY = `
import socket, sys, threading
addr, name, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
ok = []
def one():
    s = socket.create_connection((addr, 80), timeout=30)
    s.sendall(('GET /many HTTP/1.1\\r\\nHost: %s\\r\\nConnection: close\\r\\n\\r\\n' % name).encode())
    data = b''
    while True:
        chunk = s.recv(4096)
        if not chunk: break
        data += chunk
    if data.startswith(b'HTTP/1.1 200'): ok.append(1)
ts = [threading.Thread(target=one) for _ in range(n)]
for t in ts: t.start()
for t in ts: t.join()
print(len(ok))
`;

describe.skipIf(gate.skip)('ask mode e2e: moat serve --on-unlisted ask (kernel guest) and moat proxy (curl -x)', () => {
  let fx: MoatFixture;
  const dir = mkdtempSync(join(tmpdir(), 'mzk-ask-'));
  let cert: TestCert;
  let sites: TrackedProcess[] = [];
  let wwwIp: string;
  let otherIp: string;
  let proxy: RunningProxy;
  const proxyApi = join(dir, 'proxy-api.sock');

  beforeAll(async () => {
    cert = makeSelfSignedCert(dir, [WWW, ...UNLISTED]);
    fx = await startMoatFixture({
      prefix: 'mzk-',
      internetAddresses: 2,
      extraMoatArgs: (topo) => [
        '--allow', WWW,
        '--resolver', `${topo.remoteAddr}:53`,
        '--admit-resolved', topo.internetSubnet,
        '--on-unlisted', 'ask',
        '--ask-timeout-ms', String(ASK_TIMEOUT_MS),
      ],
      dnsZone: (topo) => ({
        [WWW]: [{ type: 'A', data: topo.internetAddrs[0]! }],
        ...Object.fromEntries(UNLISTED.map((n) => [n, [{ type: 'A', data: topo.internetAddrs[1]! }]])),
      }),
    });
    [wwwIp, otherIp] = fx.topo.internetAddrs as [string, string];
    const site = (ip: string, label: string): Promise<TrackedProcess> => fx.startNodeServer(fx.remoteNs, SITE_SERVER_JS, [ip, label, cert.certFile, cert.keyFile, '80', '443']);
    sites = [await site(wwwIp, 'www'), await site(otherIp, 'other')];
    const parsed = parseProxyArgs([
      '--listen', '127.0.0.1:0',
      '--allow', WWW,
      '--resolver', `${fx.dnsServerAddr}:53`,
      '--admit-resolved', fx.topo.internetSubnet,
      '--on-unlisted', 'ask',
      '--ask-timeout-ms', String(ASK_TIMEOUT_MS),
      '--api', `unix://${proxyApi}`,
    ]);
    if (parsed.kind !== 'config') throw new Error('expected a config');
    proxy = await startProxy(parsed.config, NULL_LOGGER);
  }, 90_000);

  afterAll(async () => {
    await proxy?.close();
    await fx?.stop();
    rmSync(dir, { recursive: true, force: true });
  }, 30_000);

  const evidence = (): string => `\nmoat log tail:\n${fx.moatLog().slice(-3000)}`;
  const curl = (args: string[], maxTime = 15) => fx.guestRun('curl', ['-sS', '--max-time', String(maxTime), ...args], { timeoutMs: (maxTime + 5) * 1000 });
  const https = (name: string, path = '/') => curl(['--cacert', cert.certFile, '--resolve', `${name}:443:${otherIp}`, `https://${name}${path}`]);

  /** The pending decision for `name` on `socket` (serve's API or the proxy's), once it has `waiters`. */
  const pendingOn = (socket: string, name: string, waiters = 1): Promise<Pending> =>
    waitFor(
      `pending decision for ${name} with ${waiters} waiters`,
      async () => {
        const r = await unixHttp(socket, 'GET', '/decisions/pending');
        return (r.body as Pending[]).find((p) => p.name === name && p.waiters >= waiters);
      },
      { timeoutMs: 15_000, intervalMs: 50 },
    );
  const answer = async (socket: string, id: string, verdict: string): Promise<void> => {
    const r = await unixHttp(socket, 'POST', `/decisions/${id}`, { verdict });
    expect(r.status, r.text).toBe(200);
  };
  const askStats = async (): Promise<Record<string, number>> => ((await fx.stats()) as unknown as { ask: Record<string, number> }).ask;

  it('curl https://new waits; GET /decisions/pending lists it; allow-name completes it; a second curl needs no ask', async () => {
    const waiting = https(NEW, '/first');
    const p = await pendingOn(fx.apiSocket, NEW);
    expect(p).toMatchObject({ name: NEW, proto: 'tcp', port: 443, dst: otherIp, via: 'sni' });
    expect(p.id).toMatch(/^[0-9a-f]{32}$/);
    await answer(fx.apiSocket, p.id, 'allow-name');
    const r = await waiting;
    expect(r.status, r.stderr + evidence()).toBe(0);
    expect(r.stdout).toBe(`other https ${NEW} /first\n`);
    const asked = (await askStats()).asked;
    const again = await https(NEW, '/second');
    expect(again.stdout, again.stderr + evidence()).toBe(`other https ${NEW} /second\n`);
    expect((await askStats()).asked).toBe(asked);
    expect((await fx.api('GET', '/allowlist')).body).toMatchObject({ allow: [WWW, NEW] });
  }, 60_000);

  it('a DNS query for an unlisted name waits; allow-name answers with the pinned address; the connection that follows needs no ask', async () => {
    const dig = fx.guestRun('dig', [`@${GATEWAY_IP}`, '+short', '+time=20', '+tries=1', FRESH, 'A'], { timeoutMs: 30_000 });
    const p = await pendingOn(fx.apiSocket, FRESH);
    expect(p).toMatchObject({ proto: 'dns', via: 'dns' });
    await answer(fx.apiSocket, p.id, 'allow-name');
    const r = await dig;
    expect(r.stdout.trim(), r.stderr + evidence()).toBe(otherIp);
    const asked = (await askStats()).asked;
    const c = await https(FRESH, '/after-dns');
    expect(c.stdout, c.stderr + evidence()).toBe(`other https ${FRESH} /after-dns\n`);
    expect((await askStats()).asked).toBe(asked);
  }, 60_000);

  it('deny: the waiting curl is refused at once (TLS alert)', async () => {
    const waiting = https(DENY);
    const p = await pendingOn(fx.apiSocket, DENY);
    const t0 = Date.now();
    await answer(fx.apiSocket, p.id, 'deny');
    const r = await waiting;
    const ms = Date.now() - t0;
    expect(r.status, r.stdout).not.toBe(0);
    expect(r.stderr).toMatch(/alert|access denied|reset/i);
    expect(ms, `refused ${ms} ms after the verdict`).toBeLessThan(ASK_TIMEOUT_MS);
    expect(sites[1]!.stdout()).not.toContain(`https ${DENY}`);
  }, 60_000);

  it('no answer: curl is refused after --ask-timeout-ms (reason ask-timeout)', async () => {
    const t0 = Date.now();
    const r = await https(LATE);
    const ms = Date.now() - t0;
    expect(r.status).not.toBe(0);
    expect(ms, `refused after ${ms} ms`).toBeGreaterThanOrEqual(ASK_TIMEOUT_MS - 200);
    expect(fx.moatLogEntries().some((l) => l['msg'] === 'ask timed out: refused' && l['name'] === LATE), evidence()).toBe(true);
    expect((await askStats()).timeouts).toBeGreaterThanOrEqual(1);
  }, 60_000);

  it('100 waiting requests for one name are one pending decision; allow-once answers all of them', async () => {
    const run = fx.guestRun('python3', ['-c', MANY_REQUESTS_PY, otherIp, MANY, '100'], { timeoutMs: 60_000 });
    const p = await pendingOn(fx.apiSocket, MANY, 100);
    const all = (await unixHttp(fx.apiSocket, 'GET', '/decisions/pending')).body as Pending[];
    expect(all.filter((x) => x.name === MANY)).toHaveLength(1);
    expect(p.waiters).toBe(100);
    await answer(fx.apiSocket, p.id, 'allow-once');
    const r = await run;
    expect(r.stdout.trim(), r.stderr + evidence()).toBe('100');
    expect((await fx.api('GET', '/allowlist')).body).not.toMatchObject({ allow: expect.arrayContaining([MANY]) });
  }, 90_000);

  // ------------------------------------------------------------ moat proxy

  const proxyCurl = (name: string, path = '/') =>
    hostRunAsync('curl', ['-sS', '--max-time', '15', '-x', `http://${proxy.http}`, '--cacert', cert.certFile, `https://${name}${path}`], { timeoutMs: 20_000 });

  it('moat proxy: curl -x waits; pending lists it; allow-name completes it and the next needs no ask', async () => {
    const waiting = proxyCurl(PX, '/via-proxy');
    const p = await pendingOn(proxyApi, PX);
    expect(p).toMatchObject({ proto: 'proxy', port: 443, via: 'target' });
    await answer(proxyApi, p.id, 'allow-name');
    const r = await waiting;
    expect(r.stdout, r.stderr).toBe(`other https ${PX} /via-proxy\n`);
    const asked = proxy.stats().ask!.asked;
    const again = await proxyCurl(PX, '/again');
    expect(again.stdout, again.stderr).toBe(`other https ${PX} /again\n`);
    expect(proxy.stats().ask!.asked).toBe(asked);
  }, 60_000);

  it('moat proxy: deny refuses at once (403); no answer refuses after the timeout', async () => {
    const waiting = proxyCurl(PXDENY);
    const p = await pendingOn(proxyApi, PXDENY);
    await answer(proxyApi, p.id, 'deny');
    const r = await waiting;
    expect(r.status).not.toBe(0);
    expect(r.stderr).toMatch(/403/);
    const t0 = Date.now();
    const late = await proxyCurl(PXLATE);
    expect(late.status).not.toBe(0);
    expect(late.stderr).toMatch(/403/);
    expect(Date.now() - t0).toBeGreaterThanOrEqual(ASK_TIMEOUT_MS - 200);
    expect(proxy.stats().ask).toMatchObject({ denied: 1, timeouts: 1 });
  }, 60_000);
});
