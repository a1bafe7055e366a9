/**
 * `moat host` with real kernel guests: K network namespaces, each a guest
 * whose TAP moat-shim bridges to its own network, each network with its own
 * allowlist (guest i may resolve and fetch g<i>.mh6.test only). Measures
 * the daemon's RSS with K networks and no guest, then with every guest
 * attached and leased (udhcpc), and checks that every guest resolves and
 * fetches its own name while the next guest's name is sinkholed for it,
 * all guests at once.
 *
 * Needs root (namespaces), busybox, dig, curl, a C compiler for moat-shim.
 * Run from dist/ (npm run build):
 *
 *   node dist/bench/host-guests.js [--guests 10] [--workers N] [--load [--seconds 5]] [--out FILE]
 *
 * Without --workers the daemon places networks as it does by default (one
 * worker thread per core).
 *
 * --load (K >= 2) then measures, between guests 0 and 1: guest 1's TCP
 * request/response p99 alone and while guest 0 runs iperf3 flat out
 * (fairness), and iperf3 throughput of guest 0 alone next to guests 0 and 1
 * at once (what a second guest adds: compare --workers 0 and 2), with the CPU
 * each Moat thread used and how busy the machine was meanwhile. --reverse:
 * the guests download (iperf3 -R) instead of uploading.
 */
import { chmodSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { execFile } from 'node:child_process';
import { request } from 'node:http';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { cleanupAll, createTopology, killTracked, nsRunAsync, nsSpawn, spawnTracked, startShim, waitFor, waitForOutput, type Topology, type TrackedProcess } from '../test/e2e/harness.js';
import { DNS_SERVER_JS, GATEWAY_IP, HTTP_SERVER_JS, MOAT_BIN } from '../test/e2e/moat-fixture.js';
import { parseIperfJson } from '../test/e2e/bulk-support.js';
import { defaultWorkers } from '../src/host-config.js';
import { ECHO_SERVER_JS, parseClientJson, RR_CLIENT_PY } from './compare/scripts.js';

const { values } = parseArgs({
  options: { guests: { type: 'string', default: '10' }, workers: { type: 'string' }, load: { type: 'boolean', default: false }, reverse: { type: 'boolean', default: false }, seconds: { type: 'string', default: '5' }, out: { type: 'string' } },
});
const LOAD = values.load === true;
/** The flooding guest downloads (iperf3 -R: host -> guest) instead of uploading. */
const REVERSE = values.reverse === true;
const SECONDS = Number(values.seconds);
const K = Number(values.guests);
const WORKERS = values.workers === undefined ? defaultWorkers() : Number(values.workers);
const TAP = 'moat0';

const UDHCPC_SCRIPT = `#!/bin/sh
case "$1" in
  deconfig) ip -4 addr flush dev "$interface"; ip link set dev "$interface" up ;;
  bound|renew)
    ip -4 addr flush dev "$interface"
    ip addr add "$ip/\${mask:-24}" dev "$interface" || exit 1
    for r in $router; do ip route replace default via "$r" dev "$interface" || exit 1; break; done ;;
esac
exit 0
`;

function rssKiB(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) : NaN;
}

function post(socketPath: string, body: unknown): Promise<number> {
  return new Promise((resolve, reject) => {
    const req = request({ socketPath, method: 'POST', path: '/networks' }, (res) => {
      res.resume();
      res.on('end', () => resolve(res.statusCode!));
    });
    req.on('error', reject);
    req.end(JSON.stringify(body));
  });
}

/**
 * A command in a namespace, its output read to the end: the harness's
 * nsRunAsync settles on 'exit', which under load can come before the last
 * stdout chunk is read (seen here: dig exit 0 with no output).
 */
function nsRun(ns: string, cmd: string, args: string[], timeoutMs = 20_000): Promise<{ status: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile('ip', ['netns', 'exec', ns, cmd, ...args], { timeout: timeoutMs }, (err, stdout, stderr) => {
      resolve({ status: err ? ((err as { code?: number }).code ?? 1) : 0, stdout, stderr });
    });
  });
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

