/**
 * QUIC by name end to end (issue 17): the real Linux kernel as the guest
 * sends captured real client Initial flights (test/fixtures/quic/, chromium
 * 156 with a 2-packet post-quantum hello; ngtcp2's gtlsclient) over UDP, and
 * Moat decides each flow by the SNI inside, NATing an allowed one to the
 * address IT resolved for the name — whatever address the guest sent to.
 *
 *   www.example.org -> internetAddrs[0]   allowed (--allow www.example.org: UDP 443)
 *   internetAddrs[1]                      where the guest sends (a decoy: must hear nothing)
 *   h3.example.org  -> internetAddrs[2]   allowed; an HTTP/3 server (ngtcp2's gtlsserver) on UDP 443
 *
 * A UDP logger listens on :443 (and :4433) of both addresses in the remote
 * namespace. Network safety: the names are answered only by the test DNS
 * server in the remote namespace (Moat's --resolver); every address routes
 * into our namespaces (the fixture checks it before the guest may name it).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { e2eGate, waitFor, type TrackedProcess } from './harness.js';
import { FIXTURE_TOOLS, startMoatFixture, type MoatFixture } from './moat-fixture.js';
import { UDP_LOGGER_JS, UDP_REPLAY_PY, linesStartingWith, makeSelfSignedCert } from './egress-support.js';

// gtlsclient/gtlsserver (Debian ngtcp2-client/-server) are required like every other tool: under CI a missing one fails the gate.
const gate = e2eGate([...FIXTURE_TOOLS, 'python3', 'gtlsclient', 'gtlsserver']);

const WWW = 'www.example.org';
/** The HTTP/3 site: Debian's ngtcp2 example server (gtlsserver) and client (gtlsclient). */
const H3 = 'h3.example.org';
const SETTLE_MS = 500;

interface Capture {
  sni: string;
  datagrams: string[];
}
const capture = (name: string): Capture => JSON.parse(readFileSync(new URL(`../fixtures/quic/${name}.json`, import.meta.url), 'utf8')) as Capture;
const chromium = capture('chromium');
const ngtcp2 = capture('gtlsclient');

