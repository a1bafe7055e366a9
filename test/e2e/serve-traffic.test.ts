/**
 * Rate limits and byte budgets end to end (issue 18's acceptance): the real
 * Linux kernel as the guest behind moat-shim, real clients in it (iperf3,
 * curl), real servers for "the internet" in the remote namespace.
 *
 *   allowed.test -> internetAddrs[0]  --budget 'allowed.test=1MiB': an upload server on :80
 *   other.test   -> internetAddrs[1]  no budget: the same upload server
 *   internetAddrs[2]:5201              iperf3 (an IP rule), under --rate-egress 50Mbit
 *
 * Network safety: every address routes from the root namespace (where Moat
 * dials) into remote via the topology's veth, checked by the fixture
 * (assertRoutesInto) before the guest may name it; curl is given the address
 * with --resolve. "The internet" is 198.18.x.x, so --admit-resolved names it.
 *
 * Figures (iperf3 both ways) are printed; the test asserts only a generous
 * sanity band (the machine is shared): the upload well below an unlimited
 * one and not starved, the download well above the limit.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { e2eGate, killTracked, nsSpawn, waitFor, waitForOutput, type TrackedProcess } from './harness.js';
import { FIXTURE_TOOLS, startMoatFixture, type MoatFixture } from './moat-fixture.js';
import { parseIperfJson } from './bulk-support.js';

const gate = e2eGate([...FIXTURE_TOOLS, 'curl', 'iperf3']);

const ALLOWED = 'allowed.test';
const OTHER = 'other.test';
const MiB = 1024 * 1024;
const RATE_MBIT = 50;

/**
 * An HTTP upload server: counts every byte each connection delivers (at the
 * socket, headers included) and prints "conn N BYTES" when it closes; answers
 * a complete request with 200 and the body's length. Args: ADDR PORT.
 */
const UPLOAD_SERVER_JS = `
const http = require('node:http');
const [addr, port] = process.argv.slice(1);
let next = 0;
const server = http.createServer((req, res) => {
  let n = 0;
  req.on('data', (c) => { n += c.length; });
  req.on('end', () => { res.setHeader('connection', 'close'); res.end('got ' + n + '\\n'); });
});
server.on('connection', (s) => {
  const id = ++next;
  let bytes = 0;
  s.on('data', (c) => { bytes += c.length; });
  s.on('close', () => console.log('conn ' + id + ' ' + bytes));
});
server.listen(Number(port), addr, () => console.log('ready'));
`;

interface DecisionLine {
  decision: string;
  reason: string;
  rule: string | null;
  proto: string;
  name: string | null;
  detail?: string;
}

