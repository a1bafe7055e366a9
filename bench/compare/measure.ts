/**
 * One measurement each: iperf3 throughput, request/response rate and latency,
 * new connections per second, DNS queries per second, idle-connection memory.
 * Each runs its client in the guest against a server on the host side of a
 * GuestLink, and samples the CPU time of the backend's processes around it.
 */
import { readFileSync } from 'node:fs';
import { killTracked, waitForOutput, type TrackedProcess } from '../../test/e2e/harness.js';
import { parseIperfJson } from '../../test/e2e/bulk-support.js';
import { DNS_NAME, type GuestLink } from './backends.js';
import {
  CONN_CLIENT_PY,
  DNS_CLIENT_PY,
  ECHO_SERVER_JS,
  HOLD_CLIENT_JS,
  HOLD_SERVER_JS,
  ONE_BYTE_SERVER_JS,
  RR_CLIENT_PY,
  parseClientJson,
} from './scripts.js';

/** Linux reports utime/stime in clock ticks; USER_HZ is 100 on every mainstream architecture. */
const USER_HZ = 100;

/** CPU seconds (user + system, all threads) PID has used so far; NaN once it is gone. */
export function cpuSeconds(pid: number): number {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // Fields after the ")" that ends the command name: state is field 3, utime 14, stime 15.
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return (Number(f[11]) + Number(f[12])) / USER_HZ;
  } catch {
    return Number.NaN;
  }
}

/** A kB field of /proc/PID/status (VmRSS, VmHWM) in bytes; NaN once the process is gone. */
export function statusBytes(pid: number, field: 'VmRSS' | 'VmHWM'): number {
  try {
    const m = new RegExp(`^${field}:\\s+(\\d+)\\s+kB$`, 'm').exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) * 1024 : Number.NaN;
  } catch {
    return Number.NaN;
  }
}

/** CPU use of each cost process over a measured interval: percent of one core. */
export type CpuShare = Record<string, number>;

async function withCpu<T>(link: GuestLink, body: () => Promise<T>): Promise<{ value: T; cpu: CpuShare }> {
  const before = link.costPids.map((p) => cpuSeconds(p.pid));
  const t0 = performance.now();
  const value = await body();
  const wall = (performance.now() - t0) / 1000;
  const cpu: CpuShare = {};
  link.costPids.forEach((p, i) => {
    cpu[p.role] = Math.round(((cpuSeconds(p.pid) - before[i]!) / wall) * 1000) / 10;
  });
  return { value, cpu };
}

// ------------------------------------------------------------------ servers

export interface Servers {
  iperfPort: number;
  echoPort: number;
  connPort: number;
  holdPort: number;
  /** iperf3 -s on the link's serverBind6 (links with IPv6 only). */
  iperf6Port?: number;
  stop(): Promise<void>;
}

/** Start iperf3 -s, the echo, one-byte and hold servers on the link's host side. */
export async function startServers(link: GuestLink): Promise<Servers> {
  // Random high ports: other programs on this machine use the root namespace's loopback too.
  const base = 20_000 + Math.floor(Math.random() * 2_000) * 10;
  const procs: TrackedProcess[] = [];
  const ports: Omit<Servers, 'stop'> = { iperfPort: base, echoPort: base + 1, connPort: base + 2, holdPort: base + 3 };
  if (link.serverBind6 !== undefined) ports.iperf6Port = base + 4;
  try {
    for (const [bind, port] of [
      [link.serverBind, ports.iperfPort],
      [link.serverBind6, ports.iperf6Port],
    ] as const) {
      if (bind === undefined || port === undefined) continue;
      const iperf = link.serverSpawn('iperf3', ['-s', '--forceflush', '-B', bind, '-p', String(port)]);
      procs.push(iperf);
      await waitForOutput(iperf, /Server listening/, { stream: 'stdout', timeoutMs: 5_000 });
    }
    for (const [code, port] of [
      [ECHO_SERVER_JS, ports.echoPort],
      [ONE_BYTE_SERVER_JS, ports.connPort],
      [HOLD_SERVER_JS, ports.holdPort],
    ] as const) {
      const p = link.serverSpawn(process.execPath, ['-e', code, link.serverBind, String(port)]);
      procs.push(p);
      await waitForOutput(p, /^ready/m, { stream: 'stdout', timeoutMs: 10_000 });
    }
  } catch (e) {
    for (const p of procs) await killTracked(p).catch(() => {});
    throw e;
  }
  return {
    ...ports,
    async stop() {
      for (const p of procs) await killTracked(p).catch(() => {});
    },
  };
}

// ------------------------------------------------------------------ measurements

export type Direction = 'guest->host' | 'host->guest';

export interface IperfSample {
  bps: number;
  retransmits: number | undefined;
  cpu: CpuShare;
}