interface DecisionLine {
  decision: string;
  reason: string;
  proto: string;
  dst: string;
  name: string | null;
  [key: string]: unknown;
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

describe.skipIf(gate.skip)('moat serve: QUIC by name, guest -> moat-shim -> Moat -> remote', () => {
  let fx: MoatFixture;
  const dir = mkdtempSync(join(tmpdir(), 'mq7-quic-'));
  const decisionLogFile = join(dir, 'decisions.jsonl');
  let logger: TrackedProcess;
  let wwwIp: string;
  let decoyIp: string;
  let h3Ip: string;
  let h3Server: TrackedProcess | undefined;

  beforeAll(async () => {
    fx = await startMoatFixture({
      prefix: 'mq7-',
      internetAddresses: 3,
      extraMoatArgs: (topo) => ['--allow', WWW, '--allow', H3, '--resolver', `${topo.remoteAddr}:53`, '--admit-resolved', topo.internetSubnet, '--decision-log', decisionLogFile],
      dnsZone: (topo) => ({ [WWW]: [{ type: 'A', data: topo.internetAddrs[0]! }], [H3]: [{ type: 'A', data: topo.internetAddrs[2]! }] }),
    });
    [wwwIp, decoyIp, h3Ip] = fx.topo.internetAddrs as [string, string, string];
    netnsEtc = join('/etc/netns', fx.guestNs);
    const cert = makeSelfSignedCert(dir, [H3]);
    const htdocs = join(dir, 'htdocs');
    mkdirSync(htdocs);
    writeFileSync(join(htdocs, 'index.html'), 'hello over h3\n');
    h3Server = fx.remoteSpawn('gtlsserver', ['-q', '-d', htdocs, h3Ip, '443', cert.keyFile, cert.certFile]);
    logger = await fx.startNodeServer(fx.remoteNs, UDP_LOGGER_JS, ['443', wwwIp, decoyIp]);
  }, 90_000);

  /** The guest namespace's /etc overrides (case 6); only ever this test's uniquely named namespace. */
  let netnsEtc = '';
  afterAll(async () => {
    if (netnsEtc !== '') rmSync(netnsEtc, { recursive: true, force: true });
    await fx?.stop();
    rmSync(dir, { recursive: true, force: true });
  }, 30_000);

  const evidence = (): string => `\nmoat log tail:\n${fx.moatLog().slice(-3000)}`;
  const decisions = (): DecisionLine[] =>
    existsSync(decisionLogFile) ? readFileSync(decisionLogFile, 'utf8').split('\n').filter((l) => l.trim() !== '').map((l) => JSON.parse(l) as DecisionLine) : [];
  const waitForDecision = (what: string, pred: (d: DecisionLine) => boolean): Promise<DecisionLine> =>
    waitFor(`decision: ${what}`, () => decisions().find(pred), { timeoutMs: 5_000, intervalMs: 50 }).catch((e: Error) => {
      throw new Error(`${e.message}\ndecisions:\n${JSON.stringify(decisions(), null, 1).slice(-3000)}${evidence()}`);
    });
  const replay = async (addr: string, port: number, datagrams: readonly string[], gapMs = 20): Promise<number> => {
    const r = await fx.guestRun('python3', ['-c', UDP_REPLAY_PY, addr, String(port), String(gapMs), ...datagrams], { timeoutMs: 15_000 });
    expect(r.status, r.stdout + r.stderr).toBe(0);
    expect(r.stdout).toContain(`sent ${datagrams.length}`);
    return Number(/^local-port (\d+)$/m.exec(r.stdout)?.[1]);
  };
  /** Datagrams the logger saw at `addr`, as [len, first 8 bytes hex]. */
  const heardAt = (addr: string): string[][] => linesStartingWith(logger.stdout(), `udp-datagram ${addr} `).map((l) => l.split(' ').slice(3));
  const expected = (datagrams: readonly string[]): string[][] => datagrams.map((h) => [String(h.length / 2), h.slice(0, 16)]);

  it('1. a real chromium flight (2 Initial packets) sent to a decoy address reaches the allowed name\'s resolved address', async () => {
    const before = heardAt(wwwIp).length;
    await replay(decoyIp, 443, chromium.datagrams);
    await waitFor('the flight at www', () => heardAt(wwwIp).length >= before + 2, { timeoutMs: 5_000 }).catch((e: Error) => {
      throw new Error(`${e.message}\nlogger:\n${logger.stdout()}${evidence()}`);
    });
    expect(heardAt(wwwIp).slice(before)).toEqual(expected(chromium.datagrams));
    await sleep(SETTLE_MS);
    expect(heardAt(decoyIp), logger.stdout()).toEqual([]);
    await waitForDecision('allowed quic', (d) => d.decision === 'allowed' && d.proto === 'quic' && d.reason === 'name-quic' && d.name === WWW && d.dst === `${decoyIp}:443`);
  }, 30_000);

  it('2. the same hello one packet per datagram in reverse order is recognised', async () => {
    const before = heardAt(wwwIp).length;
    await replay(decoyIp, 443, [...chromium.datagrams].reverse());
    await waitFor('the reversed flight at www', () => heardAt(wwwIp).length >= before + 2, { timeoutMs: 5_000 });
    expect(heardAt(wwwIp).slice(before)).toEqual(expected([...chromium.datagrams].reverse()));
    expect(decisions().filter((d) => d.reason === 'name-quic').length).toBe(2);
  }, 30_000);

  it('3. a refused name (ngtcp2, SNI localhost) reaches nobody and is logged with its reason', async () => {
    const before = [heardAt(wwwIp).length, heardAt(decoyIp).length];
    await replay(wwwIp, 443, ngtcp2.datagrams);
    await waitForDecision('refused localhost', (d) => d.decision === 'blocked' && d.proto === 'quic' && d.reason === 'name-not-allowed' && d.name === 'localhost');
    await sleep(SETTLE_MS);
    expect([heardAt(wwwIp).length, heardAt(decoyIp).length], logger.stdout()).toEqual(before);
  }, 30_000);

  it('4. the allowed flight to a port no rule covers for UDP reaches nobody: udp-needs-ip-rule', async () => {
    const before = logger.stdout().length;
    await replay(wwwIp, 4433, chromium.datagrams);
    await waitForDecision('udp to 4433', (d) => d.decision === 'blocked' && d.proto === 'udp' && d.reason === 'udp-needs-ip-rule' && d.dst === `${wwwIp}:4433`);
    await sleep(SETTLE_MS);
    expect(logger.stdout().length).toBe(before);
  }, 30_000);

  it('5. /stats counts the QUIC gate', async () => {
    const s = (await fx.stats()) as unknown as { nat?: { quic?: { allowed: number; refused: number } } };
    expect(s.nat?.quic, JSON.stringify(s).slice(0, 2000)).toMatchObject({ allowed: 2 });
    expect(s.nat!.quic!.refused).toBeGreaterThanOrEqual(1);
    expect((s as unknown as { limits?: { quic?: unknown } }).limits?.quic).toMatchObject({ max: 256, refused: 0 });
  }, 30_000);

  it('6. an HTTP/3 request from a real client in the guest (ngtcp2 gtlsclient, to a decoy address) completes against the allowed name\'s server', async () => {
    expect(h3Server).toBeDefined();
    // gtlsclient 0.12 sends SNI "localhost" for a numeric host whatever --sni says: it is given the
    // name, which the guest namespace's own hosts file (ip netns exec mounts /etc/netns/NS/hosts)
    // points at the decoy address. Removed in afterAll.
    mkdirSync(netnsEtc, { recursive: true });
    writeFileSync(join(netnsEtc, 'hosts'), `127.0.0.1 localhost\n${decoyIp} ${H3}\n`);
    const r = await fx.guestRun('gtlsclient', ['--no-quic-dump', '--exit-on-all-streams-close', '--timeout=5s', H3, '443', `https://${H3}/index.html`], { timeoutMs: 20_000 });
    const out = r.stdout + r.stderr;
    expect(out, out.slice(-3000) + evidence()).toContain(':status: 200');
    expect(out).toMatch(/hello over h3/);
    await waitForDecision('allowed h3', (d) => d.decision === 'allowed' && d.proto === 'quic' && d.name === H3 && d.dst === `${decoyIp}:443`);
    expect(heardAt(decoyIp), logger.stdout()).toEqual([]);
  }, 40_000);
});
