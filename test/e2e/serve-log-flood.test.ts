/**
 * The logs are not a disk-filling channel (issue 14, finding 2): a kernel
 * guest floods the gateway's DNS with queries for unique blocked names
 * (each new to every per-destination limit), and the main log (Moat's
 * stderr) and the --decision-log file each grow by no more than their
 * budget allows: burst + rate x elapsed, plus the summary lines.
 *
 * The flood is a small node script run inside the guest namespace (UDP to
 * the gateway, 192.168.127.1:53, only), bounded in count and in time. It
 * lasts MOAT_LOG_FLOOD_SECONDS (15 by default; 60 to measure the issue's
 * target by hand) at MOAT_LOG_FLOOD_QPS queries per second (8,000).
 *
 * Safety: the only destination is Moat's gateway on the guest's TAP (the
 * test checks the route first); the resolver Moat is given is the
 * topology's DNS server in the remote namespace, and no allowed host needs
 * resolving (the one rule is an address).
 */
import { mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { e2eGate } from './harness.js';
import { FIXTURE_TOOLS, GATEWAY_IP, startMoatFixture, type MoatFixture } from './moat-fixture.js';
import { DEFAULT_LOG_BUDGET, LOG_SUMMARY_INTERVAL_MS } from '../../src/log-budget.js';

const gate = e2eGate([...FIXTURE_TOOLS, 'dig']);
const FLOOD_SECONDS = Number(process.env.MOAT_LOG_FLOOD_SECONDS ?? 15);
const FLOOD_QPS = Number(process.env.MOAT_LOG_FLOOD_QPS ?? 8_000);
/** A summary line is well under this (at most 16 reasons). */
const SUMMARY_BYTES = 2_048;

/**
 * node -e FLOOD_JS GATEWAY QPS SECONDS TAG: A queries for unique names under
 * blocked.test, paced every 10 ms, never more than QPS x SECONDS; prints
 * {"sent","answered","sendErrors","ms"} once the last answers had 1 s.
 */
const FLOOD_JS = `
const dgram = require('node:dgram');
const [gw, qpsText, secondsText, tag] = process.argv.slice(1);
const qps = Number(qpsText), ms = Number(secondsText) * 1000, max = Math.ceil(qps * ms / 1000);
const s = dgram.createSocket('udp4');
let sent = 0, answered = 0, refused = 0, sendErrors = 0;
// Only NOERROR answers are sinkhole decisions; SERVFAIL is Moat's in-flight bound refusing a query under load.
s.on('message', (m) => { if ((m[3] & 15) === 0) answered++; else refused++; });
s.on('error', () => sendErrors++);
// A 40-character label like an exfiltration chunk, unique per query.
const query = (i) => {
  const labels = [(tag + i.toString(36)).padEnd(40, 'a'), 'exfil', 'blocked', 'test'];
  const parts = [Buffer.from([i >> 8 & 255, i & 255, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0])];
  for (const l of labels) parts.push(Buffer.from([l.length]), Buffer.from(l));
  parts.push(Buffer.from([0, 0, 1, 0, 1]));
  return Buffer.concat(parts);
};
const start = Date.now();
const tick = setInterval(() => {
  const elapsed = Date.now() - start;
  // Behind schedule (a busy machine), at most 100 ms worth per tick: the flood never outlasts its time.
  const target = Math.min(max, Math.floor(elapsed * qps / 1000), sent + Math.ceil(qps / 10));
  while (sent < target) s.send(query(sent++), 53, gw, (e) => { if (e) sendErrors++; });
  if (elapsed >= ms || sent >= max) {
    clearInterval(tick);
    setTimeout(() => {
      process.stdout.write(JSON.stringify({ sent, answered, refused, sendErrors, ms: Date.now() - start }) + '\\n');
      s.close();
    }, 1000);
  }
}, 10);
`;

describe.skipIf(gate.skip)('moat serve e2e: a unique-name DNS flood from the guest stays within the log budget', () => {
  let fx: MoatFixture;
  const dir = mkdtempSync(join(tmpdir(), 'mz14l-'));
  const decisionFile = join(dir, 'decisions.jsonl');
  /** Bytes Moat has written to its main log (stderr) so far: the fixture keeps only the tail of the text. */
  let mainBytes = 0;

  beforeAll(async () => {
    fx = await startMoatFixture({
      prefix: 'mz14l-',
      extraMoatArgs: (topo) => ['--allow', `${topo.internetAddrs[0]}:443`, '--resolver', `${topo.remoteAddr}:53`, '--decision-log', decisionFile],
    });
    fx.moat.child.stderr!.on('data', (d: string) => (mainBytes += Buffer.byteLength(d)));
    // The flood's only destination is Moat's gateway, on the guest's TAP.
    const route = await fx.guestRun('ip', ['-o', 'route', 'get', GATEWAY_IP]);
    expect(route.stdout, 'the gateway must route via the guest TAP').toMatch(new RegExp(`\\bdev ${fx.tap}\\b`));
    expect(route.stdout).not.toMatch(/\bvia\b/);
  }, 90_000);

  afterAll(async () => {
    await fx?.stop();
    rmSync(dir, { recursive: true, force: true });
  }, 30_000);

  const decisionBytes = (): number => statSync(decisionFile).size;

  it('a normal start-up and a handful of blocked lookups are logged in full', async () => {
    for (const name of ['one.blocked.test', 'two.blocked.test', 'three.blocked.test']) {
      const r = await fx.guestRun('dig', [`@${GATEWAY_IP}`, '+time=2', '+tries=1', '+short', name, 'A'], { timeoutMs: 10_000 });
      expect(r.stdout.trim(), name).toBe('0.0.0.0');
    }
    await new Promise((r) => setTimeout(r, 500));
    const entries = fx.moatLogEntries();
    for (const name of ['one.blocked.test', 'two.blocked.test', 'three.blocked.test']) {
      expect(entries.some((e) => e['msg'] === 'egress decision' && e['name'] === name), name).toBe(true);
    }
    expect(entries.some((e) => e['msg'] === 'moat ready')).toBe(true);
    expect(entries.some((e) => e['msg'] === 'log lines suppressed')).toBe(false);
  }, 30_000);

  let flood: { sent: number; answered: number; refused: number; sendErrors: number; ms: number };
  let elapsedS = 0;

  it(`${FLOOD_SECONDS} s of ${FLOOD_QPS} queries/s for unique blocked names grow each log by at most burst + rate x elapsed`, async () => {
    const mainBefore = mainBytes;
    const fileBefore = decisionBytes();
    const t0 = performance.now();
    const r = await fx.guestRun(process.execPath, ['-e', FLOOD_JS, GATEWAY_IP, String(FLOOD_QPS), String(FLOOD_SECONDS), `f${Date.now().toString(36)}`], {
      timeoutMs: (FLOOD_SECONDS + 30) * 1000,
    });
    expect(r.status, r.stderr).toBe(0);
    flood = JSON.parse(r.stdout.trim().split('\n').at(-1)!) as typeof flood;
    await new Promise((res) => setTimeout(res, 1_000)); // Moat's last writes reach the file and the pipe
    elapsedS = (performance.now() - t0) / 1000;
    const mainGrowth = mainBytes - mainBefore;
    const fileGrowth = decisionBytes() - fileBefore;
    const summaries = Math.ceil((elapsedS * 1000) / LOG_SUMMARY_INTERVAL_MS) + 2;
    const bound = DEFAULT_LOG_BUDGET.byteBurst + DEFAULT_LOG_BUDGET.bytesPerSec * elapsedS + summaries * SUMMARY_BYTES;
    process.stderr.write(
      `log flood: ${flood.sent} queries sent in ${flood.ms} ms (${Math.round((flood.sent * 1000) / flood.ms)}/s), ${flood.answered} answered, ${flood.refused} refused (SERVFAIL), ${flood.sendErrors} send errors; ` +
        `over ${elapsedS.toFixed(1)} s the main log grew ${mainGrowth} bytes and the decision log ${fileGrowth} bytes (total ${((mainGrowth + fileGrowth) / 1e6).toFixed(2)} MB; bound per log ${Math.round(bound)})\n`,
    );
    // How fast the guest could send and Moat answer depends on the machine (figures above); the bound does not.
    expect(flood.sent).toBeGreaterThan(FLOOD_QPS * FLOOD_SECONDS * 0.1);
    expect(flood.answered, 'Moat answered the flood').toBeGreaterThan(0);
    expect(mainGrowth, 'main log growth').toBeLessThanOrEqual(bound);
    expect(fileGrowth, 'decision log growth').toBeLessThanOrEqual(bound);
  }, (FLOOD_SECONDS + 60) * 1000);

  it('/stats still counts every decision, and what each log suppressed; the summaries say it per reason', async () => {
    expect(flood, 'the flood ran').toBeDefined();
    await new Promise((r) => setTimeout(r, LOG_SUMMARY_INTERVAL_MS + 1_000)); // the summary after the flood ended
    const stats = (await fx.stats()) as unknown as {
      decisions: { blocked: number; suppressedLines: number };
      logs: { main: { written: number; suppressed: number; summaries: number }; decisionLog: { written: number; suppressed: number; summaries: number } };
    };
    // Every query answered with the sinkhole was a decision, whether or not a line was written for it.
    expect(stats.decisions.blocked).toBeGreaterThanOrEqual(flood.answered + 3);
    expect(stats.decisions.blocked, 'Moat kept deciding through the flood').toBeGreaterThan(5_000);
    expect(stats.logs.decisionLog.suppressed).toBeGreaterThan(0);
    expect(stats.logs.main.suppressed).toBeGreaterThan(0);
    // Decision log: every decision is a written line or a suppressed one (none of these names repeats).
    expect(stats.logs.decisionLog.written + stats.logs.decisionLog.suppressed + stats.decisions.suppressedLines).toBe(stats.decisions.blocked);
    // The decision log's summaries (the file is whole) add up to every line it suppressed, per reason.
    const fileSummaries = readFileSync(decisionFile, 'utf8')
      .split('\n')
      .filter((l) => l.includes('"log lines suppressed"'))
      .map((l) => JSON.parse(l) as { suppressed: number; byReason: Record<string, number> });
    expect(fileSummaries.length).toBeGreaterThan(0);
    expect(fileSummaries.reduce((n, s) => n + s.suppressed, 0)).toBe(stats.logs.decisionLog.suppressed);
    expect(fileSummaries.reduce((n, s) => n + (s.byReason['dns-sinkhole'] ?? 0), 0)).toBe(stats.logs.decisionLog.suppressed);
    const main = fx.moatLogEntries().filter((e) => e['msg'] === 'log lines suppressed');
    expect(main.length).toBeGreaterThan(0);
    expect(main.at(-1)).toMatchObject({ level: 'warn', byReason: expect.objectContaining({ 'egress decision': expect.any(Number) }) });
    process.stderr.write(`log flood /stats: decisions ${JSON.stringify(stats.decisions)} logs ${JSON.stringify(stats.logs)} drops ${JSON.stringify((stats as unknown as { drops: unknown }).drops)}\n`);
  }, 30_000);
});
