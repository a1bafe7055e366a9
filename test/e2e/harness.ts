/**
 * Namespace harness for end-to-end tests: a real Linux kernel as the guest.
 *
 * Everything goes through child_process (`ip`, `ip netns exec ...`). The rules
 * this file enforces, because e2e tests run as root on shared machines:
 *  - All test traffic stays on loopback or inside namespaces the test created
 *    (`assertRoutesInto` checks the routing table before any traffic is sent).
 *  - Every namespace, veth and spawned process is recorded in a registry file
 *    before it is created, and removed by name / PID on every exit path
 *    (`cleanupAll`, process 'exit', SIGINT, SIGTERM). Cleanup is idempotent.
 *    Registries whose owner PID is dead (crashed runs) are reaped first.
 *  - Names are unique per test file (prefix + random suffix) and each topology
 *    claims its own /24 pair inside 198.18.0.0/15 (RFC 2544 benchmarking
 *    range), so test files can run in parallel.
 *  - Nothing waits without a bound: every exec has a timeout, every wait helper
 *    has a deadline.
 */
import { execFileSync, spawn, spawnSync, type ChildProcess, type SpawnOptions } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import {
  closeSync,
  existsSync,
  mkdirSync,
  openSync,
  readFileSync,
  readdirSync,
  renameSync,
  statSync,
  unlinkSync,
  writeFileSync,
} from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

// ------------------------------------------------------------------ prerequisites

/** Tools the Moat e2e suite drives inside namespaces. */
export const E2E_TOOLS: readonly string[] = ['ip', 'tcpdump', 'curl', 'dig', 'iperf3', 'busybox'];

export interface PrerequisiteReport {
  ok: boolean;
  /** Human-readable problems: "not running as root", "missing tool: dig", ... */
  problems: string[];
}

/** Is `tool` on PATH (or an executable path)? */
export function hasTool(tool: string): boolean {
  const r = spawnSync('sh', ['-c', 'command -v "$1"', 'sh', tool], { stdio: 'ignore', timeout: 5_000 });
  return r.status === 0;
}

/** Check root, /dev/net/tun, network-namespace support and `tools`. */
export function checkPrerequisites(tools: readonly string[] = E2E_TOOLS): PrerequisiteReport {
  const problems: string[] = [];
  if (typeof process.getuid !== 'function' || process.getuid() !== 0) {
    problems.push('not running as root (network namespaces and TAP devices need CAP_NET_ADMIN)');
  }
  if (process.platform !== 'linux') problems.push(`platform is ${process.platform}, not linux`);
  if (!existsSync('/dev/net/tun')) problems.push('/dev/net/tun does not exist');
  if (!existsSync('/proc/self/ns/net')) problems.push('kernel without network namespaces');
  for (const tool of tools) if (!hasTool(tool)) problems.push(`missing tool: ${tool}`);
  return { ok: problems.length === 0, problems };
}

/** Throw an Error listing every missing prerequisite. */
export function requireRoot(tools: readonly string[] = E2E_TOOLS): void {
  const report = checkPrerequisites(tools);
  if (!report.ok) {
    throw new Error(`e2e prerequisites missing:\n  - ${report.problems.join('\n  - ')}`);
  }
}

/**
 * Decide whether an e2e file can run. In CI (process.env.CI set) a missing
 * prerequisite throws, so the file FAILS; elsewhere it returns skip=true with a
 * loud reason printed to stderr. Use: `const gate = e2eGate(); describe.skipIf(gate.skip)(...)`.
 */
export function e2eGate(tools: readonly string[] = E2E_TOOLS): { skip: boolean; reason: string } {
  const report = checkPrerequisites(tools);
  if (report.ok) return { skip: false, reason: '' };
  const reason = `e2e prerequisites missing: ${report.problems.join('; ')}`;
  if (process.env.CI) throw new Error(`${reason} (CI is set: e2e tests must not be skipped)`);
  process.stderr.write(`\n*** SKIPPING e2e tests: ${reason} ***\n\n`);
  return { skip: true, reason };
}

// ------------------------------------------------------------------ running commands

export interface ExecOptions {
  /** Kill the command after this long (default 10 s). */
  timeoutMs?: number;
  input?: string | Uint8Array;
  /** Do not throw on a non-zero exit; return its output anyway. */
  allowFail?: boolean;
}