export async function iperf(
  link: GuestLink,
  s: Servers,
  o: { direction: Direction; streams: number; seconds: number; family?: 4 | 6 },
): Promise<IperfSample> {
  const six = o.family === 6;
  const [alias, port] = six ? [link.hostAlias6, s.iperf6Port] : [link.hostAlias, s.iperfPort];
  if (alias === undefined || port === undefined) throw new Error(`iperf over IPv6: ${link.backend} was started without IPv6`);
  const args = ['-c', alias, '-p', String(port), '-t', String(o.seconds), '-J', '-P', String(o.streams)];
  if (o.direction === 'host->guest') args.push('-R');
  const { value: r, cpu } = await withCpu(link, () => link.guestRun('iperf3', args, { timeoutMs: (o.seconds + 20) * 1000 }));
  const fig = parseIperfJson(r.stdout);
  return { bps: fig.receivedBps, retransmits: fig.retransmits, cpu };
}

export interface RrSample {
  perSec: number;
  p50Us: number;
  p99Us: number;
  cpu: CpuShare;
}

export async function requestResponse(link: GuestLink, s: Servers, seconds: number): Promise<RrSample> {
  const { value: r, cpu } = await withCpu(link, () =>
    link.guestRun('python3', ['-c', RR_CLIENT_PY, link.hostAlias, String(s.echoPort), String(seconds), '64'], {
      timeoutMs: (seconds + 20) * 1000,
    }),
  );
  const j = parseClientJson<{ perSec: number; p50Us: number; p99Us: number }>(r.stdout, r.stderr, `rr via ${link.backend}`);
  return { perSec: j.perSec, p50Us: j.p50Us, p99Us: j.p99Us, cpu };
}

export interface RateSample {
  perSec: number;
  failed: number;
  firstError?: string;
  p50Us?: number | null;
  /** DNS only: answers that came from another address than the one queried. */
  wrongSource?: number;
  cpu: CpuShare;
}

export async function connectionRate(link: GuestLink, s: Servers, seconds: number): Promise<RateSample> {
  const { value: r, cpu } = await withCpu(link, () =>
    link.guestRun('python3', ['-c', CONN_CLIENT_PY, link.hostAlias, String(s.connPort), String(seconds)], {
      timeoutMs: (seconds + 30) * 1000,
    }),
  );
  const j = parseClientJson<{ perSec: number; failed: number; firstError: string }>(r.stdout, r.stderr, `conn/s via ${link.backend}`);
  return { perSec: j.perSec, failed: j.failed, firstError: j.firstError || undefined, cpu };
}

export async function dnsRate(link: GuestLink, seconds: number): Promise<RateSample> {
  const { value: r, cpu } = await withCpu(link, () =>
    link.guestRun('python3', ['-c', DNS_CLIENT_PY, link.dnsServer, '53', DNS_NAME, String(seconds)], {
      timeoutMs: (seconds + 30) * 1000,
    }),
  );
  const j = parseClientJson<{ perSec: number; bad: number; lost: number; wrongSource: number; p50Us: number | null }>(
    r.stdout,
    r.stderr,
    `dns via ${link.backend}`,
  );
  return { perSec: j.perSec, failed: j.bad + j.lost, wrongSource: j.wrongSource, p50Us: j.p50Us, cpu };
}

export interface IdleSample {
  requested: number;
  connected: number;
  failed: number;
  firstError: string;
  /** VmRSS of each cost process before the connections were opened, and with them open and idle for 2 s. */
  rssBefore: Record<string, number>;
  rssIdle: Record<string, number>;
}

/** Open `n` connections from the guest, hold them idle, sample the backend's RSS. */
export async function idleConnections(link: GuestLink, s: Servers, n: number): Promise<IdleSample> {
  const rss = (): Record<string, number> => Object.fromEntries(link.costPids.map((p) => [p.role, statusBytes(p.pid, 'VmRSS')]));
  const rssBefore = rss();
  const holder = link.guestSpawn(process.execPath, ['-e', HOLD_CLIENT_JS, link.hostAlias, String(s.holdPort), String(n)]);
  try {
    await waitForOutput(holder, /^\{.*\}$/m, { stream: 'stdout', timeoutMs: 120_000 });
    const j = parseClientJson<{ connected: number; failed: number; firstError: string }>(holder.stdout(), holder.stderr(), 'idle holder');
    await new Promise((r) => setTimeout(r, 2_000));
    return { requested: n, ...j, rssBefore, rssIdle: rss() };
  } finally {
    await killTracked(holder).catch(() => {});
  }
}

export function median(xs: readonly number[]): number {
  const s = xs.filter((x) => Number.isFinite(x)).sort((a, b) => a - b);
  if (s.length === 0) return Number.NaN;
  const m = s.length >> 1;
  return s.length % 2 === 1 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}
