/**
 * Server-closed connection churn through a real Linux guest (issue 16's
 * target: "1,000 server-closed connections per second for 120 s from a
 * guest: zero refused, memory bounded"), shared by the e2e test
 * (test/e2e/tcp-churn.test.ts, a short run) and the bench (bench/tcp-churn.ts,
 * the full length).
 *
 *   guest netns: churn-tool (C, test/e2e/churn-tool.c) -> Moat's host alias
 *     | TAP, moat-shim (relay, or --exec with the TAP handed over)
 *   moat serve: NAT dials the host alias at 127.0.0.1
 *   root namespace 127.0.0.1: a node server that writes one byte and closes
 *     first, so Moat's side of each guest connection sends the first FIN and
 *     Moat holds the TIME-WAIT (the guest, the passive closer, holds none).
 *
 * While the client runs, Moat's /stats (flows, limits) and RSS are sampled
 * every `sampleMs`. Every process is tracked by PID and the namespaces by
 * name (the fixture), and the client's destination is the fixture's checked
 * host alias.
 */
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { killTracked, REPO_ROOT, spawnTracked, waitForOutput, type TrackedProcess } from './harness.js';
import { HOST_IP, startMoatFixture, type MoatFixture, type MoatFixtureOptions } from './moat-fixture.js';

/** One byte, then the server's FIN: the host server closes first. Prints "ready PORT". */
const ONE_BYTE_CLOSE_FIRST_JS = `
const net = require('node:net');
const [addr, port] = process.argv.slice(1);
const server = net.createServer((s) => { s.on('error', () => {}); s.end('k'); });
server.listen({ port: Number(port), host: addr, backlog: 4096 }, () => console.log('ready ' + server.address().port));
`;

export interface ChurnOptions {
  rate: number;
  seconds: number;
  /** /stats and RSS every sampleMs (default 2000). */
  sampleMs?: number;
  /** How the TAP reaches Moat (default "exec" with receive offload: the TAP handed to Moat, as bench:compare's moat-offload). */
  link?: 'relay' | 'exec';
  /** Another Moat launcher (a base build, for an A/B). */
  moatBin?: string;
  /** Extra node flags for Moat (e.g. --cpu-prof). */
  nodeArgs?: string[];
  /** Extra `moat serve` flags (e.g. a small --max-time-wait). */
  extraMoatArgs?: string[];
  /** Called with every sample as it is taken (progress for the bench). */
  onSample?: (s: ChurnSample) => void;
}

/** churn-tool's final line (see test/e2e/churn-tool.c). */
export interface ChurnClientReport {
  done: true;
  rate: number;
  seconds: number;
  started: number;
  ok: number;
  refused: number;
  reset: number;
  timeout: number;
  empty: number;
  local: number;
  other: number;
  elapsedS: number;
  startedPerSec: number;
  maxLagMs: number;
  maxInFlight: number;
  blockedByInFlight: number;
  connectUs: { p50: number; p99: number; max: number };
  firstError: string;
}

export interface ChurnSample {
  /** Seconds since the client started. */
  t: number;
  /** Connections the client finished so far (ok) and refused so far. */
  ok: number;
  refused: number;
  rssBytes: number;
  tcpConnections: number;
  tcpTimeWait: number;
  timeWaitRecycled: number;
  tcpFlowsRefused: number;
}

export interface ChurnResult {
  client: ChurnClientReport;
  samples: ChurnSample[];
  /** Moat's RSS before the client started, its peak while sampled, and after the client finished. */
  rss: { start: number; peak: number; end: number };
  tcpTimeWaitMax: number;
  tcpConnectionsMax: number;
  maxTimeWait: number;
  /** TIME-WAIT records dropped early (oldest first) because the table was at its bound, over the run. */
  timeWaitRecycled: number;
  /** /stats.limits.tcpFlows.refused at the end minus at the start (SYNs answered RST for the flow limit). */
  flowLimitRefused: number;
  /** Stack drops over the run (reason -> count), only the ones that grew. */
  drops: Record<string, number>;
  /** Guest TCP counters over the run (from the guest namespace's /proc/net/snmp). */
  guestTcp: { activeOpens: number; attemptFails: number; outRsts: number; retransSegs: number };
  moatLink: 'relay' | 'exec';
  /** Moat's CPU time over the client's run, seconds (system time includes the guest kernel's receive path, run inside Moat's writes to the TAP). */
  moatCpuS: { user: number; sys: number };
  /** Frames the guest's TAP dropped over the run (its qdisc full: Moat did not read in time; its rx side: Moat wrote faster than the guest took). */
  guestTapDrops: { tx: number; rx: number };
}