export interface ExecResult {
  status: number | null;
  stdout: string;
  stderr: string;
}

const DEFAULT_EXEC_TIMEOUT_MS = 10_000;

function execIn(argv0: string, argv: string[], opts: ExecOptions = {}): ExecResult {
  const r = spawnSync(argv0, argv, {
    encoding: 'utf8',
    timeout: opts.timeoutMs ?? DEFAULT_EXEC_TIMEOUT_MS,
    input: opts.input,
    killSignal: 'SIGKILL',
    maxBuffer: 64 * 1024 * 1024,
  });
  const out: ExecResult = { status: r.status, stdout: r.stdout ?? '', stderr: r.stderr ?? '' };
  if (!opts.allowFail) {
    if (r.error) throw new Error(`${argv0} ${argv.join(' ')}: ${r.error.message}`);
    if (r.status !== 0) {
      const how = r.signal ? `killed by ${r.signal} (timeout?)` : `exit ${r.status}`;
      throw new Error(`${argv0} ${argv.join(' ')} failed (${how}): ${out.stderr.trim() || out.stdout.trim()}`);
    }
  }
  return out;
}

/** Run a command in the root namespace (where Moat runs); returns stdout. */
export function hostExec(cmd: string, args: string[], opts: ExecOptions = {}): string {
  return execIn(cmd, args, opts).stdout;
}

/** Like hostExec but returns status/stdout/stderr and never throws on exit status. */
export function hostRun(cmd: string, args: string[], opts: Omit<ExecOptions, 'allowFail'> = {}): ExecResult {
  return execIn(cmd, args, { ...opts, allowFail: true });
}

/** Run `cmd args` inside network namespace `ns` (execFileSync-style, with a timeout); returns stdout. */
export function nsExec(ns: string, cmd: string, args: string[], opts: ExecOptions = {}): string {
  return execIn('ip', ['netns', 'exec', ns, cmd, ...args], opts).stdout;
}

/** Like nsExec but returns status/stdout/stderr and never throws on exit status. */
export function nsRun(ns: string, cmd: string, args: string[], opts: Omit<ExecOptions, 'allowFail'> = {}): ExecResult {
  return execIn('ip', ['netns', 'exec', ns, cmd, ...args], { ...opts, allowFail: true });
}

/**
 * Asynchronous form of hostRun: the event loop keeps running, so servers that
 * live in the test process (an in-test "Moat") can answer while the command
 * runs. Killed with SIGKILL after timeoutMs (default 10 s); never throws on
 * exit status.
 */
export function hostRunAsync(cmd: string, args: string[], opts: Omit<ExecOptions, 'allowFail'> = {}): Promise<ExecResult> {
  return runAsync(cmd, args, opts);
}

/** Asynchronous form of nsRun (see hostRunAsync). */
export function nsRunAsync(ns: string, cmd: string, args: string[], opts: Omit<ExecOptions, 'allowFail'> = {}): Promise<ExecResult> {
  return runAsync('ip', ['netns', 'exec', ns, cmd, ...args], opts);
}

function runAsync(argv0: string, argv: string[], opts: Omit<ExecOptions, 'allowFail'>): Promise<ExecResult> {
  const p = spawnTracked(argv0, argv);
  if (opts.input !== undefined) p.child.stdin?.end(opts.input);
  else p.child.stdin?.end();
  const timeoutMs = opts.timeoutMs ?? DEFAULT_EXEC_TIMEOUT_MS;
  const timer = setTimeout(() => {
    if (p.child.pid !== undefined && p.child.exitCode === null) {
      try {
        process.kill(p.child.pid, 'SIGKILL');
      } catch {
        /* gone */
      }
    }
  }, timeoutMs);
  return p.exited.then(async ({ code }) => {
    clearTimeout(timer);
    // 'exit' can come before the last output is read (under load: dig exit 0, no stdout yet); wait
    // for the pipes to close, but not for a grandchild that keeps them open.
    await Promise.race([p.closed, new Promise((r) => setTimeout(r, 2_000).unref())]);
    return { status: code, stdout: p.stdout(), stderr: p.stderr() };
  });
}