async function main(): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'moat-bench-guests-'));
  const script = join(dir, 'udhcpc.sh');
  writeFileSync(script, UDHCPC_SCRIPT);
  chmodSync(script, 0o755);
  const procs: TrackedProcess[] = [];
  const topos: Topology[] = [];
  const api = join(dir, 'host.sock');
  const result: Record<string, unknown> = { date: new Date().toISOString(), guests: K, workers: WORKERS, reverse: REVERSE, loadBefore: loadavg().map((l) => +l.toFixed(2)) };
  try {
    for (let i = 0; i < K; i++) {
      const topo = createTopology({ prefix: `mh6g${i}-`, internetAddresses: 1 });
      topos.push(topo);
      topo.assertRoutes([topo.remoteAddr, ...topo.internetAddrs]);
      // Every remote knows every guest's name; only the network's allowlist decides who may see which.
      const zone: Record<string, { type: string; data: string }[]> = {};
      for (let j = 0; j < K; j++) zone[`g${j}.mh6.test`] = [{ type: 'A', data: topo.internetAddrs[0]! }];
      const dns = nsSpawn(topo.remoteNs, process.execPath, ['-e', DNS_SERVER_JS, topo.remoteAddr, '53', JSON.stringify(zone)]);
      const http = nsSpawn(topo.remoteNs, process.execPath, ['-e', HTTP_SERVER_JS, topo.internetAddrs[0]!, '80', `remote${i}`]);
      procs.push(dns, http);
      await waitForOutput(dns, /^ready/m, { stream: 'stdout', timeoutMs: 20_000 });
      await waitForOutput(http, /^ready/m, { stream: 'stdout', timeoutMs: 20_000 });
    }
    const moat = spawnTracked(process.execPath, [MOAT_BIN, 'host', '--api', `unix://${api}`, '--workers', String(WORKERS), '--log-format', 'json', '--log-level', 'warn']);
    procs.push(moat);
    await waitFor('moat host API', () => rssKiB(moat.child.pid!) > 0 && existsSocket(api), { timeoutMs: 20_000 });
    await sleep(1000);
    const rss0 = rssKiB(moat.child.pid!);
    for (let i = 0; i < K; i++) {
      const status = await post(api, {
        name: `g${i}`,
        'listen-qemu': `unix://${join(dir, `g${i}.sock`)}`,
        // With --load the guest also reaches its remote's address (iperf3, echo: nothing to peek at).
        allow: [`g${i}.mh6.test`, ...(LOAD ? [topos[i]!.internetAddrs[0]!] : [])],
        resolver: `${topos[i]!.remoteAddr}:53`,
        // The test's "internet" addresses are in 198.18.0.0/15 (benchmarking), which the rebinding guard refuses.
        'admit-resolved': '198.18.0.0/15',
      });
      if (status !== 201) throw new Error(`POST g${i}: ${status}`);
    }
    await sleep(1000);
    const rssNetworks = rssKiB(moat.child.pid!);
    for (let i = 0; i < K; i++) {
      procs.push(await startShim(['tap', '--dev', TAP, '--netns', topos[i]!.guestNs, '--connect', `unix://${join(dir, `g${i}.sock`)}`], 20_000));
    }
    const leased = await Promise.all(
      topos.map((t) => nsRunAsync(t.guestNs, 'busybox', ['udhcpc', '-i', TAP, '-n', '-q', '-f', '-t', '5', '-T', '1', '-s', script], { timeoutMs: 30_000 })),
    );
    const unleased = leased.filter((r) => r.status !== 0).length;
    await sleep(2000);
    const rssGuests = rssKiB(moat.child.pid!);

    // All guests at once: own name resolves and fetches, the next guest's name is sinkholed.
    const checks = await Promise.all(
      topos.map(async (t, i) => {
        const own = await nsRun(t.guestNs, 'dig', [`@${GATEWAY_IP}`, '+short', '+time=3', '+tries=2', `g${i}.mh6.test`, 'A']);
        const other = await nsRun(t.guestNs, 'dig', [`@${GATEWAY_IP}`, '+short', '+time=3', '+tries=2', `g${(i + 1) % K}.mh6.test`, 'A']);
        const fetch = await nsRun(t.guestNs, 'curl', ['-sS', '--max-time', '10', `http://g${i}.mh6.test/`, '--resolve', `g${i}.mh6.test:80:${own.stdout.trim()}`]);
        if (process.env['BENCH_DEBUG']) {
          const stats = await new Promise<string>((resolve) => {
            const req = request({ socketPath: api, path: `/networks/g${i}/stats` }, (res) => {
              let text = '';
              res.on('data', (d: Buffer) => (text += d));
              res.on('end', () => resolve(text));
            });
            req.end();
          });
          const st = JSON.parse(stats) as { frames: unknown; drops: unknown; nat: { dns?: unknown } };
          console.error(i, JSON.stringify({ own: [own.status, own.stdout + own.stderr], other: other.stdout, fetch: fetch.stdout + fetch.stderr, want: t.internetAddrs[0], frames: st.frames, drops: st.drops }));
        }
        return {
          own: own.stdout.trim() === t.internetAddrs[0],
          otherSinkholed: other.stdout.trim() === '0.0.0.0',
          fetched: fetch.stdout.startsWith(`remote${i} /`),
        };
      }),
    );
    if (LOAD && K >= 2) result['load'] = await measureLoad(topos, procs, moat.child.pid!);
    result['rss'] = {
      noNetworkMiB: +(rss0 / 1024).toFixed(1),
      withNetworksMiB: +(rssNetworks / 1024).toFixed(1),
      withGuestsMiB: +(rssGuests / 1024).toFixed(1),
      perNetworkKiB: Math.round((rssNetworks - rss0) / K),
      perNetworkWithGuestKiB: Math.round((rssGuests - rss0) / K),
    };
    result['unleased'] = unleased;
    result['ownNameResolved'] = checks.filter((c) => c.own).length;
    result['otherNameSinkholed'] = checks.filter((c) => c.otherSinkholed).length;
    result['fetched'] = checks.filter((c) => c.fetched).length;
  } finally {
    for (const p of procs.reverse()) await killTracked(p, 'SIGKILL').catch(() => {});
    for (const t of topos) t.destroy();
    cleanupAll();
    rmSync(dir, { recursive: true, force: true });
  }
  result['loadAfter'] = loadavg().map((l) => +l.toFixed(2));
  const text = JSON.stringify(result, null, 2);
  console.log(text);
  if (values.out !== undefined) writeFileSync(values.out, `${text}\n`);
}