/** Compile churn-tool.c into `dir` (cc, as flood-tool.c is compiled); returns the binary's path. */
export function buildChurnTool(dir: string): string {
  const bin = join(dir, 'churn-tool');
  execFileSync('cc', ['-O2', '-Wall', '-o', bin, join(REPO_ROOT, 'test', 'e2e', 'churn-tool.c')], { timeout: 60_000 });
  return bin;
}

function rssOf(pid: number): number {
  try {
    const m = /^VmRSS:\s+(\d+)\s+kB$/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) * 1024 : Number.NaN;
  } catch {
    return Number.NaN;
  }
}

/** utime and stime of a process, seconds (NaN once it is gone). */
function cpuSeconds(pid: number): { user: number; sys: number } {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return { user: Number(f[11]) / 100, sys: Number(f[12]) / 100 }; // USER_HZ
  } catch {
    return { user: Number.NaN, sys: Number.NaN };
  }
}

async function tapDrops(fx: MoatFixture): Promise<{ tx: number; rx: number }> {
  const read = async (what: string): Promise<number> => Number((await fx.guestRun('cat', [`/sys/class/net/${fx.tap}/statistics/${what}`])).stdout.trim());
  return { tx: await read('tx_dropped'), rx: await read('rx_dropped') };
}

interface LimitsView {
  tcpFlows?: { refused?: number };
  timeWait?: { max?: number; current?: number; recycled?: number };
}

async function guestTcp(fx: MoatFixture): Promise<Record<string, number>> {
  const r = await fx.guestRun('cat', ['/proc/net/snmp']);
  const lines = r.stdout.split('\n').filter((l) => l.startsWith('Tcp:'));
  const names = lines[0]!.split(/\s+/).slice(1);
  const values = lines[1]!.split(/\s+/).slice(1).map(Number);
  return Object.fromEntries(names.map((n, i) => [n, values[i]!]));
}

/** Bring up a fixture, run the churn, tear everything down; the figures. */
export async function runChurn(o: ChurnOptions): Promise<ChurnResult> {
  const link = o.link ?? 'exec';
  const fixtureOptions: MoatFixtureOptions = {
    prefix: 'mz16c-',
    link,
    offload: link === 'exec',
    moatBin: o.moatBin,
    logLevel: 'info',
    extraMoatArgs: o.extraMoatArgs ?? [],
    nodeArgs: o.nodeArgs ?? [],
  };
  const fx = await startMoatFixture(fixtureOptions);
  let server: TrackedProcess | undefined;
  let client: TrackedProcess | undefined;
  try {
    const tool = buildChurnTool(fx.dir);
    // Moat dials its host alias at the host's 127.0.0.1 (checked by the fixture: loopback).
    server = spawnTracked(process.execPath, ['-e', ONE_BYTE_CLOSE_FIRST_JS, '127.0.0.1', '0']);
    const port = Number(/ready (\d+)/.exec(await waitForOutput(server, /^ready \d+/m, { stream: 'stdout', timeoutMs: 15_000 }))![0].split(' ')[1]);
    // The guest's default route is Moat's, but the host alias is on-link anyway: check it leaves by the TAP.
    const via = (await fx.guestRun('ip', ['-4', 'route', 'get', HOST_IP])).stdout;
    if (!new RegExp(`\\bdev ${fx.tap}\\b`).test(via)) throw new Error(`guest: ${HOST_IP} does not route via ${fx.tap}: ${via}`);
    const moatPid = fx.moat.child.pid!;
    const stats0 = await fx.stats();
    const limits0 = (stats0['limits'] ?? {}) as LimitsView;
    const tcp0 = await guestTcp(fx);
    const rssStart = rssOf(moatPid);
    const cpu0 = cpuSeconds(moatPid);
    const tap0 = await tapDrops(fx);
    const t0 = Date.now();
    client = fx.guestSpawn(tool, [HOST_IP, String(port), String(o.rate), String(o.seconds)]);
    const samples: ChurnSample[] = [];
    const sample = async (): Promise<void> => {
      const s = await fx.stats();
      const limits = (s['limits'] ?? {}) as LimitsView;
      const lines = client!.stdout().trim().split('\n');
      const last = lines.length > 0 && lines.at(-1)!.startsWith('{') ? (JSON.parse(lines.at(-1)!) as { ok?: number; refused?: number }) : {};
      const one: ChurnSample = {
        t: (Date.now() - t0) / 1000,
        ok: last.ok ?? 0,
        refused: last.refused ?? 0,
        rssBytes: rssOf(moatPid),
        tcpConnections: s.flows['tcpConnections'] ?? 0,
        tcpTimeWait: s.flows['tcpTimeWait'] ?? 0,
        timeWaitRecycled: limits.timeWait?.recycled ?? 0,
        tcpFlowsRefused: (limits.tcpFlows?.refused ?? 0) - (limits0.tcpFlows?.refused ?? 0),
      };
      samples.push(one);
      o.onSample?.(one);
    };
    const sampleMs = o.sampleMs ?? 2_000;
    while (client.child.exitCode === null && client.child.signalCode === null) {
      await Promise.race([client.exited, new Promise((r) => setTimeout(r, sampleMs))]);
      await sample();
    }
    await client.closed;
    const exit = await client.exited;
    const finalLine = client.stdout().split('\n').find((l) => l.startsWith('{"done"'));
    if (exit.code !== 0 || finalLine === undefined) throw new Error(`churn-tool exited ${exit.code ?? exit.signal}: ${client.stderr().slice(-2000)}`);
    const report = JSON.parse(finalLine) as ChurnClientReport;
    // RSS after the client finished (TIME-WAIT records still held: they last 60 s).
    const stats1 = await fx.stats();
    const limits1 = (stats1['limits'] ?? {}) as LimitsView;
    const tcp1 = await guestTcp(fx);
    const rssEnd = rssOf(moatPid);
    const cpu1 = cpuSeconds(moatPid);
    const tap1 = await tapDrops(fx);
    const drops: Record<string, number> = {};
    for (const [k, v] of Object.entries(stats1.drops)) {
      const d = v - (stats0.drops[k] ?? 0);
      if (d > 0) drops[k] = d;
    }
    return {
      client: report,
      samples,
      rss: { start: rssStart, peak: Math.max(rssStart, rssEnd, ...samples.map((s) => s.rssBytes)), end: rssEnd },
      tcpTimeWaitMax: Math.max(0, ...samples.map((s) => s.tcpTimeWait), stats1.flows['tcpTimeWait'] ?? 0),
      tcpConnectionsMax: Math.max(0, ...samples.map((s) => s.tcpConnections)),
      maxTimeWait: limits1.timeWait?.max ?? Number.NaN,
      timeWaitRecycled: (limits1.timeWait?.recycled ?? 0) - (limits0.timeWait?.recycled ?? 0),
      flowLimitRefused: (limits1.tcpFlows?.refused ?? 0) - (limits0.tcpFlows?.refused ?? 0),
      drops,
      guestTcp: {
        activeOpens: tcp1['ActiveOpens']! - tcp0['ActiveOpens']!,
        attemptFails: tcp1['AttemptFails']! - tcp0['AttemptFails']!,
        outRsts: tcp1['OutRsts']! - tcp0['OutRsts']!,
        retransSegs: tcp1['RetransSegs']! - tcp0['RetransSegs']!,
      },
      moatLink: link,
      moatCpuS: { user: cpu1.user - cpu0.user, sys: cpu1.sys - cpu0.sys },
      guestTapDrops: { tx: tap1.tx - tap0.tx, rx: tap1.rx - tap0.rx },
    };
  } finally {
    if (client) await killTracked(client).catch(() => {});
    if (server) await killTracked(server).catch(() => {});
    await fx.stop();
  }
}