/** A spawned process whose output is collected for assertions and messages. */
export interface TrackedProcess {
  child: ChildProcess;
  /** All stdout so far. */
  stdout(): string;
  /** All stderr so far. */
  stderr(): string;
  /** Resolves when the process has exited (code/signal). */
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** Resolves when its stdio pipes have closed too (all output read), or it failed to start. */
  closed: Promise<void>;
}

const OUTPUT_LIMIT = 1024 * 1024;

/** Spawn `cmd` in the root namespace, tracked for cleanup (killed by PID). */
export function spawnTracked(cmd: string, args: string[], opts: SpawnOptions = {}): TrackedProcess {
  const child = spawn(cmd, args, { stdio: ['pipe', 'pipe', 'pipe'], ...opts });
  if (child.pid !== undefined) registry().pids.push(child.pid);
  saveRegistry();
  trackedChildren.add(child);
  let out = '';
  let err = '';
  // Bounded capture: keep the last OUTPUT_LIMIT characters.
  child.stdout?.setEncoding('utf8').on('data', (d: string) => {
    out = (out + d).slice(-OUTPUT_LIMIT);
  });
  child.stderr?.setEncoding('utf8').on('data', (d: string) => {
    err = (err + d).slice(-OUTPUT_LIMIT);
  });
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
    child.once('exit', (code, signal) => {
      trackedChildren.delete(child);
      resolve({ code, signal });
    });
    child.once('error', () => {
      trackedChildren.delete(child);
      resolve({ code: null, signal: null });
    });
  });
  const closed = new Promise<void>((resolve) => {
    child.once('close', () => resolve());
    child.once('error', () => resolve());
  });
  return { child, stdout: () => out, stderr: () => err, exited, closed };
}

/** Spawn `cmd` inside namespace `ns` (`ip netns exec` execs it, so the PID is the command's). */
export function nsSpawn(ns: string, cmd: string, args: string[], opts: SpawnOptions = {}): TrackedProcess {
  return spawnTracked('ip', ['netns', 'exec', ns, cmd, ...args], opts);
}

/** Kill one tracked process by PID (SIGKILL by default) and wait (bounded) for it to go. */
export async function killTracked(p: TrackedProcess, signal: NodeJS.Signals = 'SIGKILL', timeoutMs = 5_000): Promise<void> {
  if (p.child.exitCode === null && p.child.signalCode === null && p.child.pid !== undefined) {
    try {
      process.kill(p.child.pid, signal);
    } catch {
      /* already gone */
    }
  }
  await withTimeout(p.exited, timeoutMs, `process ${p.child.pid} to exit after ${signal}`);
}

// ------------------------------------------------------------------ waiting, bounded

/** Reject with a message naming `what` unless `promise` settles within timeoutMs. */
export function withTimeout<T>(promise: Promise<T>, timeoutMs: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${timeoutMs} ms waiting for ${what}`)), timeoutMs);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/**
 * Poll `probe` every intervalMs until it returns a value other than
 * undefined/false/null, or throw after timeoutMs (default 5 s) naming `what`.
 */
/** Thrown by a waitFor probe to stop waiting at once (the awaited thing can no longer happen). */
export class WaitAbort extends Error {}

export async function waitFor<T>(
  what: string,
  probe: () => T | undefined | null | false | Promise<T | undefined | null | false>,
  opts: { timeoutMs?: number; intervalMs?: number } = {},
): Promise<T> {
  const timeoutMs = opts.timeoutMs ?? 5_000;
  const intervalMs = opts.intervalMs ?? 20;
  const deadline = Date.now() + timeoutMs;
  let lastError: unknown;
  for (;;) {
    try {
      const v = await probe();
      if (v !== undefined && v !== null && v !== false) return v;
    } catch (e) {
      if (e instanceof WaitAbort) throw e;
      lastError = e;
    }
    if (Date.now() >= deadline) {
      const why = lastError instanceof Error ? ` (last error: ${lastError.message})` : '';
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${why}`);
    }
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}