/** Fairness and added throughput between guests 0 and 1 (servers in their remotes). */
/** CPU ns per thread of a process (schedstat), by thread id. */
function threadCpuNs(pid: number): Map<string, { name: string; ns: number }> {
  const out = new Map<string, { name: string; ns: number }>();
  for (const task of readdirSync(`/proc/${pid}/task`)) {
    try {
      const ns = Number(readFileSync(`/proc/${pid}/task/${task}/schedstat`, 'utf8').split(' ')[0]);
      out.set(task, { name: readFileSync(`/proc/${pid}/task/${task}/comm`, 'utf8').trim(), ns });
    } catch {
      /* the thread ended */
    }
  }
  return out;
}

/** The machine's busy and total jiffies (/proc/stat, all CPUs). */
function machineJiffies(): { busy: number; total: number } {
  const f = readFileSync('/proc/stat', 'utf8').split('\n')[0]!.trim().split(/\s+/).slice(1).map(Number);
  const total = f.reduce((a, b) => a + b, 0);
  const idle = f[3]! + f[4]!;
  return { busy: total - idle, total };
}

/**
 * Where the CPU went while `run` ran: each Moat thread's share of one core
 * (the API thread is "node"; worker threads are named by Node), and how busy
 * the whole machine was (1.0 = every core busy).
 */
