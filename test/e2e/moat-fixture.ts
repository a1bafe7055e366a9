/**
 * Fixture for end-to-end tests of `moat serve` with the real Linux kernel as
 * the guest:
 *
 *   guest netns (TAP "moat0", configured by busybox udhcpc)
 *        |  moat-shim tap --netns guest --connect unix://moat.sock
 *   Moat (child process `node bin/moat.mjs serve`, root namespace)
 *        |  NAT dials from the root namespace
 *   remote netns (servers standing in for the internet; a DNS server for
 *   --dns-upstream) joined to the root namespace by the topology's veth.
 *
 * Safety: before anything is started the fixture checks (assertRoutesInto)
 * that every address the guest may reach routes, from the root namespace
 * where Moat dials, via loopback or the topology's veth. `guestRun` refuses a
 * command line naming an IPv4 address outside that checked set, so a typo can
 * never make Moat's NAT dial the real network.
 *
 * Every process is started through the harness (tracked by PID); `stop()`
 * kills them by PID and removes the namespaces, and the harness's exit
 * handlers do the same if a test crashes.
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync, existsSync, statSync, chmodSync } from 'node:fs';
import { request } from 'node:http';
import { isIPv6 } from 'node:net';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  createTopology,
  ensureShimBuilt,
  killTracked,
  nsRunAsync,
  nsSpawn,
  onCleanup,
  spawnTracked,
  startShim,
  waitFor,
  waitForOutput,
  type ExecOptions,
  type ExecResult,
  type Topology,
  type TrackedProcess,
  REPO_ROOT,
} from './harness.js';

const repoRoot = REPO_ROOT;
export const MOAT_BIN = join(repoRoot, 'bin', 'moat.mjs');
const MOAT_CLI_JS = join(repoRoot, 'dist', 'src', 'cli.js');
export const DNS_PACKET_PATH = createRequire(import.meta.url).resolve('dns-packet');

/** Moat's defaults for 192.168.127.0/24 (see `moat serve --help`). */
export const GATEWAY_IP = '192.168.127.1';
export const GUEST_IP = '192.168.127.2';
export const HOST_IP = '192.168.127.254';
export const GUEST_PREFIX = 24;

/** Tools the fixture itself needs (tests add their own to e2eGate). */
export const FIXTURE_TOOLS: readonly string[] = ['ip', 'busybox', 'cc'];

// ------------------------------------------------------------------ types

export interface DnsRecordSpec {
  type: 'A' | 'AAAA' | 'TXT' | 'MX' | 'CNAME';
  /** A/AAAA/CNAME: string; TXT: string; MX: { preference, exchange }. */
  data: string | { preference: number; exchange: string };
  ttl?: number;
}

/** name (lower case, no trailing dot) -> records. Names not listed answer NXDOMAIN. */
export type DnsZone = Record<string, DnsRecordSpec[]>;

