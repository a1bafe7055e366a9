/**
 * Moat against slirp4netns, passt (as pasta and behind a QEMU socket) and a plain veth pair (the ceiling), side by
 * side on this machine, through the same topology: a guest network namespace
 * whose interface is bridged to the backend, and servers on the host side.
 * See bench/README.md for what each figure means.
 *
 *   npm run bench:compare                 # full run (~10 min on 2 cores)
 *   npm run bench:compare -- --quick      # 1 run per case, fewer cases
 *   npm run bench:compare -- --profile    # Moat under iperf3 with --cpu-prof; top self-time functions
 *   npm run bench:compare -- --ipv6-only  # only the IPv6 case: Moat's backends and slirp4netns, 1 stream each way over IPv6 and IPv4 (paired), the ratio
 *
 * Options: --runs N, --seconds S (iperf3 time), --backends moat,passt,...,
 * --mtus 65520,1500, --idle N (connections for the idle-RSS case), --out FILE,
 * --base-bin OTHER_CHECKOUT/bin/moat.mjs with backend moat-offload-base (A/B
 * of two builds, interleaved in one run).
 * The IPv6 case runs at the largest MTU, for IPV6_BACKENDS (Moat's and
 * slirp4netns: their guests get IPv6 by SLAAC; the IPv6 host alias reaches
 * the host's ::1).
 *
 * Runs as root (namespaces, TAP devices). Every process is tracked by PID and
 * every namespace by name through test/e2e/harness.ts, which removes them on
 * every exit path.
 */