/** One line for a log or a report. */
export function describeChurn(r: ChurnResult): string {
  const c = r.client;
  const mb = (b: number): string => (b / 2 ** 20).toFixed(1);
  return (
    `${c.started} server-closed connections asked at ${c.rate}/s for ${c.seconds} s through a Linux guest (link ${r.moatLink}): ` +
    `started at ${c.startedPerSec}/s (max lag ${c.maxLagMs} ms, max in flight ${c.maxInFlight}); ok ${c.ok}, refused ${c.refused}, reset ${c.reset}, ` +
    `timeout ${c.timeout}, empty ${c.empty}, local ${c.local}, other ${c.other}${c.firstError ? ` (first: ${c.firstError})` : ''}; ` +
    `connect p50 ${c.connectUs.p50} us, p99 ${c.connectUs.p99} us, max ${c.connectUs.max} us; ` +
    `Moat TIME-WAIT max ${r.tcpTimeWaitMax} (bound ${r.maxTimeWait}, recycled ${r.timeWaitRecycled}), connections max ${r.tcpConnectionsMax}, flow-limit refusals ${r.flowLimitRefused}; ` +
    `RSS start ${mb(r.rss.start)} MiB, peak ${mb(r.rss.peak)} MiB, end ${mb(r.rss.end)} MiB; ` +
    `Moat CPU user ${r.moatCpuS.user.toFixed(1)} s + sys ${r.moatCpuS.sys.toFixed(1)} s (${(((r.moatCpuS.user + r.moatCpuS.sys) * 1e6) / Math.max(1, c.ok)).toFixed(0)} us per connection); guest TAP drops tx ${r.guestTapDrops.tx} rx ${r.guestTapDrops.rx}; ` +
    `guest TCP: active opens ${r.guestTcp.activeOpens}, attempt fails ${r.guestTcp.attemptFails}, RSTs sent ${r.guestTcp.outRsts}, retransmitted ${r.guestTcp.retransSegs}; ` +
    `drops ${JSON.stringify(r.drops)}`
  );
}