export interface MoatFixtureOptions {
  /** Namespace prefix (default "me8-"). */
  prefix?: string;
  /** --mtu for Moat (default 1500). */
  mtu?: number;
  /** --log-level (default "info"; "debug" logs every dropped frame). */
  logLevel?: 'debug' | 'info' | 'warn' | 'error';
  /** Extra `moat serve` flags (a function gets the topology, e.g. to name remote's addresses). */
  extraMoatArgs?: string[] | ((topo: Topology) => string[]);
  /** Script to run instead of bin/moat.mjs (e.g. a patched build, for a differential diagnosis). */
  moatBin?: string;
  /** Extra node flags for Moat (e.g. ['--cpu-prof']). */
  nodeArgs?: string[];
  /** Start a DNS server in remote (default true) and point --dns-upstream at it. */
  dns?: boolean;
  /** Records the remote DNS server answers (default: DEFAULT_ZONE(fixture)). */
  dnsZone?: (topo: Topology) => DnsZone;
  /** Code of the remote DNS server (default DNS_SERVER_JS); run as `node -e CODE ADDR 53 ZONE_JSON`, it must print "ready". */
  dnsServerJs?: string;
  /** Write a pcap of the guest link (--pcap) into the fixture's directory. */
  pcap?: boolean;
  /** Run udhcpc after the shim is up (default true). */
  dhcp?: boolean;
  /** "internet" addresses on remote's lo (default 4). */
  internetAddresses?: number;
  /** Name of the TAP device inside the guest namespace (default "moat0"). */
  tapName?: string;
  /**
   * How the TAP reaches Moat: "relay" (default) runs moat-shim --connect to
   * Moat's stream socket; "exec" starts Moat through `moat-shim tap --exec`
   * with the TAP on descriptor 3 (--tap-fd 3), so the shim process is Moat.
   */
  link?: 'relay' | 'exec';
  /** With link "exec": open the TAP with a virtio-net header (moat-shim --vnet-hdr, moat --tap-vnet-hdr). Default true. */
  vnetHdr?: boolean;
  /** With a virtio-net header: receive offload (moat-shim --offload, moat --tap-offload). Default false. */
  offload?: boolean;
  /** Leave IPv6 on in the guest namespace (SLAAC from Moat's RAs); default off (no RS/MLD noise). */
  guestIpv6?: boolean;
  /** IPv6 "internet" addresses in remote (topology internetIpv6). */
  internetIpv6?: boolean;
  /**
   * Moat's whole command line after bin/moat.mjs instead of `serve ...` (e.g.
   * `moat gvproxy` with gvproxy's flags); it must listen for the guest at
   * `moatSocket` and serve the API at `apiSocket`. Link "relay" only.
   */
  moatCommand?: (ctx: { moatSocket: string; apiSocket: string; dnsServerAddr: string; dir: string; mtu: number; topo: Topology }) => string[];
  /** Resolves once that Moat is ready (default: its "moat ready" log line on stderr). */
  moatReady?: (moat: TrackedProcess) => Promise<void>;
  /** With link "exec": more moat-shim flags before --exec (e.g. ['--icmp']). */
  shimArgs?: string[];
  /** With link "relay": a command Moat is started through (e.g. [shim, 'icmp', '--exec']); node and its arguments follow. */
  moatLauncher?: string[];
}

/** What udhcpc's script saw in the lease (environment variables from busybox). */
export interface Lease {
  ip: string;
  /** Prefix length (from $mask, or computed from $subnet). */
  prefix: number;
  router: string;
  dns: string[];
  mtu: number | undefined;
  /** Every variable the script recorded, raw. */
  env: Record<string, string>;
}

export interface MoatStats {
  frames: { in: number; out: number };
  bytes: { in: number; out: number };
  drops: Record<string, number>;
  flows: Record<string, number>;
  [key: string]: unknown;
}

export interface ApiResponse {
  status: number;
  /** Parsed JSON body (or the raw text when it is not JSON). */
  body: unknown;
  text: string;
}

export interface MoatFixture {
  readonly topo: Topology;
  readonly guestNs: string;
  readonly remoteNs: string;
  readonly tap: string;
  /** Temporary directory holding the sockets, the udhcpc script, lease files, pcap. */
  readonly dir: string;
  readonly moatSocket: string;
  readonly apiSocket: string;
  readonly mtu: number;
  /** remote's veth address, where the DNS server listens (port 53). */
  readonly dnsServerAddr: string;
  /** The moat process (its stderr holds the JSON log). */
  readonly moat: TrackedProcess;
  /** How the TAP reaches Moat (options.link). */
  readonly link: 'relay' | 'exec';
  /** The current shim process (changes after restartShim); with link "exec" the shim became Moat: this is `moat`. */
  readonly shim: TrackedProcess;
  /** The DNS server in remote, if started (prints "query NAME TYPE udp|tcp" per question). */
  readonly dnsServer: TrackedProcess | undefined;
  /** The lease from the last dhcp() (undefined before). */
  readonly lease: Lease | undefined;
  /** Path of the pcap (when options.pcap). */
  readonly pcapFile: string | undefined;