import { existsSync, mkdirSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { cpus } from 'node:os';
import { join, resolve } from 'node:path';
import { checkPrerequisites, cleanupAll, REPO_ROOT } from '../test/e2e/harness.js';
import { BACKENDS, DEFAULT_BACKENDS, backendMissing, IPV6_BACKENDS, MOAT_BACKENDS, startLink, type BackendName, type GuestLink } from './compare/backends.js';
import {
  connectionRate,
  dnsRate,
  idleConnections,
  iperf,
  median,
  requestResponse,
  startServers,
  statusBytes,
  type CpuShare,
  type Direction,
  type IdleSample,
  type Servers,
} from './compare/measure.js';
import { iperfFamilyKey, iperfKey, ipv6Metrics, ipv6Ratios, metricsFor, passtReferenceLines, retransPerGB, svgChart, table, type Figures } from './compare/report.js';

const PREFIX = 'mk7-';
// From the sources or from dist/: results live in the repository's bench/results.
const resultsDir = join(REPO_ROOT, 'bench', 'results');

interface Options {
  quick: boolean;
  profile: boolean;
  /** Only the IPv6 case (IPV6_BACKENDS, largest MTU). */
  ipv6Only: boolean;
  runs: number;
  seconds: number;
  rateSeconds: number;
  backends: BackendName[];
  mtus: number[];
  streams: number[];
  idle: number;
  out: string | undefined;
  /** --profile: what load runs while Moat is profiled (iperf: 1 stream each way; iperf-up / iperf-down: one way; rr; conn). */
  profileLoad: string[];
  /** --base-bin: bin/moat.mjs of another build, run as the moat-offload-base backend. */
  baseBin: string | undefined;
}

function parseArgs(argv: string[]): Options {
  const quick = argv.includes('--quick');
  const value = (flag: string): string | undefined => {
    const i = argv.indexOf(flag);
    return i >= 0 ? argv[i + 1] : undefined;
  };
  const o: Options = {
    quick,
    profile: argv.includes('--profile'),
    ipv6Only: argv.includes('--ipv6-only'),
    runs: Number(value('--runs') ?? (quick ? 1 : 3)),
    seconds: Number(value('--seconds') ?? 3),
    rateSeconds: quick ? 1 : 2,
    backends: (value('--backends')?.split(',') as BackendName[] | undefined) ?? [...DEFAULT_BACKENDS],
    mtus: value('--mtus')?.split(',').map(Number) ?? [65520, 1500],
    streams: quick ? [1] : [1, 4],
    idle: Number(value('--idle') ?? 10_000),
    out: value('--out'),
    profileLoad: value('--profile-load')?.split(',') ?? ['iperf', 'rr', 'conn'],
    baseBin: value('--base-bin'),
  };
  for (const l of o.profileLoad) if (!['iperf', 'iperf-up', 'iperf-down', 'rr', 'conn'].includes(l)) throw new Error(`--profile-load: unknown load ${l} (known: iperf, iperf-up, iperf-down, rr, conn)`);
  for (const b of o.backends) if (!BACKENDS.includes(b)) throw new Error(`unknown backend ${b} (known: ${BACKENDS.join(', ')})`);
  if (o.backends.includes('moat-offload-base') && (o.baseBin === undefined || !existsSync(o.baseBin)))
    throw new Error(`backend moat-offload-base needs --base-bin naming another build's bin/moat.mjs (got ${o.baseBin ?? 'nothing'})`);
  if (o.baseBin !== undefined) o.baseBin = resolve(o.baseBin);
  return o;
}

function log(msg: string): void {
  process.stderr.write(`[bench:compare ${new Date().toISOString().slice(11, 19)}] ${msg}\n`);
}

interface LinkState {
  link: GuestLink;
  servers: Servers;
}

interface Results {
  startedAt: string;
  command: string;
  machine: { cpus: number; model: string; kernel: string };
  options: Omit<Options, 'out' | 'profileLoad'>;
  skipped: Record<string, string>;
  figures: Figures;
  /** Per metric key and backend: the CPU share (% of one core) of each cost process, per run. */
  cpu: Record<string, Partial<Record<BackendName, CpuShare[]>>>;
  /** Peak RSS (VmHWM) of each cost process over the whole MTU block. */
  peakRss: Record<string, Partial<Record<BackendName, Record<string, number>>>>;
  idle: Partial<Record<BackendName, IdleSample | { error: string }>>;
  errors: string[];
}

/** `retransPerGB`: iperf only, the sender's retransmitted segments per GB moved in this run. */
function record(res: Results, key: string, backend: BackendName, value: number, cpu: CpuShare, retransPerGB?: number): void {
  const f = (res.figures[key] ??= {});
  const fig = (f[backend] ??= { median: Number.NaN, runs: [] });
  fig.runs.push(value);
  fig.median = median(fig.runs);
  if (retransPerGB !== undefined) (fig.retransPerGB ??= []).push(retransPerGB);
  const c = (res.cpu[key] ??= {});
  (c[backend] ??= []).push(cpu);
}

/** --base-bin, once parsed: the build the moat-offload-base backend runs. */
let baseBin: string | undefined;

/** `ipv6`: give IPV6_BACKENDS an IPv6 guest too (the IPv6 case). */
async function bringUp(backends: readonly BackendName[], mtu: number, res: Results, ipv6 = false): Promise<Map<BackendName, LinkState>> {
  const up = new Map<BackendName, LinkState>();
  for (const b of backends) {
    const six = ipv6 && IPV6_BACKENDS.includes(b);
    log(`starting ${b} at MTU ${mtu}${six ? ' with IPv6' : ''}`);
    try {
      const link = await startLink(b, { prefix: PREFIX, mtu, ipv6: six, baseBin });
      const servers = await startServers(link).catch(async (e: unknown) => {
        await link.stop();
        throw e;
      });
      up.set(b, { link, servers });
    } catch (e) {
      res.errors.push(`${b} mtu=${mtu}: could not start: ${(e as Error).message}`);
      log(`${b} failed to start: ${(e as Error).message}`);
    }
  }
  return up;
}

async function tearDown(up: Map<BackendName, LinkState>, mtu: number, res: Results): Promise<void> {
  const peaks = (res.peakRss[`mtu=${mtu}`] ??= {});
  for (const [b, { link, servers }] of up) {
    peaks[b] = Object.fromEntries(link.costPids.map((p) => [p.role, statusBytes(p.pid, 'VmHWM')]));
    await servers.stop();
    await link.stop();
  }
  up.clear();
}

/** Run `one` for every backend, `runs` times, interleaved (run 1 of each, run 2 of each...) so load from elsewhere spreads evenly. */
async function eachRun(
  up: Map<BackendName, LinkState>,
  runs: number,
  what: string,
  res: Results,
  one: (s: LinkState, b: BackendName) => Promise<void>,
): Promise<void> {
  for (let r = 0; r < runs; r++) {
    for (const [b, s] of up) {
      try {
        await one(s, b);
      } catch (e) {
        res.errors.push(`${what} via ${b} (run ${r + 1}): ${(e as Error).message.slice(0, 500)}`);
        log(`${what} via ${b} failed: ${(e as Error).message.slice(0, 300)}`);
      }
    }
  }
}

/**
 * One stream each way over IPv6 and, in the same run right after, over IPv4,
 * through every link that has IPv6: the ratio of their medians is what the
 * IPv6 path costs (issue 19 sets no target).
 */
async function ipv6Case(up: Map<BackendName, LinkState>, mtu: number, o: Options, res: Results): Promise<void> {
  const six = new Map([...up].filter(([, s]) => s.link.hostAlias6 !== undefined));
  for (const direction of ['guest->host', 'host->guest'] as Direction[]) {
    log(`IPv6 and IPv4, ${direction}, MTU ${mtu}`);
    await eachRun(six, o.runs, `ipv6 ${direction}`, res, async ({ link, servers }, b) => {
      for (const family of [6, 4] as const) {
        const s = await iperf(link, servers, { direction, streams: 1, seconds: o.seconds, family });
        record(res, iperfFamilyKey(mtu, direction, family), b, s.bps, s.cpu);
      }
    });
  }
}

async function compare(o: Options): Promise<Results> {
  const res: Results = {
    startedAt: new Date().toISOString(),
    command: `node dist/bench/compare.js ${process.argv.slice(2).join(' ')}`.trim(),
    machine: { cpus: cpus().length, model: cpus()[0]?.model ?? '?', kernel: readFileSync('/proc/sys/kernel/osrelease', 'utf8').trim() },
    options: { ...o, out: undefined } as Omit<Options, 'out' | 'profileLoad'>,
    skipped: {},
    figures: {},
    cpu: {},
    peakRss: {},
    idle: {},
    errors: [],
  };
  const backends = o.backends.filter((b) => {
    const why = backendMissing(b);
    if (why !== undefined) res.skipped[b] = why;
    return why === undefined;
  });
  const rrMtu = Math.max(...o.mtus);
  if (o.ipv6Only) {
    const up = await bringUp(backends.filter((b) => IPV6_BACKENDS.includes(b)), rrMtu, res, true);
    try {
      await ipv6Case(up, rrMtu, o, res);
    } finally {
      await tearDown(up, rrMtu, res);
    }
    return res;
  }
  for (const mtu of o.mtus) {
    const up = await bringUp(backends, mtu, res, mtu === rrMtu);
    try {
      for (const direction of ['guest->host', 'host->guest'] as Direction[]) {
        for (const streams of o.streams) {
          const key = iperfKey(mtu, direction, streams);
          log(key);
          await eachRun(up, o.runs, key, res, async ({ link, servers }, b) => {
            const s = await iperf(link, servers, { direction, streams, seconds: o.seconds });
            record(res, key, b, s.bps, s.cpu, retransPerGB(s.retransmits, s.bps, o.seconds));
          });
        }
      }
      if (mtu === rrMtu) {
        log('request/response');
        await eachRun(up, o.runs, 'rr', res, async ({ link, servers }, b) => {
          const s = await requestResponse(link, servers, o.rateSeconds);
          record(res, 'rr perSec', b, s.perSec, s.cpu);
          record(res, 'rr p50Us', b, s.p50Us, s.cpu);
          record(res, 'rr p99Us', b, s.p99Us, s.cpu);
        });
        log('new connections');
        await eachRun(up, o.runs, 'conn', res, async ({ link, servers }, b) => {
          const s = await connectionRate(link, servers, o.rateSeconds);
          if (s.failed > 0) res.errors.push(`conn via ${b}: ${s.failed} failed (${s.firstError ?? ''})`);
          record(res, 'conn perSec', b, s.perSec, s.cpu);
        });
        log('dns');
        await eachRun(up, o.runs, 'dns', res, async ({ link }, b) => {
          const s = await dnsRate(link, o.rateSeconds);
          if (s.failed > 0) res.errors.push(`dns via ${b}: ${s.failed} unanswered or bad`);
          if (s.wrongSource) res.errors.push(`dns via ${b}: ${s.wrongSource} answers from another address than ${link.dnsServer}`);
          record(res, 'dns perSec', b, s.perSec, s.cpu);
        });
        await ipv6Case(up, mtu, o, res);
      }
    } finally {
      await tearDown(up, mtu, res);
    }
  }
  if (o.idle > 0) await idleCase(backends, rrMtu, o.idle, res);
  return res;
}

/**
 * RSS with N idle connections, each backend freshly started (what the
 * connections cost, not what earlier throughput cases left mapped: a
 * backend that just moved gigabytes holds more memory, Moat ~175 MiB and
 * slirp4netns gigabytes at MTU 65520, before the first idle connection).
 */
async function idleCase(backends: readonly BackendName[], mtu: number, n: number, res: Results): Promise<void> {
  for (const b of backends) {
    if (b === 'veth') continue; // nothing to weigh for the kernel's own veth
    let up = await bringUp([b], mtu, res);
    // One retry: a fresh start can race the previous backend's servers for a port.
    if (!up.has(b)) up = await bringUp([b], mtu, res);
    const state = up.get(b);
    try {
      if (state === undefined) continue;
      log(`${n} idle connections via ${b} (fresh, MTU ${mtu})`);
      res.idle[b] = await idleConnections(state.link, state.servers, n);
    } catch (e) {
      res.idle[b] = { error: (e as Error).message.slice(0, 500) };
    } finally {
      for (const [, { link, servers }] of up) {
        await servers.stop();
        await link.stop();
      }
    }
  }
}

// ------------------------------------------------------------------ profile

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  hitCount?: number;
}