/** Wait until the tracked process has printed a line matching `pattern` on `stream`. */
export function waitForOutput(
  p: TrackedProcess,
  pattern: RegExp,
  opts: { stream?: 'stdout' | 'stderr'; timeoutMs?: number } = {},
): Promise<string> {
  const read = opts.stream === 'stdout' ? p.stdout : p.stderr;
  return waitFor(`${opts.stream ?? 'stderr'} of pid ${p.child.pid} to match ${pattern}`, () => {
    const m = pattern.exec(read());
    if (m) return m[0];
    if (p.child.exitCode !== null || p.child.signalCode !== null) {
      // It will never print the line now: fail at once rather than at the deadline.
      throw new WaitAbort(`process exited (${p.child.exitCode ?? p.child.signalCode}); stderr: ${p.stderr()}`);
    }
    return undefined;
  }, { timeoutMs: opts.timeoutMs ?? 5_000 });
}

// ------------------------------------------------------------------ registry and cleanup

/**
 * One registry file per process that uses the harness, written before any
 * resource is created, so a crashed run can be cleaned by the next one.
 */
interface Registry {
  pid: number;
  netns: string[];
  links: string[];
  pids: number[];
  /** Subnet claims (indices k: 198.18.2k.0/24 + 198.18.(2k+1).0/24). */
  subnets: number[];
}

const REGISTRY_DIR = '/tmp/moat-e2e-registry';
let currentRegistry: Registry | undefined;
const trackedChildren = new Set<ChildProcess>();
const extraCleanups: Array<() => void> = [];
let handlersInstalled = false;

function registryPath(pid: number): string {
  return join(REGISTRY_DIR, `owner-${pid}.json`);
}

function registry(): Registry {
  if (!currentRegistry) {
    mkdirSync(REGISTRY_DIR, { recursive: true });
    reapStale();
    currentRegistry = { pid: process.pid, netns: [], links: [], pids: [], subnets: [] };
    saveRegistry();
    installExitHandlers();
  }
  return currentRegistry;
}

function saveRegistry(): void {
  if (!currentRegistry) return;
  const path = registryPath(process.pid);
  const tmp = `${path}.tmp`;
  writeFileSync(tmp, JSON.stringify(currentRegistry));
  renameSync(tmp, path);
}

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

function readRegistries(): Registry[] {
  if (!existsSync(REGISTRY_DIR)) return [];
  const out: Registry[] = [];
  for (const f of readdirSync(REGISTRY_DIR)) {
    if (!/^owner-\d+\.json$/.test(f)) continue;
    try {
      out.push(JSON.parse(readFileSync(join(REGISTRY_DIR, f), 'utf8')) as Registry);
    } catch {
      /* half-written or foreign file: ignore */
    }
  }
  return out;
}

function releaseResources(r: Registry): void {
  for (const pid of r.pids) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      /* gone */
    }
  }
  for (const ns of r.netns) deleteNetnsQuiet(ns);
  for (const link of r.links) hostRun('ip', ['link', 'del', link], { timeoutMs: 5_000 });
  for (const k of r.subnets) releaseSubnet(k, r.pid);
}

/** Delete resources left by earlier harness users whose process is gone. */
export function reapStale(): string[] {
  const reaped: string[] = [];
  for (const r of readRegistries()) {
    if (r.pid === process.pid || pidAlive(r.pid)) continue;
    // Children of a dead owner may still run (reparented). Its recorded PIDs
    // may also have been recycled: kill only those that still look like ours.
    r.pids = r.pids.filter((pid) => looksLikeOurChild(pid));
    releaseResources(r);
    reaped.push(...r.netns, ...r.links);
    try {
      unlinkSync(registryPath(r.pid));
    } catch {
      /* raced with another reaper */
    }
  }
  return reaped;
}

function looksLikeOurChild(pid: number): boolean {
  try {
    const cmd = readFileSync(`/proc/${pid}/cmdline`, 'utf8');
    return /moat-shim|busybox|iperf3|tcpdump|socat|python3|curl|dig|node/.test(cmd);
  } catch {
    return false;
  }
}

/**
 * Delete every namespace whose name starts with `prefix` and that no live
 * harness process owns (left over from a run that crashed before it could
 * record or clean up). Returns the names deleted.
 */