async function cpuDuring<T>(pid: number, run: () => Promise<T>): Promise<{ value: T; moatThreads: Record<string, number>; machineBusy: number }> {
  const before = threadCpuNs(pid);
  const m0 = machineJiffies();
  const t0 = performance.now();
  const value = await run();
  const ms = performance.now() - t0;
  const m1 = machineJiffies();
  const after = threadCpuNs(pid);
  const moatThreads: Record<string, number> = {};
  for (const [tid, a] of after) {
    const share = (a.ns - (before.get(tid)?.ns ?? 0)) / 1e6 / ms;
    if (share >= 0.02) moatThreads[tid === String(pid) ? 'api-thread' : `thread-${tid}`] = +share.toFixed(2);
  }
  return { value, moatThreads, machineBusy: +((m1.busy - m0.busy) / (m1.total - m0.total)).toFixed(2) };
}

async function measureLoad(topos: Topology[], procs: TrackedProcess[], moatPid: number): Promise<Record<string, unknown>> {
  const [a, b] = [topos[0]!, topos[1]!];
  for (const t of [a, b]) {
    const iperf = nsSpawn(t.remoteNs, 'iperf3', ['-s', '--forceflush', '-B', t.internetAddrs[0]!, '-p', '5201']);
    procs.push(iperf);
    await waitForOutput(iperf, /Server listening/, { stream: 'stdout', timeoutMs: 10_000 });
  }
  const echo = nsSpawn(b.remoteNs, process.execPath, ['-e', ECHO_SERVER_JS, b.internetAddrs[0]!, '7007']);
  procs.push(echo);
  await waitForOutput(echo, /^ready/m, { stream: 'stdout', timeoutMs: 10_000 });
  const rr = async (): Promise<{ perSec: number; p50Us: number; p99Us: number }> => {
    const r = await nsRun(b.guestNs, 'python3', ['-c', RR_CLIENT_PY, b.internetAddrs[0]!, '7007', String(SECONDS), '64'], (SECONDS + 20) * 1000);
    return parseClientJson(r.stdout, r.stderr, 'rr');
  };
  const iperf = async (t: Topology, seconds: number): Promise<number> => {
    const r = await nsRun(t.guestNs, 'iperf3', ['-c', t.internetAddrs[0]!, '-p', '5201', '-t', String(seconds), '-J', ...(REVERSE ? ['-R'] : [])], (seconds + 20) * 1000);
    return parseIperfJson(r.stdout).receivedBps;
  };
  const rrAlone = await rr();
  // Guest a flat out; guest b's round trips start once a's stream is running.
  const flood = iperf(a, SECONDS + 3);
  await sleep(1500);
  const rrLoaded = await rr();
  const floodBps = await flood;
  const alone = await cpuDuring(moatPid, () => iperf(a, SECONDS));
  const aloneBps = alone.value;
  const pair = await cpuDuring(moatPid, () => Promise.all([iperf(a, SECONDS), iperf(b, SECONDS)]));
  const [pairA, pairB] = pair.value;
  return {
    rrAlone,
    rrWhileOtherGuestFloods: rrLoaded,
    floodBps: Math.round(floodBps),
    p99Ratio: +(rrLoaded.p99Us / rrAlone.p99Us).toFixed(2),
    iperfOneGuestBps: Math.round(aloneBps),
    iperfTwoGuestsBps: Math.round(pairA + pairB),
    twoGuestsOverOne: +((pairA + pairB) / aloneBps).toFixed(2),
    cpuOneGuest: { moatThreads: alone.moatThreads, machineBusy: alone.machineBusy },
    cpuTwoGuests: { moatThreads: pair.moatThreads, machineBusy: pair.machineBusy },
  };
}

function existsSocket(path: string): boolean {
  try {
    return statSync(path).isSocket();
  } catch {
    return false;
  }
}

await main();
