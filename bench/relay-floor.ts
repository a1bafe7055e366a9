/**
 * The floor of the request/response path: what a process that only relays a
 * guest's TCP to a host socket costs, next to slirp4netns and Moat, in the
 * same run, interleaved, with bench:compare's guest namespaces and client
 * (RR_CLIENT_PY: one connection, 64-byte request echoed back, blocking
 * Python in the guest).
 *
 *   npm run bench:relay-floor -- [--rounds 3] [--seconds 5]
 *     [--warm N] [--backends slirp4netns,moat-offload,node-net,node-onread,node-onread-raw,node-raw,c,veth] [--base-bin OTHER/bin/moat.mjs] [--out FILE]
 *
 * The relays (bench/relay-floor/) run in the peer namespace of a veth pair:
 * the guest's kernel TCP reaches them over the veth, they dial the echo
 * server on that namespace's 127.0.0.1. Per exchange a relay does what Moat
 * and slirp4netns do (one wake-up and one read and one write each way), but
 * the guest's TCP is terminated by the kernel, not parsed in user space: a
 * relay's cost is a lower bound on any user-space stack in that language.
 *   node-net  net.Socket, 'data' events, write()
 *   node-onread  net.Socket read as Moat reads host sockets (onread, one
 *             static buffer), each chunk copied and written with write()
 *   node-onread-raw  the same, written with the libuv handle's writeBuffer
 *             while net.Socket holds nothing queued (Moat's write path alone)
 *   node-raw  libuv TCP handles from process.binding('tcp_wrap'): static read
 *             buffer, writeBuffer with a reused WriteWrap (no net.Socket)
 *   c         an epoll relay in C (the same path without a runtime)
 *   veth      no relay: the guest dials the echo server directly (ceiling)
 *
 * Figures per backend: medians over rounds of exchanges/s, p50, p99, and
 * user and system CPU of the backend's process per exchange (from
 * /proc/PID/stat over the client's run, warm-up included, divided by the
 * exchanges of the run and its 0.3 s warm-up at the same rate).
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { checkPrerequisites, cleanupAll, REPO_ROOT, waitForOutput, type TrackedProcess } from '../test/e2e/harness.js';
import { startLink, type BackendName, type GuestLink } from './compare/backends.js';
import { median, startServers, type Servers } from './compare/measure.js';
import { ECHO_SERVER_JS, parseClientJson, RR_CLIENT_PY } from './compare/scripts.js';

const RELAYS = ['node-net', 'node-onread', 'node-onread-raw', 'node-raw', 'c'] as const;
type Relay = (typeof RELAYS)[number];
type Backend = BackendName | Relay;
const KNOWN: readonly string[] = ['slirp4netns', 'moat-offload', 'moat-offload-base', 'veth', ...RELAYS];
const MTU = 65520;
const WARM_UP_S = 0.3; // RR_CLIENT_PY's warm-up
/** Linux's USER_HZ (clock ticks of /proc/PID/stat). */
const USER_HZ = 100;

function arg(name: string): string | undefined {
  const i = process.argv.indexOf(name);
  return i > 0 ? process.argv[i + 1] : undefined;
}

/** utime and stime (seconds) of PID. */
function userSys(pid: number): [number, number] {
  const f = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const rest = f.slice(f.lastIndexOf(')') + 2).split(' ');
  return [Number(rest[11]) / USER_HZ, Number(rest[12]) / USER_HZ];
}

interface Target {
  link: GuestLink;
  /** Where the guest's client connects. */
  addr: string;
  port: number;
  /** The process whose CPU is the backend's cost (none for veth). */
  pid: number | undefined;
  stop(): Promise<void>;
}

interface Sample {
  perSec: number;
  p50Us: number;
  p99Us: number;
  userUs: number;
  sysUs: number;
  load1: number;
}