export function deleteStaleWithPrefix(prefix: string): string[] {
  reapStale();
  const owned = new Set<string>();
  for (const r of readRegistries()) if (pidAlive(r.pid)) r.netns.forEach((n) => owned.add(n));
  const deleted: string[] = [];
  for (const ns of listNetns()) {
    if (ns.startsWith(prefix) && !owned.has(ns)) {
      deleteNetnsQuiet(ns);
      deleted.push(ns);
    }
  }
  return deleted;
}

/** Register an extra synchronous cleanup step (run by cleanupAll, once). */
export function onCleanup(fn: () => void): void {
  registry();
  extraCleanups.push(fn);
}

/**
 * Kill every tracked process by PID and delete every namespace, veth and
 * subnet claim this process created. Synchronous and idempotent: call it from
 * afterAll; it also runs on process exit, SIGINT and SIGTERM.
 */
export function cleanupAll(): void {
  for (const child of trackedChildren) {
    if (child.pid !== undefined && child.exitCode === null && child.signalCode === null) {
      try {
        process.kill(child.pid, 'SIGKILL');
      } catch {
        /* gone */
      }
    }
  }
  trackedChildren.clear();
  while (extraCleanups.length > 0) {
    const fn = extraCleanups.pop()!;
    try {
      fn();
    } catch (e) {
      process.stderr.write(`harness cleanup step failed: ${(e as Error).message}\n`);
    }
  }
  const r = currentRegistry;
  if (!r) return;
  r.pids = []; // already killed above, by ChildProcess, not by a recycled number
  releaseResources(r);
  r.netns = [];
  r.links = [];
  r.subnets = [];
  try {
    unlinkSync(registryPath(process.pid));
  } catch {
    /* already removed */
  }
  currentRegistry = undefined;
}

function installExitHandlers(): void {
  if (handlersInstalled) return;
  handlersInstalled = true;
  process.on('exit', cleanupAll);
  for (const sig of ['SIGINT', 'SIGTERM'] as const) {
    const handler = (): void => {
      cleanupAll();
      process.removeListener(sig, handler);
      process.kill(process.pid, sig); // default action now
    };
    process.on(sig, handler);
  }
}

// ------------------------------------------------------------------ namespaces and links

/** prefix + 6 random hex characters, e.g. "ms5-3fa9c1". */
export function uniqueName(prefix: string): string {
  return `${prefix}${randomBytes(3).toString('hex')}`;
}

export function listNetns(): string[] {
  const out = hostRun('ip', ['netns', 'list']).stdout;
  return out
    .split('\n')
    .map((l) => l.trim().split(/\s+/)[0] ?? '')
    .filter((n) => n !== '');
}

export function netnsExists(name: string): boolean {
  return listNetns().includes(name);
}

function deleteNetnsQuiet(name: string): void {
  if (existsSync(`/run/netns/${name}`)) hostRun('ip', ['netns', 'del', name], { timeoutMs: 5_000 });
}

export interface NetnsOptions {
  /** Turn IPv6 off inside (no router solicitations / MLD noise). Default true. */
  disableIpv6?: boolean;
}

/** Create network namespace `name` with lo up; recorded for cleanup. */
export function createNetns(name: string, opts: NetnsOptions = {}): void {
  if (!/^[A-Za-z0-9_.-]{1,64}$/.test(name)) throw new Error(`bad namespace name: ${name}`);
  const r = registry();
  r.netns.push(name);
  saveRegistry();
  hostExec('ip', ['netns', 'add', name]);
  nsExec(name, 'ip', ['link', 'set', 'lo', 'up']);
  if (opts.disableIpv6 ?? true) {
    nsExec(name, 'sysctl', ['-q', '-w', 'net.ipv6.conf.all.disable_ipv6=1']);
    nsExec(name, 'sysctl', ['-q', '-w', 'net.ipv6.conf.default.disable_ipv6=1']);
  }
}

/** Delete namespace `name` (idempotent) and forget it. */
export function deleteNetns(name: string): void {
  deleteNetnsQuiet(name);
  if (currentRegistry) {
    currentRegistry.netns = currentRegistry.netns.filter((n) => n !== name);
    saveRegistry();
  }
}

/** Does interface `dev` exist in the root namespace? */
export function hostLinkExists(dev: string): boolean {
  return hostRun('ip', ['link', 'show', 'dev', dev]).status === 0;
}