  /**
   * Check that `addresses` route into our namespaces (or loopback) from the
   * root namespace and allow guestRun command lines to name them.
   */
  allowAddresses(addresses: readonly string[]): void;
  /** Run a command in the guest namespace (async; refuses unchecked IPv4 literals in args). */
  guestRun(cmd: string, args: string[], opts?: Omit<ExecOptions, 'allowFail'>): Promise<ExecResult>;
  /** Spawn a long-running command in the guest namespace (tracked; same address check). */
  guestSpawn(cmd: string, args: string[]): TrackedProcess;
  /** Run a command in the remote namespace (async). */
  remoteRun(cmd: string, args: string[], opts?: Omit<ExecOptions, 'allowFail'>): Promise<ExecResult>;
  /** Spawn a long-running command in the remote namespace (tracked). */
  remoteSpawn(cmd: string, args: string[]): TrackedProcess;
  /**
   * Start `node -e code args...` in namespace `ns` (guest or remote) and wait
   * until it prints a line matching `ready` (default /^ready/m) on stdout.
   */
  startNodeServer(ns: string, code: string, args: string[], ready?: RegExp): Promise<TrackedProcess>;
  /** Run udhcpc on the TAP and apply the lease (address, default route, MTU). */
  dhcp(): Promise<Lease>;
  /** GET/POST/PUT on the control API (unix socket). */
  api(method: 'GET' | 'POST' | 'PUT', path: string, body?: unknown): Promise<ApiResponse>;
  /** GET /stats. */
  stats(): Promise<MoatStats>;
  /**
   * SIGKILL the shim, start a new one (a new TAP), give the new TAP the old
   * MAC (as a VM's NIC keeps its MAC across a reconnect; keepMac=false leaves
   * the kernel's new random MAC), and (unless dhcp=false) run udhcpc again.
   */
  restartShim(opts?: { dhcp?: boolean; keepMac?: boolean }): Promise<void>;
  /** The TAP's current MAC address ("aa:bb:..."). */
  tapMac(): Promise<string>;
  /** Moat's log so far (JSON lines on stderr). */
  moatLog(): string;
  /** Moat's log lines parsed (lines that are not JSON are skipped). */
  moatLogEntries(): Record<string, unknown>[];
  /** Stop Moat (SIGTERM, then SIGKILL), the shim and servers, delete namespaces. Idempotent. */
  stop(): Promise<void>;
}

// ------------------------------------------------------------------ helper scripts (node -e)

/** A DNS server (UDP + TCP on ADDR:PORT) answering from a JSON zone; prints "ready" then one line per question. */
export const DNS_SERVER_JS = `
const dgram = require('node:dgram');
const net = require('node:net');
const dnsPacket = require(${JSON.stringify(DNS_PACKET_PATH)});
const [addr, port, zoneJson] = process.argv.slice(1);
const zone = JSON.parse(zoneJson);
function answer(buf, proto) {
  let q;
  try { q = dnsPacket.decode(buf); } catch (e) { console.log('bad query ' + e.message); return undefined; }
  const answers = [];
  let rcode = 0;
  for (const question of q.questions || []) {
    const name = String(question.name).toLowerCase().replace(/\\.$/, '');
    console.log('query ' + name + ' ' + question.type + ' ' + proto);
    const records = zone[name];
    if (!records) { rcode = 3; continue; }
    for (const r of records) {
      if (r.type === question.type || (r.type === 'CNAME' && question.type !== 'CNAME')) {
        answers.push({ name: question.name, type: r.type, class: 'IN', ttl: r.ttl ?? 60,
          data: r.type === 'TXT' ? [r.data] : r.data });
      }
    }
  }
  const rd = (q.flags & dnsPacket.RECURSION_DESIRED);
  return dnsPacket.encode({ type: 'response', id: q.id,
    flags: dnsPacket.AUTHORITATIVE_ANSWER | rd | dnsPacket.RECURSION_AVAILABLE | rcode,
    questions: q.questions, answers });
}
const udp = dgram.createSocket('udp4');
udp.on('message', (msg, rinfo) => { const r = answer(msg, 'udp'); if (r) udp.send(r, rinfo.port, rinfo.address); });
const tcp = net.createServer((sock) => {
  let pending = Buffer.alloc(0);
  sock.on('data', (d) => {
    pending = Buffer.concat([pending, d]);
    while (pending.length >= 2 && pending.length >= 2 + pending.readUInt16BE(0)) {
      const len = pending.readUInt16BE(0);
      const r = answer(pending.subarray(2, 2 + len), 'tcp');
      pending = pending.subarray(2 + len);
      if (r) { const head = Buffer.alloc(2); head.writeUInt16BE(r.length); sock.write(Buffer.concat([head, r])); }
    }
  });
  sock.on('error', () => {});
});
let up = 0;
const ready = () => { if (++up === 2) console.log('ready'); };
udp.bind(Number(port), addr, ready);
tcp.listen(Number(port), addr, ready);
`;

