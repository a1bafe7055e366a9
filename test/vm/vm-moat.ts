/**
 * What a VM test runs on the host side: a `moat serve` child process waiting
 * for QEMU on a unix socket (no shim, no TAP: QEMU is the guest's wire), a
 * tiny DNS server on loopback standing in for --dns-upstream, and an HTTP
 * server on 127.0.0.1 that the guest reaches through Moat's host alias
 * 192.168.127.254 (or on ::1, reached through the IPv6 host alias ::fe).
 *
 * Every process goes through the e2e harness (tracked by PID, killed on
 * every exit path); every server here listens on 127.0.0.1 only.
 */
import { createHash, randomBytes } from 'node:crypto';
import { createServer, type Server } from 'node:http';
import { createServer as createNetServer, type AddressInfo } from 'node:net';
import { join } from 'node:path';
import { killTracked, nsSpawn, spawnTracked, waitForOutput, type TrackedProcess } from '../e2e/harness.js';
import { DNS_SERVER_JS, MOAT_BIN, unixHttp, type ApiResponse, type DnsZone, type MoatStats } from '../e2e/moat-fixture.js';

export interface VmMoat {
  readonly proc: TrackedProcess;
  /** The socket QEMU (or moat-shim) connects to. */
  readonly socket: string;
  readonly apiSocket: string;
  api(method: 'GET' | 'POST' | 'PUT', path: string, body?: unknown): Promise<ApiResponse>;
  stats(): Promise<MoatStats>;
  /** Moat's JSON log lines, parsed. */
  logEntries(): Record<string, unknown>[];
  /** Moat's log tail, for failure messages. */
  logTail(chars?: number): string;
  stop(): Promise<void>;
}

/** Start `moat serve --listen-qemu unix://DIR/NAME.sock --api ...` and wait for "moat ready". */
export async function startMoat(dir: string, name: string, args: string[]): Promise<VmMoat> {
  const socket = join(dir, `${name}.sock`);
  const apiSocket = join(dir, `${name}-api.sock`);
  const proc = spawnTracked(process.execPath, [
    MOAT_BIN,
    'serve',
    '--listen-qemu',
    `unix://${socket}`,
    '--api',
    `unix://${apiSocket}`,
    '--log-format',
    'json',
    ...args,
  ]);
  try {
    await waitForOutput(proc, /"msg":"moat ready"/, { timeoutMs: 20_000 });
  } catch (e) {
    await killTracked(proc).catch(() => {});
    throw new Error(`moat serve did not start: ${(e as Error).message}\n${proc.stderr().slice(-3000)}`);
  }
  const logEntries = (): Record<string, unknown>[] => {
    const out: Record<string, unknown>[] = [];
    for (const line of proc.stderr().split('\n')) {
      try {
        out.push(JSON.parse(line) as Record<string, unknown>);
      } catch {
        /* not JSON */
      }
    }
    return out;
  };
  return {
    proc,
    socket,
    apiSocket,
    api: (method, path, body) => unixHttp(apiSocket, method, path, body),
    async stats() {
      const r = await unixHttp(apiSocket, 'GET', '/stats');
      if (r.status !== 200) throw new Error(`GET /stats: ${r.status} ${r.text}`);
      return r.body as MoatStats;
    },
    logEntries,
    logTail: (chars = 3000) => proc.stderr().slice(-chars),
    async stop() {
      await killTracked(proc, 'SIGTERM', 3_000).catch(() => killTracked(proc, 'SIGKILL').catch(() => {}));
    },
  };
}

/** A port on 127.0.0.1 that was free a moment ago. */
export async function freeLoopbackPort(): Promise<number> {
  const s = createNetServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  const port = (s.address() as AddressInfo).port;
  await new Promise<void>((r) => s.close(() => r()));
  return port;
}

/** The test DNS server (moat-fixture's DNS_SERVER_JS) on ADDR:PORT, in the root namespace or in namespace `ns`. */
export async function startDnsServer(addr: string, port: number, zone: DnsZone, ns?: string): Promise<TrackedProcess> {
  const args = ['-e', DNS_SERVER_JS, addr, String(port), JSON.stringify(zone)];
  const p = ns === undefined ? spawnTracked(process.execPath, args) : nsSpawn(ns, process.execPath, args);
  try {
    await waitForOutput(p, /^ready/m, { stream: 'stdout', timeoutMs: 10_000 });
  } catch (e) {
    await killTracked(p).catch(() => {});
    throw e;
  }
  return p;
}

/**
 * The host's HTTP server on 127.0.0.1 (the guest reaches it as
 * 192.168.127.254:PORT):
 *   GET /hello   "moat-vm hello"
 *   GET /big     BIG_SIZE random bytes (sha256 in `bigSha256`)
 *   GET /boot/KEY  a counter per KEY: "1" the first time, then "2", ... (the reboot case)
 *   GET /wait/KEY  "go" once release(KEY) was called, else 404 (the guest polls it)
 */
export interface HostHttp {
  readonly port: number;
  readonly bigSize: number;
  readonly bigSha256: string;
  /** Requests seen, "METHOD /path". */
  readonly requests: string[];
  release(key: string): void;
  close(): Promise<void>;
}

/** `host`: 127.0.0.1, or ::1 for the IPv6 host alias (loopback either way). */
export async function startHostHttp(bigSize = 8 * 1024 * 1024, host: '127.0.0.1' | '::1' = '127.0.0.1'): Promise<HostHttp> {
  const big = randomBytes(bigSize);
  const bigSha256 = createHash('sha256').update(big).digest('hex');
  const requests: string[] = [];
  const boots = new Map<string, number>();
  const released = new Set<string>();
  const server: Server = createServer((req, res) => {
    requests.push(`${req.method} ${req.url}`);
    if (req.url === '/hello') return void res.end('moat-vm hello\n');
    if (req.url === '/big') {
      res.writeHead(200, { 'content-length': big.length });
      return void res.end(big);
    }
    const boot = /^\/boot\/(\w+)$/.exec(req.url ?? '');
    if (boot) {
      const n = (boots.get(boot[1]!) ?? 0) + 1;
      boots.set(boot[1]!, n);
      return void res.end(`${n}\n`);
    }
    const wait = /^\/wait\/(\w+)$/.exec(req.url ?? '');
    if (wait) {
      const go = released.has(wait[1]!);
      res.writeHead(go ? 200 : 404);
      return void res.end(go ? 'go\n' : 'not yet\n');
    }
    res.writeHead(404);
    res.end();
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, host, resolve);
  });
  return {
    port: (server.address() as AddressInfo).port,
    bigSize,
    bigSha256,
    requests,
    release: (key) => {
      released.add(key);
    },
    close: () =>
      new Promise<void>((r) => {
        server.closeAllConnections();
        server.close(() => r());
      }),
  };
}