// ------------------------------------------------------------------ addresses and routes

/**
 * Throw unless every address routes, in the root namespace (where Moat runs),
 * via loopback or one of `allowedDevices` (the test's own veth). Only a route
 * lookup (`ip route get`): nothing is sent.
 */
export function assertRoutesInto(addresses: readonly string[], allowedDevices: readonly string[]): void {
  const allowed = new Set(['lo', ...allowedDevices]);
  const bad: string[] = [];
  for (const addr of addresses) {
    const r = hostRun('ip', ['route', 'get', addr], { timeoutMs: 5_000 });
    if (r.status !== 0) {
      bad.push(`${addr}: no route (${r.stderr.trim()})`);
      continue;
    }
    const dev = /\bdev (\S+)/.exec(r.stdout)?.[1];
    if (!dev || !allowed.has(dev)) {
      bad.push(`${addr}: routes via ${dev ?? '?'} (${r.stdout.split('\n')[0]?.trim()})`);
    }
  }
  if (bad.length > 0) {
    throw new Error(
      `refusing to run: test traffic must stay on loopback or inside the test's namespaces ` +
        `(allowed devices: ${[...allowed].join(', ')}):\n  ${bad.join('\n  ')}`,
    );
  }
}

function subnetLockPath(k: number): string {
  return join(REGISTRY_DIR, `subnet-${k}.lock`);
}

/** Atomically claim subnet index k (O_EXCL lock file holding our PID). */
function claimSubnet(k: number): boolean {
  const path = subnetLockPath(k);
  try {
    const fd = openSync(path, 'wx');
    writeFileSync(fd, String(process.pid));
    closeSync(fd);
    return true;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
  }
  // A lock from a dead process may be taken over.
  try {
    const owner = Number(readFileSync(path, 'utf8'));
    const ageMs = Date.now() - statSync(path).mtimeMs;
    if (Number.isInteger(owner) && owner > 0 && !pidAlive(owner) && ageMs > 1_000) {
      unlinkSync(path);
      return claimSubnet(k);
    }
  } catch {
    /* raced: treat as taken */
  }
  return false;
}

function releaseSubnet(k: number, owner: number): void {
  const path = subnetLockPath(k);
  try {
    if (Number(readFileSync(path, 'utf8')) === owner) unlinkSync(path);
  } catch {
    /* gone */
  }
}

/** The root namespace must not already route anything inside 198.18.2k.0/23. */
function subnetUnusedOnHost(k: number): boolean {
  const out = hostRun('ip', ['-4', 'route', 'show', 'table', 'all', 'root', `198.18.${2 * k}.0/23`]).stdout;
  return out.trim() === '';
}

// ------------------------------------------------------------------ topology

export interface TopologyOptions {
  /** Name prefix (also used to reap stale namespaces). Default "moat-e2e-". */
  prefix?: string;
  /** How many "internet server" addresses to put on remote's lo (default 4). */
  internetAddresses?: number;
  /** Keep IPv6 on in the guest namespace (default: off, to keep captures quiet). */
  guestIpv6?: boolean;
  /**
   * Give remote IPv6 "internet" addresses too (default off): the veth gets
   * fd19:8180:K:1::1/64 (root) and ::2 (remote), remote's lo
   * fd19:8180:K:2::n/128, and the root namespace routes fd19:8180:K:2::/64
   * via remote; checked with `ip -6 route get` like the IPv4 ones.
   */
  internetIpv6?: boolean;
}

export interface Topology {
  /** Unique prefix of this topology, e.g. "moat-e2e-3fa9c1-". */
  readonly prefix: string;
  /** Namespace for the guest: moat-shim creates its TAP here. */
  readonly guestNs: string;
  /** Namespace holding the "internet" servers, joined to the root namespace by a veth pair. */
  readonly remoteNs: string;
  /** The veth end in the root namespace (where Moat runs). */
  readonly hostVeth: string;
  /** The veth end inside remoteNs. */
  readonly remoteVeth: string;
  /** Root-namespace address on hostVeth (198.18.2k.1). */
  readonly hostAddr: string;
  /** remoteNs address on remoteVeth (198.18.2k.2). */
  readonly remoteAddr: string;
  readonly linkPrefixLen: 24;
  /** Addresses on remoteNs's lo (198.18.(2k+1).1, .2, ...), routed from the root namespace via the veth. */
  readonly internetAddrs: readonly string[];
  /** The /24 holding internetAddrs, e.g. "198.18.9.0/24". */
  readonly internetSubnet: string;
  /** assertRoutesInto(addresses, [hostVeth]). */
  assertRoutes(addresses: readonly string[]): void;
  /** IPv6 addresses on remote's lo (with internetIpv6), routed via the veth; empty otherwise. */
  readonly internetAddrs6: readonly string[];
  /** Delete everything this topology created (idempotent). */
  destroy(): void;
}