/** HTTP server on ADDR:PORT: GET / answers "NAME /path"; GET /bytes/N answers N bytes of 'x'. Prints "ready PORT". */
export const HTTP_SERVER_JS = `
const http = require('node:http');
const [addr, port, name] = process.argv.slice(1);
const server = http.createServer((req, res) => {
  const m = /^\\/bytes\\/(\\d+)$/.exec(req.url || '');
  if (m) { const n = Number(m[1]); res.writeHead(200, { 'content-length': n }); res.end(Buffer.alloc(n, 120)); return; }
  res.end(name + ' ' + req.url + ' from ' + req.socket.remoteAddress + '\\n');
});
server.listen(Number(port), addr, () => console.log('ready ' + server.address().port));
`;

/** UDP echo server on ADDR:PORT: sends every datagram back unchanged. Prints "ready PORT". */
export const UDP_ECHO_JS = `
const dgram = require('node:dgram');
const [addr, port] = process.argv.slice(1);
const s = dgram.createSocket('udp4');
s.on('message', (msg, rinfo) => s.send(msg, rinfo.port, rinfo.address));
s.bind(Number(port), addr, () => console.log('ready ' + s.address().port));
`;

/**
 * UDP client: sends each of COUNT payloads "PREFIX-i" to ADDR:PORT and prints
 * every reply ("reply <text> from <addr>:<port>"); exits 0 when all came back,
 * 1 after TIMEOUT_MS.
 */
export const UDP_CLIENT_JS = `
const dgram = require('node:dgram');
const [addr, port, prefix, count, timeoutMs] = process.argv.slice(1);
const s = dgram.createSocket('udp4');
const want = new Set();
for (let i = 0; i < Number(count); i++) want.add(prefix + '-' + i);
s.on('message', (msg, rinfo) => {
  const t = msg.toString();
  console.log('reply ' + t + ' from ' + rinfo.address + ':' + rinfo.port);
  want.delete(t);
  if (want.size === 0) { s.close(); process.exit(0); }
});
s.bind(0, () => { for (const p of want) s.send(p, Number(port), addr); });
setTimeout(() => { console.log('missing ' + [...want].join(',')); process.exit(1); }, Number(timeoutMs));
`;

// ------------------------------------------------------------------ small helpers

const IPV4_RE = /(?<![\d.])(\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3})(?![\d.])/g;

/** IPv4 literals appearing anywhere in `args` (URLs, host:port, @server, ...). */
export function ipv4Literals(args: readonly string[]): string[] {
  const out: string[] = [];
  for (const a of args) for (const m of a.matchAll(IPV4_RE)) out.push(m[1]!);
  return out;
}

/** IPv6 literals anywhere in `args` (two colons or more that parse as an address; "[a::b]:80" gives a::b). */
export function ipv6Literals(args: readonly string[]): string[] {
  const out: string[] = [];
  for (const a of args) {
    for (const m of a.matchAll(/[0-9a-fA-F:.]*:[0-9a-fA-F:.]*:[0-9a-fA-F:.]*/g)) {
      const t = m[0].replace(/\.+$/, '');
      if (isIPv6(t)) out.push(t);
    }
  }
  return out;
}

function maskToPrefix(mask: string): number {
  return mask
    .split('.')
    .map((o) => Number(o).toString(2).replace(/0/g, '').length)
    .reduce((a, b) => a + b, 0);
}