describe.skipIf(gate.skip)('moat serve rate limits and byte budgets e2e: guest -> moat-shim -> Moat -> remote', () => {
  let fx: MoatFixture;
  const dir = mkdtempSync(join(tmpdir(), 'h18b-traffic-'));
  const decisionLogFile = join(dir, 'decisions.jsonl');
  const upload4 = join(dir, 'upload-4MiB.bin');
  const upload2 = join(dir, 'upload-2MiB.bin');
  let allowedIp: string;
  let otherIp: string;
  let iperfIp: string;
  let allowedSrv: TrackedProcess;
  let otherSrv: TrackedProcess;
  let iperfSrv: TrackedProcess;

  beforeAll(async () => {
    writeFileSync(upload4, randomBytes(4 * MiB));
    writeFileSync(upload2, randomBytes(2 * MiB));
    fx = await startMoatFixture({
      prefix: 'h18b-',
      internetAddresses: 3,
      extraMoatArgs: (topo) => [
        '--allow', ALLOWED,
        '--allow', OTHER,
        '--allow', `${topo.internetAddrs[2]}:5201`,
        '--budget', `${ALLOWED}=1MiB`,
        '--rate-egress', `${RATE_MBIT}Mbit`,
        '--resolver', `${topo.remoteAddr}:53`,
        '--admit-resolved', topo.internetSubnet,
        '--decision-log', decisionLogFile,
      ],
      dnsZone: (topo) => ({
        [ALLOWED]: [{ type: 'A', data: topo.internetAddrs[0]! }],
        [OTHER]: [{ type: 'A', data: topo.internetAddrs[1]! }],
      }),
    });
    [allowedIp, otherIp, iperfIp] = fx.topo.internetAddrs as [string, string, string];
    allowedSrv = await fx.startNodeServer(fx.remoteNs, UPLOAD_SERVER_JS, [allowedIp, '80']);
    otherSrv = await fx.startNodeServer(fx.remoteNs, UPLOAD_SERVER_JS, [otherIp, '80']);
    iperfSrv = nsSpawn(fx.remoteNs, 'iperf3', ['-s', '--forceflush', '-B', iperfIp, '-p', '5201']);
    await waitForOutput(iperfSrv, /Server listening on/, { stream: 'stdout', timeoutMs: 5_000 });
  }, 90_000);

  afterAll(async () => {
    if (iperfSrv) await killTracked(iperfSrv);
    await fx?.stop();
    rmSync(dir, { recursive: true, force: true });
  }, 30_000);

  const evidence = (): string => `\nmoat log tail:\n${fx.moatLog().slice(-3000)}`;
  const decisions = (): DecisionLine[] =>
    readFileSync(decisionLogFile, 'utf8')
      .split('\n')
      .filter((l) => l.trim() !== '')
      .map((l) => JSON.parse(l) as DecisionLine);
  const connBytes = (p: TrackedProcess): number[] => [...p.stdout().matchAll(/^conn \d+ (\d+)$/gm)].map((m) => Number(m[1]));
  const curlUpload = (name: string, ip: string, file: string) =>
    fx.guestRun('curl', ['-sS', '-o', '-', '-w', '\n%{http_code}', '-H', 'Expect:', '--max-time', '20', '--resolve', `${name}:80:${ip}`, '--data-binary', `@${file}`, `http://${name}/up`], {
      timeoutMs: 30_000,
    });

  it('--rate-egress 50Mbit: an iperf3 upload from the guest runs near 50 Mbit/s; the download is not limited', async () => {
    const run = (args: string[]) => fx.guestRun('iperf3', ['-c', iperfIp, '-p', '5201', '-J', '-t', '5', '--connect-timeout', '3000', ...args], { timeoutMs: 30_000 });
    const up = await run([]);
    expect(up.status, `iperf3 upload: ${up.stdout.slice(-1500)}${up.stderr}${evidence()}`).toBe(0);
    const down = await run(['-R']);
    expect(down.status, `iperf3 -R: ${down.stdout.slice(-1500)}${down.stderr}${evidence()}`).toBe(0);
    const u = parseIperfJson(up.stdout);
    const d = parseIperfJson(down.stdout);
    const upMbit = u.receivedBps / 1e6;
    const downMbit = d.receivedBps / 1e6;
    console.log(`iperf3 under --rate-egress ${RATE_MBIT}Mbit: upload ${upMbit.toFixed(1)} Mbit/s (${((upMbit / RATE_MBIT - 1) * 100).toFixed(1)} % off), download ${downMbit.toFixed(0)} Mbit/s`);
    const stats = await fx.stats();
    console.log(`rate stats: ${JSON.stringify((stats['nat'] as { rate?: unknown }).rate)}`);
    // Sanity band only (shared machine): the limit holds and does not starve the upload; the download is not held to it.
    expect(upMbit).toBeGreaterThan(RATE_MBIT * 0.5);
    expect(upMbit).toBeLessThan(RATE_MBIT * 1.3);
    expect(downMbit).toBeGreaterThan(RATE_MBIT * 2);
  }, 90_000);

  it("--budget 'allowed.test=1MiB': a 4 MiB upload is cut after ~1 MiB, the next connection is refused (reason budget), other rules unaffected", async () => {
    const r = await curlUpload(ALLOWED, allowedIp, upload4);
    // Cut: curl sees the connection reset (exit 52/55/56), never a 200.
    expect(r.status, `curl: ${r.stdout}${r.stderr}`).not.toBe(0);
    const received = await waitFor('the server to log the cut connection', () => (connBytes(allowedSrv).length > 0 ? connBytes(allowedSrv) : undefined), { timeoutMs: 5_000 });
    console.log(`budget 1 MiB: the server received ${received[0]} bytes of a 4 MiB upload (headers included); curl exit ${r.status}: ${r.stderr.trim()}`);
    expect(received[0]!).toBeLessThanOrEqual(1.25 * MiB);
    expect(received[0]!).toBeGreaterThan(0.5 * MiB);
    const cut = decisions().find((d) => d.reason === 'budget');
    expect(cut, evidence()).toMatchObject({ decision: 'blocked', rule: ALLOWED, proto: 'tcp' });

    // The next connection: refused with a 403 naming the reason, and recorded.
    const next = await fx.guestRun('curl', ['-sS', '-o', '-', '-w', '\n%{http_code}', '--max-time', '10', '--resolve', `${ALLOWED}:80:${allowedIp}`, `http://${ALLOWED}/again`], { timeoutMs: 20_000 });
    expect(next.stdout, next.stderr).toMatch(/403$/);
    expect(next.stdout).toMatch(/budget/);
    // The decision line is written beside the 403, not before it: wait for it rather than race the log.
    const refusal = await waitFor(
      'the refusal to be recorded with reason budget',
      () => decisions().find((d) => d.reason === 'budget' && d.rule === ALLOWED && d.name === ALLOWED),
      { timeoutMs: 5_000 },
    );
    expect(refusal).toMatchObject({ decision: 'blocked' });
    expect(connBytes(allowedSrv).length, 'the refused connection never reached the server').toBe(1);

    // Other rules: a 2 MiB upload to other.test completes.
    const o = await curlUpload(OTHER, otherIp, upload2);
    expect(o.status, `curl other.test: ${o.stdout}${o.stderr}${evidence()}`).toBe(0);
    expect(o.stdout).toMatch(new RegExp(`got ${2 * MiB}\\n\\n200$`));

    // /stats and GET /allowlist report the budget and its use.
    const stats = await fx.stats();
    const budgets = stats['budgets'] as { rule: string; limit: number; used: number; spent: boolean; refused: number; reset: number }[];
    expect(budgets).toEqual([expect.objectContaining({ rule: ALLOWED, limit: MiB, used: MiB, spent: true })]);
    expect(budgets[0]!.refused).toBeGreaterThanOrEqual(1);
    const al = await fx.api('GET', '/allowlist');
    expect((al.body as { budgets: unknown[] }).budgets).toEqual([expect.objectContaining({ rule: ALLOWED, spent: true })]);
  }, 90_000);

  it('PUT /allowlist takes budgets: a budget naming no rule is refused (400, named), a larger one lets the rule through again, use kept', async () => {
    const rules = (await fx.api('GET', '/allowlist')).body as { allow: string[] };
    const bad = await fx.api('PUT', '/allowlist', { allow: rules.allow, budgets: ['nowhere.test=1MiB'] });
    expect(bad.status).toBe(400);
    expect(bad.text).toMatch(/nowhere\.test/);
    const ok = await fx.api('PUT', '/allowlist', { allow: rules.allow, budgets: [`${ALLOWED}=8MiB`] });
    expect(ok.status, ok.text).toBe(200);
    const al = (await fx.api('GET', '/allowlist')).body as { budgets: { rule: string; used: number; limit: number; spent: boolean }[] };
    expect(al.budgets[0]).toMatchObject({ rule: ALLOWED, used: MiB, limit: 8 * MiB, spent: false });
    const r = await curlUpload(ALLOWED, allowedIp, upload2);
    expect(r.status, `curl: ${r.stdout}${r.stderr}${evidence()}`).toBe(0);
    expect(r.stdout).toMatch(/200$/);
  }, 60_000);
});