/**
 * Build: namespace <prefix>guest (empty but for lo), namespace <prefix>remote
 * joined to the root namespace by a veth pair (host 198.18.2k.1/24, remote
 * 198.18.2k.2/24), "internet" addresses 198.18.(2k+1).n/32 on remote's lo, and
 * a root-namespace route to 198.18.(2k+1).0/24 via remote. Verifies with
 * assertRoutes that all of them route via the veth before returning.
 */
export function createTopology(opts: TopologyOptions = {}): Topology {
  const basePrefix = opts.prefix ?? 'moat-e2e-';
  deleteStaleWithPrefix(basePrefix);
  const id = randomBytes(3).toString('hex');
  const prefix = `${basePrefix}${id}-`;
  // Interface names are limited to 15 bytes: short tag + id + side.
  const tag = basePrefix.replace(/[^A-Za-z0-9]/g, '').slice(0, 4) || 'me2e';
  const hostVeth = `${tag}${id}h`;
  const remoteVeth = `${tag}${id}r`;

  const r = registry();
  let k = -1;
  const start = randomBytes(1)[0]! % 128;
  for (let i = 0; i < 128; i++) {
    const cand = (start + i) % 128;
    if (claimSubnet(cand)) {
      if (subnetUnusedOnHost(cand)) {
        k = cand;
        break;
      }
      releaseSubnet(cand, process.pid);
    }
  }
  if (k < 0) throw new Error('no free 198.18.0.0/15 subnet pair for the e2e topology');
  r.subnets.push(k);
  r.links.push(hostVeth);
  saveRegistry();

  const hostAddr = `198.18.${2 * k}.1`;
  const remoteAddr = `198.18.${2 * k}.2`;
  const internetSubnet = `198.18.${2 * k + 1}.0/24`;
  const count = opts.internetAddresses ?? 4;
  const internetAddrs = Array.from({ length: count }, (_, i) => `198.18.${2 * k + 1}.${i + 1}`);
  const guestNs = `${prefix}guest`;
  const remoteNs = `${prefix}remote`;

  let destroyed = false;
  const destroy = (): void => {
    if (destroyed) return;
    destroyed = true;
    deleteNetns(guestNs);
    deleteNetns(remoteNs); // takes remoteVeth and so hostVeth with it
    if (hostLinkExists(hostVeth)) hostRun('ip', ['link', 'del', hostVeth]);
    if (currentRegistry) {
      currentRegistry.links = currentRegistry.links.filter((l) => l !== hostVeth);
      currentRegistry.subnets = currentRegistry.subnets.filter((s) => s !== k);
      saveRegistry();
    }
    releaseSubnet(k, process.pid);
  };

  try {
    createNetns(guestNs, { disableIpv6: !(opts.guestIpv6 ?? false) });
    createNetns(remoteNs);
    hostExec('ip', ['link', 'add', hostVeth, 'type', 'veth', 'peer', 'name', remoteVeth, 'netns', remoteNs]);
    hostRun('sysctl', ['-q', '-w', `net.ipv6.conf.${hostVeth}.disable_ipv6=1`]);
    hostExec('ip', ['addr', 'add', `${hostAddr}/24`, 'dev', hostVeth]);
    hostExec('ip', ['link', 'set', hostVeth, 'up']);
    nsExec(remoteNs, 'ip', ['addr', 'add', `${remoteAddr}/24`, 'dev', remoteVeth]);
    nsExec(remoteNs, 'ip', ['link', 'set', remoteVeth, 'up']);
    for (const a of internetAddrs) nsExec(remoteNs, 'ip', ['addr', 'add', `${a}/32`, 'dev', 'lo']);
    hostExec('ip', ['route', 'add', internetSubnet, 'via', remoteAddr, 'dev', hostVeth]);
    const internetAddrs6: string[] = [];
    if (opts.internetIpv6 === true) {
      const p6 = `fd19:8180:${k.toString(16)}`;
      if (hostRun('ip', ['-6', 'route', 'show', 'table', 'all', 'root', `${p6}::/48`]).stdout.trim() !== '') throw new Error(`${p6}::/48 is already routed on this host`);
      hostRun('sysctl', ['-q', '-w', `net.ipv6.conf.${hostVeth}.disable_ipv6=0`]);
      for (const key of ['all', 'default', 'lo', remoteVeth]) nsExec(remoteNs, 'sysctl', ['-q', '-w', `net.ipv6.conf.${key}.disable_ipv6=0`]);
      hostExec('ip', ['-6', 'addr', 'add', `${p6}:1::1/64`, 'dev', hostVeth, 'nodad']);
      nsExec(remoteNs, 'ip', ['-6', 'addr', 'add', `${p6}:1::2/64`, 'dev', remoteVeth, 'nodad']);
      for (let i = 1; i <= 2; i++) {
        internetAddrs6.push(`${p6}:2::${i}`);
        nsExec(remoteNs, 'ip', ['-6', 'addr', 'add', `${p6}:2::${i}/128`, 'dev', 'lo']);
      }
      hostExec('ip', ['-6', 'route', 'add', `${p6}:2::/64`, 'via', `${p6}:1::2`, 'dev', hostVeth]);
    }
    const topo: Topology = {
      prefix,
      guestNs,
      remoteNs,
      hostVeth,
      remoteVeth,
      hostAddr,
      remoteAddr,
      linkPrefixLen: 24,
      internetAddrs,
      internetSubnet,
      assertRoutes: (addresses) => assertRoutesInto(addresses, [hostVeth]),
      internetAddrs6,
      destroy,
    };
    topo.assertRoutes([remoteAddr, ...internetAddrs, ...internetAddrs6]);
    return topo;
  } catch (e) {
    destroy();
    throw e;
  }
}