/** The udhcpc script: records the environment, applies the lease. */
function udhcpcScript(leaseFile: string): string {
  return `#!/bin/sh
# busybox udhcpc event script: $1 is deconfig|bound|renew|leasefail|nak.
case "$1" in
  deconfig)
    ip -4 addr flush dev "$interface"
    ip link set dev "$interface" up
    ;;
  bound|renew)
    env | grep -E '^(interface|ip|subnet|mask|router|dns|mtu|serverid|lease|broadcast|domain|search)=' > "${leaseFile}.tmp"
    ip -4 addr flush dev "$interface"
    if [ -n "$mtu" ]; then ip link set dev "$interface" mtu "$mtu" || exit 1; fi
    ip addr add "$ip/\${mask:-$subnet}" \${broadcast:+broadcast $broadcast} dev "$interface" || exit 1
    for r in $router; do ip route replace default via "$r" dev "$interface" || exit 1; break; done
    mv "${leaseFile}.tmp" "${leaseFile}"
    ;;
esac
exit 0
`;
}

function parseLeaseFile(text: string): Lease {
  const env: Record<string, string> = {};
  for (const line of text.split('\n')) {
    const eq = line.indexOf('=');
    if (eq > 0) env[line.slice(0, eq)] = line.slice(eq + 1);
  }
  const prefix = env['mask'] !== undefined && /^\d+$/.test(env['mask']) ? Number(env['mask']) : maskToPrefix(env['subnet'] ?? '');
  return {
    ip: env['ip'] ?? '',
    prefix,
    router: (env['router'] ?? '').split(/\s+/)[0] ?? '',
    dns: (env['dns'] ?? '').split(/\s+/).filter((s) => s !== ''),
    mtu: env['mtu'] !== undefined ? Number(env['mtu']) : undefined,
    env,
  };
}

/** A zone with a few record types, pointing at the topology's first internet address. */
export function defaultZone(topo: Topology): DnsZone {
  return {
    'www.me8.test': [
      { type: 'A', data: topo.internetAddrs[0]! },
      { type: 'AAAA', data: '2001:db8::8' },
      { type: 'TXT', data: 'moat e2e says hello' },
      { type: 'MX', data: { preference: 10, exchange: 'mail.me8.test' } },
    ],
    'mail.me8.test': [{ type: 'A', data: topo.internetAddrs[1]! }],
  };
}

function warnIfDistStale(): void {
  if (!existsSync(MOAT_CLI_JS)) {
    throw new Error(`${MOAT_CLI_JS} is missing: build first (cd ${repoRoot} && npx tsc -p .)`);
  }
  const built = statSync(MOAT_CLI_JS).mtimeMs;
  for (const f of ['serve.ts', 'cli.ts', 'config.ts']) {
    const src = join(repoRoot, 'src', f);
    if (existsSync(src) && statSync(src).mtimeMs > built) {
      process.stderr.write(`moat-fixture: warning: src/${f} is newer than dist/: Moat may be stale (npx tsc -p .)\n`);
      return;
    }
  }
}

/** One HTTP request over a unix socket, bounded in time. */
export function unixHttp(socketPath: string, method: string, path: string, body?: unknown, timeoutMs = 5_000): Promise<ApiResponse> {
  return new Promise((resolve, reject) => {
    const payload = body === undefined ? undefined : JSON.stringify(body);
    const req = request(
      {
        socketPath,
        method,
        path,
        headers: payload === undefined ? {} : { 'content-type': 'application/json', 'content-length': Buffer.byteLength(payload) },
        timeout: timeoutMs,
      },
      (res) => {
        let text = '';
        res.setEncoding('utf8');
        res.on('data', (d: string) => (text += d));
        res.on('end', () => {
          let parsed: unknown = text;
          try {
            parsed = JSON.parse(text);
          } catch {
            /* not JSON */
          }
          resolve({ status: res.statusCode ?? 0, body: parsed, text });
        });
        res.on('error', reject);
      },
    );
    req.on('timeout', () => req.destroy(new Error(`${method} ${path} on ${socketPath}: timed out after ${timeoutMs} ms`)));
    req.on('error', reject);
    req.end(payload);
  });
}

/**
 * Wait for `pattern` in a tracked process's output, but fail at once (not
 * after the timeout) if the process exits first.
 */
async function waitForReady(p: TrackedProcess, pattern: RegExp, stream: 'stdout' | 'stderr', timeoutMs: number, what: string): Promise<void> {
  const exited = p.exited.then(({ code, signal }) => {
    throw new Error(`${what} exited (${code ?? signal}) before it was ready; stderr: ${p.stderr().slice(-2000)}`);
  });
  exited.catch(() => {}); // a later exit (after ready) is the caller's business, not an unhandled rejection
  await Promise.race([waitForOutput(p, pattern, { stream, timeoutMs }), exited]);
}

