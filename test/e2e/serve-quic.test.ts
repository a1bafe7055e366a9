/**
 * QUIC by name end to end (issue 17): the real Linux kernel as the guest
 * sends captured real client Initial flights (test/fixtures/quic/, chromium
 * 156 with a 2-packet post-quantum hello; ngtcp2's gtlsclient) over UDP, and
 * Moat decides each flow by the SNI inside, NATing an allowed one to the
 * address IT resolved for the name — whatever address the guest sent to.
 *
 *   www.example.org -> internetAddrs[0]   allowed (--allow www.example.org: UDP 443)
 *   internetAddrs[1]                      where the guest sends (a decoy: must hear nothing)
 *
 * A UDP logger listens on :443 (and :4433) of both addresses in the remote
 * namespace. Network safety: the names are answered only by the test DNS
 * server in the remote namespace (Moat's --resolver); every address routes
 * into our namespaces (the fixture checks it before the guest may name it).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { e2eGate, waitFor, type TrackedProcess } from './harness.js';
import { FIXTURE_TOOLS, startMoatFixture, type MoatFixture } from './moat-fixture.js';
import { UDP_LOGGER_JS, UDP_REPLAY_PY, linesStartingWith } from './egress-support.js';

const gate = e2eGate([...FIXTURE_TOOLS, 'python3']);

const WWW = 'www.example.org';
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

  beforeAll(async () => {
    fx = await startMoatFixture({
      prefix: 'mq7-',
      internetAddresses: 2,
      extraMoatArgs: (topo) => ['--allow', WWW, '--resolver', `${topo.remoteAddr}:53`, '--admit-resolved', topo.internetSubnet, '--decision-log', decisionLogFile],
      dnsZone: (topo) => ({ [WWW]: [{ type: 'A', data: topo.internetAddrs[0]! }] }),
    });
    [wwwIp, decoyIp] = fx.topo.internetAddrs as [string, string];
    logger = await fx.startNodeServer(fx.remoteNs, UDP_LOGGER_JS, ['443', wwwIp, decoyIp]);
  }, 90_000);

  afterAll(async () => {
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
  }, 30_000);
});