// ------------------------------------------------------------------ moat-shim

/**
 * The repository: the nearest folder above this file with a package.json, so
 * that the same code works from test/e2e/*.ts and compiled under dist/.
 */
export const REPO_ROOT = findRepoRoot(dirname(fileURLToPath(import.meta.url)));

function findRepoRoot(start: string): string {
  for (let dir = start; ; dir = dirname(dir)) {
    if (existsSync(join(dir, 'package.json'))) return dir;
    if (dirname(dir) === dir) throw new Error(`harness: no package.json above ${start}`);
  }
}

const repoRoot = REPO_ROOT;

/** Absolute path of the moat-shim binary (built by scripts/build-shim.mjs). */
export const SHIM_PATH = join(repoRoot, 'src', 'shim', 'moat-shim');

/** Build moat-shim unless the binary is newer than every source; returns SHIM_PATH. */
export function ensureShimBuilt(): string {
  const dir = join(repoRoot, 'src', 'shim');
  const newestSource = Math.max(
    ...readdirSync(dir)
      .filter((f) => f.endsWith('.c') || f.endsWith('.h'))
      .map((f) => statSync(join(dir, f)).mtimeMs),
  );
  if (!existsSync(SHIM_PATH) || statSync(SHIM_PATH).mtimeMs < newestSource) {
    execFileSync(process.execPath, [join(repoRoot, 'scripts', 'build-shim.mjs')], {
      stdio: 'inherit',
      timeout: 120_000,
    });
  }
  return SHIM_PATH;
}

/**
 * Start moat-shim with `args` (e.g. ['tap', '--dev', 'moat0', '--netns', ns,
 * '--connect', 'unix:///path']) and wait until it reports "ready".
 */
export async function startShim(args: string[], timeoutMs = 5_000): Promise<TrackedProcess> {
  const p = spawnTracked(ensureShimBuilt(), args);
  await waitForOutput(p, /moat-shim: ready/, { timeoutMs });
  return p;
}