// ------------------------------------------------------------------ the fixture

/**
 * Build the topology, start the DNS server in remote, Moat, the shim, and run
 * udhcpc in the guest. On any failure everything started so far is stopped
 * before the error is thrown.
 */
export async function startMoatFixture(options: MoatFixtureOptions = {}): Promise<MoatFixture> {
  warnIfDistStale();
  ensureShimBuilt();
  const mtu = options.mtu ?? 1500;
  const tap = options.tapName ?? 'moat0';
  const topo = createTopology({ prefix: options.prefix ?? 'me8-', internetAddresses: options.internetAddresses ?? 4, guestIpv6: options.guestIpv6 ?? false, internetIpv6: options.internetIpv6 ?? false });
  const dir = mkdtempSync(join(tmpdir(), `${options.prefix ?? 'me8-'}moat-`));
  let stopped = false;
  const procs: TrackedProcess[] = [];
  const removeDir = (): void => rmSync(dir, { recursive: true, force: true });
  onCleanup(removeDir);

  // Every address the guest may name, checked once, up front.
  const allowed = new Set<string>([GATEWAY_IP, GUEST_IP, HOST_IP]);
  const allowAddresses = (addresses: readonly string[]): void => {
    const toCheck = addresses.filter((a) => !allowed.has(a));
    if (toCheck.length === 0) return;
    topo.assertRoutes(toCheck);
    for (const a of toCheck) allowed.add(a);
  };
  const checkArgs = (cmd: string, args: readonly string[]): void => {
    const bad = ipv4Literals([cmd, ...args]).filter((a) => !allowed.has(a) && !a.startsWith('0.') && a !== '0.0.0.0');
    if (bad.length > 0) {
      throw new Error(
        `moat-fixture: refusing to run "${cmd} ${args.join(' ')}" in the guest: ${bad.join(', ')} not checked by allowAddresses()`,
      );
    }
  };

  const moatSocket = join(dir, 'moat.sock');
  const apiSocket = join(dir, 'api.sock');
  const pcapFile = options.pcap ? join(dir, 'guest.pcap') : undefined;
  const leaseFile = join(dir, 'lease.env');
  const scriptFile = join(dir, 'udhcpc.sh');
  writeFileSync(scriptFile, udhcpcScript(leaseFile));
  chmodSync(scriptFile, 0o755);

  let moat: TrackedProcess | undefined;
  let shim: TrackedProcess | undefined;
  let dnsServer: TrackedProcess | undefined;
  let lease: Lease | undefined;
  /** The TAP's MAC when the last lease was taken (restartShim restores it even if the TAP is already gone). */
  let leasedMac: string | undefined;

  const stop = async (): Promise<void> => {
    if (stopped) return;
    stopped = true;
    if (shim && shim !== moat) await killTracked(shim, 'SIGKILL').catch(() => {});
    if (moat) {
      await killTracked(moat, 'SIGTERM', 3_000).catch(async () => {
        if (moat) await killTracked(moat, 'SIGKILL').catch(() => {});
      });
    }
    for (const p of procs) await killTracked(p, 'SIGKILL').catch(() => {});
    topo.destroy();
    removeDir();
  };

  const startNodeServer = async (ns: string, code: string, args: string[], ready = /^ready/m): Promise<TrackedProcess> => {
    if (ns === topo.guestNs) checkArgs('node', args);
    const p = nsSpawn(ns, process.execPath, ['-e', code, ...args]);
    procs.push(p);
    try {
      await waitForReady(p, ready, 'stdout', 10_000, `node server in ${ns}`);
    } catch (e) {
      await killTracked(p).catch(() => {});
      throw new Error(`node server in ${ns} did not start: ${(e as Error).message}; stderr: ${p.stderr()}`);
    }
    return p;
  };

  const dhcp = async (): Promise<Lease> => {
    rmSync(leaseFile, { force: true });
    // The interface is named explicitly: udhcpc must touch the TAP only.
    const r = await nsRunAsync(
      topo.guestNs,
      'busybox',
      ['udhcpc', '-i', tap, '-n', '-q', '-f', '-t', '5', '-T', '1', '-O', 'mtu', '-s', scriptFile],
      { timeoutMs: 15_000 },
    );
    if (r.status !== 0 || !existsSync(leaseFile)) {
      throw new Error(`udhcpc on ${tap} failed (exit ${r.status}): ${r.stderr.trim()} ${r.stdout.trim()}`);
    }
    lease = parseLeaseFile(readFileSync(leaseFile, 'utf8'));
    leasedMac = await tapMac().catch(() => leasedMac);
    return lease;
  };

  const tapMac = async (): Promise<string> => {
    const r = await nsRunAsync(topo.guestNs, 'cat', [`/sys/class/net/${tap}/address`]);
    if (r.status !== 0) throw new Error(`no TAP ${tap} in ${topo.guestNs}: ${r.stderr.trim()}`);
    return r.stdout.trim();
  };

  const startShimNow = async (): Promise<TrackedProcess> =>
    startShim(['tap', '--dev', tap, '--netns', topo.guestNs, '--connect', `unix://${moatSocket}`], 10_000);

  try {
    topo.assertRoutes(['127.0.0.1']);
    allowAddresses(['127.0.0.1', topo.remoteAddr, ...topo.internetAddrs]);

    const dnsServerAddr = topo.remoteAddr;
    if (options.dns ?? true) {
      const zone = (options.dnsZone ?? defaultZone)(topo);
      dnsServer = await startNodeServer(topo.remoteNs, options.dnsServerJs ?? DNS_SERVER_JS, [dnsServerAddr, '53', JSON.stringify(zone)]);
    }

    const link = options.link ?? 'relay';
    const vnetHdr = link === 'exec' && (options.vnetHdr ?? true);
    const offload = vnetHdr && options.offload === true;
    const args = [
      ...(options.nodeArgs ?? []),
      options.moatBin ?? MOAT_BIN,
      'serve',
      ...(link === 'exec' ? ['--tap-fd', '3', ...(vnetHdr ? ['--tap-vnet-hdr'] : []), ...(offload ? ['--tap-offload'] : [])] : ['--listen-qemu', `unix://${moatSocket}`]),
      '--api',
      `unix://${apiSocket}`,
      // Never the host's resolver: our DNS server in remote (or, without one, a closed port there).
      '--dns-upstream',
      `${dnsServerAddr}:53`,
      '--mtu',
      String(mtu),
      '--log-format',
      'json',
      '--log-level',
      options.logLevel ?? 'info',
      ...(pcapFile ? ['--pcap', pcapFile] : []),
      ...(typeof options.extraMoatArgs === 'function' ? options.extraMoatArgs(topo) : (options.extraMoatArgs ?? [])),
    ];
    if (link === 'exec') {
      const shimArgs = ['tap', '--dev', tap, '--netns', topo.guestNs, ...(vnetHdr ? ['--vnet-hdr'] : []), ...(offload ? ['--offload'] : []), ...(options.shimArgs ?? [])];
      moat = spawnTracked(ensureShimBuilt(), [...shimArgs, '--exec', process.execPath, ...args]);
      shim = moat;
      await waitForReady(moat, /"msg":"moat ready"/, 'stderr', 15_000, 'moat-shim tap --exec moat serve');
    } else {
      const command = options.moatCommand?.({ moatSocket, apiSocket, dnsServerAddr, dir, mtu, topo });
      const argv = command === undefined ? args : [...(options.nodeArgs ?? []), options.moatBin ?? MOAT_BIN, ...command];
      const launcher = options.moatLauncher ?? [];
      moat = launcher.length === 0 ? spawnTracked(process.execPath, argv) : spawnTracked(launcher[0]!, [...launcher.slice(1), process.execPath, ...argv]);
      if (options.moatReady !== undefined) {
        const m = moat;
        const exited = m.exited.then(({ code, signal }) => {
          throw new Error(`moat exited (${code ?? signal}) before it was ready; stderr: ${m.stderr().slice(-2000)}`);
        });
        exited.catch(() => {});
        await Promise.race([options.moatReady(m), exited]);
      } else await waitForReady(moat, /"msg":"moat ready"/, 'stderr', 15_000, 'moat serve');
      shim = await startShimNow();
    }
    await waitFor(
      `TAP ${tap} in ${topo.guestNs}`,
      async () => (await nsRunAsync(topo.guestNs, 'ip', ['link', 'show', 'dev', tap])).status === 0,
      { timeoutMs: 5_000, intervalMs: 50 },
    );
    if (options.dhcp ?? true) await dhcp();
  } catch (e) {
    const log = moat ? `\nmoat log:\n${moat.stderr().slice(-4000)}` : '';
    const shimLog = shim ? `\nshim stderr:\n${shim.stderr().slice(-2000)}` : '';
    await stop();
    throw new Error(`${(e as Error).message}${log}${shimLog}`);
  }

  const theMoat = moat;
  const fixture: MoatFixture = {
    topo,
    guestNs: topo.guestNs,
    remoteNs: topo.remoteNs,
    tap,
    dir,
    moatSocket,
    apiSocket,
    mtu,
    dnsServerAddr: topo.remoteAddr,
    link: options.link ?? 'relay',
    moat: theMoat,
    get shim() {
      return shim!;
    },
    dnsServer,
    get lease() {
      return lease;
    },
    pcapFile,
    allowAddresses,
    async guestRun(cmd, args, opts = {}) {
      checkArgs(cmd, args);
      return nsRunAsync(topo.guestNs, cmd, args, opts);
    },
    guestSpawn(cmd, args) {
      checkArgs(cmd, args);
      const p = nsSpawn(topo.guestNs, cmd, args);
      procs.push(p);
      return p;
    },
    remoteRun(cmd, args, opts = {}) {
      return nsRunAsync(topo.remoteNs, cmd, args, opts);
    },
    remoteSpawn(cmd, args) {
      const p = nsSpawn(topo.remoteNs, cmd, args);
      procs.push(p);
      return p;
    },
    startNodeServer,
    dhcp,
    api: (method, path, body) => unixHttp(apiSocket, method, path, body),
    async stats() {
      const r = await unixHttp(apiSocket, 'GET', '/stats');
      if (r.status !== 200) throw new Error(`GET /stats: ${r.status} ${r.text}`);
      return r.body as MoatStats;
    },
    tapMac,
    async restartShim(opts = {}) {
      if (options.link === 'exec') throw new Error('moat-fixture: restartShim needs link "relay" (with "exec" the shim is Moat)');
      // A shim that already died took its TAP with it: fall back to the MAC of the last lease.
      const oldMac = await tapMac().catch(() => leasedMac);
      if (shim) await killTracked(shim, 'SIGKILL');
      // The TAP goes away with the shim's file descriptor.
      await waitFor(
        `TAP ${tap} to disappear`,
        async () => (await nsRunAsync(topo.guestNs, 'ip', ['link', 'show', 'dev', tap])).status !== 0,
        { timeoutMs: 5_000, intervalMs: 50 },
      );
      shim = await startShimNow();
      await waitFor(
        `new TAP ${tap} in ${topo.guestNs}`,
        async () => (await nsRunAsync(topo.guestNs, 'ip', ['link', 'show', 'dev', tap])).status === 0,
        { timeoutMs: 5_000, intervalMs: 50 },
      );
      if ((opts.keepMac ?? true) && oldMac !== undefined) {
        for (const args of [
          ['link', 'set', 'dev', tap, 'down'],
          ['link', 'set', 'dev', tap, 'address', oldMac],
          ['link', 'set', 'dev', tap, 'up'],
        ]) {
          const r = await nsRunAsync(topo.guestNs, 'ip', args);
          if (r.status !== 0) throw new Error(`ip ${args.join(' ')} in ${topo.guestNs}: ${r.stderr.trim()}`);
        }
      }
      if (opts.dhcp ?? true) await dhcp();
    },
    moatLog: () => theMoat.stderr(),
    moatLogEntries() {
      const out: Record<string, unknown>[] = [];
      for (const line of theMoat.stderr().split('\n')) {
        try {
          out.push(JSON.parse(line) as Record<string, unknown>);
        } catch {
          /* not a JSON line */
        }
      }
      return out;
    },
    stop,
  };
  return fixture;
}