/** Self time per function (by name, file and line) from a .cpuprofile, as a share of all samples. */
export function topSelfTime(profile: { nodes: ProfileNode[]; samples: number[]; timeDeltas: number[] }, n: number): Array<{ fn: string; selfMs: number; share: number }> {
  const byNode = new Map<number, number>();
  profile.samples.forEach((id, i) => byNode.set(id, (byNode.get(id) ?? 0) + (profile.timeDeltas[i] ?? 0)));
  const byFn = new Map<string, number>();
  let total = 0;
  for (const node of profile.nodes) {
    const us = byNode.get(node.id) ?? 0;
    total += us;
    const cf = node.callFrame;
    const file = cf.url.replace(/^file:\/\//, '').replace(/^.*\/(dist|node_modules)\//, '$1/');
    const fn = `${cf.functionName || '(anonymous)'} ${file}${file ? `:${cf.lineNumber + 1}` : ''}`;
    byFn.set(fn, (byFn.get(fn) ?? 0) + us);
  }
  return [...byFn.entries()]
    .sort((a, b) => b[1] - a[1])
    .slice(0, n)
    .map(([fn, us]) => ({ fn, selfMs: Math.round(us / 1000), share: Math.round((us / total) * 1000) / 10 }));
}

async function profile(o: Options): Promise<void> {
  const dir = join(resultsDir, 'profile');
  mkdirSync(dir, { recursive: true });
  const before = new Set(readdirSync(dir));
  const mtu = Math.max(...o.mtus);
  // The first Moat backend named by --backends (default: moat, through the relay).
  const backend = o.backends.find((b) => MOAT_BACKENDS.includes(b)) ?? 'moat';
  const link = await startLink(backend, { prefix: PREFIX, mtu, moatNodeArgs: ['--cpu-prof', '--cpu-prof-dir', dir], baseBin: o.baseBin });
  const servers = await startServers(link);
  const out: Record<string, unknown> = { command: `${process.argv.slice(1).join(' ')}`, backend, mtu };
  const load = new Set(o.profileLoad);
  try {
    for (const direction of ['guest->host', 'host->guest'] as Direction[]) {
      // iperf: both directions; iperf-up / iperf-down: guest->host / host->guest alone.
      if (!load.has('iperf') && !load.has(direction === 'guest->host' ? 'iperf-up' : 'iperf-down')) continue;
      const s = await iperf(link, servers, { direction, streams: 1, seconds: 5 });
      out[direction] = { gbps: s.bps / 1e9, cpu: s.cpu };
      log(`profile run ${direction}: ${(s.bps / 1e9).toFixed(2)} Gbit/s, cpu ${JSON.stringify(s.cpu)}`);
    }
    if (load.has('rr')) {
      const rr = await requestResponse(link, servers, 5);
      out.rr = rr;
      log(`profile run request/response: ${Math.round(rr.perSec)}/s, p50 ${Math.round(rr.p50Us)} us, p99 ${Math.round(rr.p99Us)} us`);
    }
    if (load.has('conn')) {
      const conn = await connectionRate(link, servers, 5);
      out.conn = conn;
      log(`profile run new connections: ${Math.round(conn.perSec)}/s`);
    }
  } finally {
    await servers.stop();
    await link.stop(); // SIGTERM: Moat exits cleanly and node writes the profile
  }
  const fresh = readdirSync(dir).filter((f) => f.endsWith('.cpuprofile') && !before.has(f));
  if (fresh.length === 0) throw new Error(`no .cpuprofile written in ${dir} (did Moat exit cleanly on SIGTERM?)`);
  const file = join(dir, fresh[0]!);
  const top = topSelfTime(JSON.parse(readFileSync(file, 'utf8')), 25);
  out.profile = file;
  out.top = top;
  writeFileSync(join(resultsDir, `profile-mtu${mtu}.json`), JSON.stringify(out, null, 2) + '\n');
  console.log(`top self time (${backend}, load ${o.profileLoad.join('+')}, MTU ${mtu}; ${file}):`);
  for (const t of top) console.log(`${String(t.share).padStart(5)}%  ${String(t.selfMs).padStart(6)} ms  ${t.fn}`);
}

// ------------------------------------------------------------------ main

async function main(): Promise<void> {
  const o = parseArgs(process.argv.slice(2));
  baseBin = o.baseBin;
  const pre = checkPrerequisites(['ip', 'iperf3', 'python3', 'busybox', 'unshare', 'cc']);
  if (!pre.ok) throw new Error(`bench:compare needs: ${pre.problems.join('; ')}`);
  mkdirSync(resultsDir, { recursive: true });
  if (o.profile) {
    await profile(o);
    return;
  }
  const t0 = Date.now();
  const res = await compare(o);
  const rrMtu = Math.max(...o.mtus);
  const backends = o.backends.filter((b) => res.skipped[b] === undefined && (!o.ipv6Only || IPV6_BACKENDS.includes(b)));
  const metrics = o.ipv6Only ? ipv6Metrics(rrMtu) : metricsFor(o.mtus, o.streams, rrMtu);
  const text = [table(res.figures, metrics, backends), ...passtReferenceLines(res.figures, metrics)].join('\n');
  console.log(text);
  for (const line of ipv6Ratios(res.figures, rrMtu, backends)) console.log(line);
  for (const [b, why] of Object.entries(res.skipped)) console.log(`skipped ${b}: ${why}`);
  for (const [mtu, peaks] of Object.entries(res.peakRss)) {
    for (const [b, p] of Object.entries(peaks)) {
      console.log(`peak RSS ${mtu} ${b}: ${Object.entries(p).map(([r, v]) => `${r} ${(v / 2 ** 20).toFixed(1)} MiB`).join(', ')}`);
    }
  }
  for (const [b, s] of Object.entries(res.idle)) {
    if ('error' in s) console.log(`idle ${b}: ERROR ${s.error}`);
    else
      console.log(
        `idle ${b}: ${s.connected}/${s.requested} connections open (${s.failed} failed${s.firstError ? `: ${s.firstError}` : ''}); RSS ` +
          Object.keys(s.rssIdle)
            .map((r) => `${r} ${(s.rssBefore[r]! / 2 ** 20).toFixed(1)} -> ${(s.rssIdle[r]! / 2 ** 20).toFixed(1)} MiB`)
            .join(', '),
      );
  }
  for (const e of res.errors) console.log(`error: ${e}`);
  const seconds = Math.round((Date.now() - t0) / 1000);
  console.log(`took ${seconds} s`);
  const stamp = res.startedAt.replace(/[:.]/g, '-');
  const name = o.ipv6Only ? 'ipv6' : o.quick ? 'quick' : 'full';
  const jsonFile = o.out ?? join(resultsDir, `compare-${name}-${stamp}.json`);
  writeFileSync(jsonFile, JSON.stringify({ ...res, seconds, table: text }, null, 2) + '\n');
  writeFileSync(join(resultsDir, `latest-${name}.json`), JSON.stringify({ ...res, seconds, table: text }, null, 2) + '\n');
  writeFileSync(
    join(resultsDir, `compare-${name}.svg`),
    svgChart(res.figures, metrics, backends, `${o.ipv6Only ? 'Moat over IPv6 and IPv4' : 'Moat vs passt, slirp4netns and veth'} (${res.machine.cpus} cores, ${res.startedAt.slice(0, 10)}, medians of ${o.runs})`),
  );
  log(`wrote ${jsonFile} and ${join(resultsDir, `compare-${name}.svg`)}`);
}

main()
  .catch((e: unknown) => {
    process.stderr.write(`bench:compare failed: ${(e as Error).stack ?? String(e)}\n`);
    process.exitCode = 1;
  })
  .finally(() => cleanupAll());