let cBinary: string | undefined;
function buildC(): string {
  if (cBinary !== undefined) return cBinary;
  const dir = mkdtempSync(join(tmpdir(), 'relay-floor-'));
  cBinary = join(dir, 'relay');
  execFileSync('cc', ['-O2', '-Wall', '-o', cBinary, join(REPO_ROOT, 'bench', 'relay-floor', 'relay.c')], { timeout: 60_000 });
  process.on('exit', () => rmSync(dir, { recursive: true, force: true }));
  return cBinary;
}

async function relayTarget(kind: Relay | 'veth', prefix: string): Promise<Target> {
  const link = await startLink('veth', { prefix, mtu: MTU });
  try {
    if (kind === 'veth') {
      const servers: Servers = await startServers(link);
      return { link, addr: link.hostAlias, port: servers.echoPort, pid: undefined, stop: async () => { await servers.stop(); await link.stop(); } };
    }
    const echoPort = 20_000 + Math.floor(Math.random() * 2_000) * 10;
    const relayPort = echoPort + 1;
    const echo = link.serverSpawn(process.execPath, ['-e', ECHO_SERVER_JS, '127.0.0.1', String(echoPort)]);
    await waitForOutput(echo, /^ready/m, { stream: 'stdout', timeoutMs: 10_000 });
    const relayArgs = [link.serverBind, String(relayPort), '127.0.0.1', String(echoPort)];
    let relay: TrackedProcess;
    if (kind === 'c') relay = link.serverSpawn(buildC(), relayArgs);
    else {
      const script = kind === 'node-net' ? 'net-relay.cjs' : kind === 'node-raw' ? 'raw-relay.cjs' : 'onread-relay.cjs';
      relay = link.serverSpawn(process.execPath, [join(REPO_ROOT, 'bench', 'relay-floor', script), ...relayArgs, ...(kind === 'node-onread-raw' ? ['raw'] : [])]);
    }
    await waitForOutput(relay, /^ready/m, { stream: 'stdout', timeoutMs: 10_000 });
    return { link, addr: link.hostAlias, port: relayPort, pid: relay.child.pid!, stop: () => link.stop() };
  } catch (e) {
    await link.stop();
    throw e;
  }
}

async function backendTarget(b: BackendName, prefix: string, baseBin: string | undefined): Promise<Target> {
  const link = await startLink(b, { prefix, mtu: MTU, baseBin });
  try {
    const servers = await startServers(link);
    return { link, addr: link.hostAlias, port: servers.echoPort, pid: link.costPids[0]!.pid, stop: async () => { await servers.stop(); await link.stop(); } };
  } catch (e) {
    await link.stop();
    throw e;
  }
}

async function measure(t: Target, seconds: number): Promise<Sample> {
  const before = t.pid !== undefined ? userSys(t.pid) : [0, 0];
  const r = await t.link.guestRun('python3', ['-c', RR_CLIENT_PY, t.addr, String(t.port), String(seconds), '64'], { timeoutMs: (seconds + 20) * 1000 });
  const after = t.pid !== undefined ? userSys(t.pid) : [0, 0];
  const j = parseClientJson<{ perSec: number; p50Us: number; p99Us: number }>(r.stdout, r.stderr, `rr via ${t.link.backend}`);
  const exchanges = j.perSec * (seconds + WARM_UP_S);
  return {
    perSec: j.perSec,
    p50Us: j.p50Us,
    p99Us: j.p99Us,
    userUs: ((after[0]! - before[0]!) * 1e6) / exchanges,
    sysUs: ((after[1]! - before[1]!) * 1e6) / exchanges,
    load1: Number(readFileSync('/proc/loadavg', 'utf8').split(' ')[0]),
  };
}

async function main(): Promise<void> {
  const pre = checkPrerequisites(['ip', 'python3']);
  if (!pre.ok) throw new Error(pre.problems.join('; '));
  const rounds = Number(arg('--rounds') ?? 3);
  // Unmeasured rounds first (each a new connection): Moat's JIT settles over several connections (bench/rr-mem.ts).
  const warm = Number(arg('--warm') ?? 0);
  const seconds = Number(arg('--seconds') ?? 5);
  const baseBin = arg('--base-bin');
  const backends = (arg('--backends') ?? 'slirp4netns,moat-offload,node-net,node-onread,node-onread-raw,node-raw,c,veth').split(',') as Backend[];
  for (const b of backends) if (!KNOWN.includes(b)) throw new Error(`--backends: unknown ${b} (known: ${KNOWN.join(', ')})`);
  const targets = new Map<Backend, Target>();
  const samples = new Map<Backend, Sample[]>();
  const startedAt = new Date().toISOString();
  try {
    for (const b of backends) {
      const t = (RELAYS as readonly string[]).includes(b) || b === 'veth' ? await relayTarget(b as Relay | 'veth', 'rf-') : await backendTarget(b as BackendName, 'rf-', baseBin);
      targets.set(b, t);
    }
    for (let r = 0; r < warm; r++) for (const b of backends) await measure(targets.get(b)!, 2);
    for (let r = 0; r < rounds; r++) {
      for (const b of backends) {
        const s = await measure(targets.get(b)!, seconds);
        (samples.get(b) ?? samples.set(b, []).get(b)!).push(s);
        process.stderr.write(
          `[relay-floor] round ${r + 1} ${b}: ${s.perSec.toFixed(0)}/s p50 ${s.p50Us.toFixed(0)} p99 ${s.p99Us.toFixed(0)} us; CPU/exchange user ${s.userUs.toFixed(1)} sys ${s.sysUs.toFixed(1)} us; load ${s.load1}\n`,
        );
      }
    }
  } finally {
    for (const t of targets.values()) await t.stop().catch(() => {});
  }
  const med = (b: Backend, k: keyof Sample): number => median(samples.get(b)!.map((s) => s[k]));
  const ref = backends.includes('slirp4netns') ? 'slirp4netns' : undefined;
  const rows = backends.map((b) => {
    const perSec = med(b, 'perSec');
    const p99 = med(b, 'p99Us');
    return {
      backend: b,
      perSec: Math.round(perSec),
      p50Us: Math.round(med(b, 'p50Us')),
      p99Us: Math.round(p99),
      userUs: Number(med(b, 'userUs').toFixed(1)),
      sysUs: Number(med(b, 'sysUs').toFixed(1)),
      vsSlirpRate: ref ? Number((perSec / med(ref, 'perSec')).toFixed(2)) : undefined,
      vsSlirpP99: ref ? Number((p99 / med(ref, 'p99Us')).toFixed(2)) : undefined,
    };
  });
  const loads = [...samples.values()].flat().map((s) => s.load1);
  console.log(`request/response floor, MTU ${MTU}, medians of ${rounds} x ${seconds} s after ${warm} unmeasured 2 s rounds, load ${Math.min(...loads)}-${Math.max(...loads)}`);
  console.log('| backend | exchanges/s | p50 us | p99 us | user us/exch | sys us/exch | rate / slirp4netns | p99 / slirp4netns |');
  console.log('|---|---|---|---|---|---|---|---|');
  for (const x of rows) console.log(`| ${x.backend} | ${x.perSec} | ${x.p50Us} | ${x.p99Us} | ${x.userUs} | ${x.sysUs} | ${x.vsSlirpRate ?? ''} | ${x.vsSlirpP99 ?? ''} |`);
  const out = arg('--out');
  if (out !== undefined) writeFileSync(out, JSON.stringify({ startedAt, rounds, seconds, warm, rows, samples: Object.fromEntries(samples) }, null, 2) + '\n');
}

main()
  .catch((e: unknown) => {
    process.stderr.write(`relay-floor failed: ${(e as Error).stack ?? String(e)}\n`);
    process.exitCode = 1;
  })
  .finally(() => cleanupAll());
