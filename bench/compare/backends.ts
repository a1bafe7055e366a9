/**
 * The network backends compared, each brought up as a "guest link": a guest
 * network namespace with an interface, and an address in it ("host alias")
 * that reaches the host side where the servers run.
 *
 *   moat         guest TAP -- moat-shim -- moat serve (node)      -- host 127.0.0.1
 *   moat-exec    guest TAP ------------- moat serve --tap-fd 3    -- host 127.0.0.1
 *   moat-offload as moat-exec, with receive offload (moat-shim --offload, --tap-offload)
 *                (moat-shim tap --exec: the shim opens the TAP and becomes Moat)
 *   passt        guest TAP ------------- pasta (passt's netns mode) -- host 127.0.0.1
 *   passt-qemu   guest TAP -- moat-shim -- passt (qemu socket mode) -- host 127.0.0.1
 *   slirp4netns  guest TAP ------------- slirp4netns (libslirp)   -- host 127.0.0.1
 *   veth         guest veth ---------------------------------------- peer namespace (the ceiling)
 *
 * DNS: every backend's resolver path ends at the same kind of DNS server
 * (the fixture's DNS_SERVER_JS), never at the machine's resolver: for Moat
 * and slirp4netns it runs in the topology's "remote" namespace (reached from
 * the root namespace over its veth); Moat gets it by --dns-upstream,
 * slirp4netns by a private mount namespace whose /etc/resolv.conf names it.
 * passt forwards only to a loopback resolver, so its server listens on the
 * root namespace's 127.0.0.1:53 (see passtLink; both passt links share it).
 * `passt` runs as pasta, its own namespace mode (it opens the guest's TAP
 * itself, like slirp4netns); `passt-qemu` is passt as a VM sees it, a QEMU
 * stream socket, bridged to the guest's TAP by the same moat-shim relay as
 * `moat`.
 *
 * Safety: before anything runs, the host-side addresses a backend will dial
 * (127.0.0.1 and the DNS server) are checked with the harness's
 * assertRoutesInto (via Topology.assertRoutes); the guest's default route is
 * deleted, so the guest reaches only its own subnet; and every guest command
 * line is refused if it names an IPv4 address outside the link's allow-list.
 */
import { chmodSync, existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  assertRoutesInto,
  createTopology,
  hasTool,
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
  type TrackedProcess,
} from '../../test/e2e/harness.js';
import { DNS_SERVER_JS, HOST_IP, GATEWAY_IP, ipv4Literals, ipv6Literals, startMoatFixture, type DnsZone } from '../../test/e2e/moat-fixture.js';
import { DEFAULT_IPV6_PREFIX } from '../../src/config.js';
import { createVethPair } from '../../test/e2e/bulk-support.js';

export type BackendName = 'moat' | 'moat-exec' | 'moat-offload' | 'moat-offload-base' | 'passt' | 'passt-qemu' | 'slirp4netns' | 'veth';
/**
 * Every backend bench:compare knows. `moat-offload-base` is moat-offload run
 * from another build (`--base-bin OTHER_CHECKOUT/bin/moat.mjs`): a change and
 * the code before it measured side by side, interleaved, in the same run.
 */
export const BACKENDS: readonly BackendName[] = ['moat', 'moat-exec', 'moat-offload', 'moat-offload-base', 'passt', 'passt-qemu', 'slirp4netns', 'veth'];
/** The backends run by default: every backend but the A/B one, which needs --base-bin. */
export const DEFAULT_BACKENDS: readonly BackendName[] = BACKENDS.filter((b) => b !== 'moat-offload-base');
/** Every Moat configuration (relay, TAP handed over, TAP handed over with receive offload, the same from another build). */
export const MOAT_BACKENDS: readonly BackendName[] = ['moat', 'moat-exec', 'moat-offload', 'moat-offload-base'];
/** passt's two modes: pasta on the guest's TAP, and passt's QEMU socket behind moat-shim. Either can be the passt reference (report.ts passtReference). */
export const PASST_BACKENDS: readonly BackendName[] = ['passt', 'passt-qemu'];
/** The backends the IPv6 case runs on (LinkOptions.ipv6): Moat's, and slirp4netns (--enable-ipv6). */
export const IPV6_BACKENDS: readonly BackendName[] = [...MOAT_BACKENDS, 'slirp4netns'];

/** The one name every DNS server answers (with a documentation address nobody dials). */
export const DNS_NAME = 'www.mk7.test';
const ZONE: DnsZone = { [DNS_NAME]: [{ type: 'A', data: '198.51.100.7' }] };

export interface GuestLink {
  readonly backend: BackendName;
  readonly mtu: number;
  readonly guestNs: string;
  /** Where the guest's clients connect: the backend's alias for the host (or the veth peer). */
  readonly hostAlias: string;
  /** The guest-side DNS server address of this backend (UDP port 53). */
  readonly dnsServer: string;
  /** Namespace the host-side servers run in (undefined: the root namespace). */
  readonly serverNs: string | undefined;
  /** Address the host-side servers bind. */
  readonly serverBind: string;
  /** With LinkOptions.ipv6, where the guest's IPv6 clients connect (the backend's IPv6 host alias), and what the host-side IPv6 servers bind. */
  readonly hostAlias6?: string;
  readonly serverBind6?: string;
  /** Processes whose CPU and memory are the backend's cost (backend first; the shim if any). */
  readonly costPids: ReadonlyArray<{ role: string; pid: number }>;
  /** Run a command in the guest namespace (refuses IPv4 literals outside the allow-list). */
  guestRun(cmd: string, args: string[], opts?: Omit<ExecOptions, 'allowFail'>): Promise<ExecResult>;
  /** Spawn a long-running command in the guest namespace (same check). */
  guestSpawn(cmd: string, args: string[]): TrackedProcess;
  /** Spawn a host-side server (in serverNs, or the root namespace). */
  serverSpawn(cmd: string, args: string[]): TrackedProcess;
  /** Stop every process and delete every namespace of this link. Idempotent. */
  stop(): Promise<void>;
}

export interface LinkOptions {
  prefix: string;
  mtu: number;
  /** Extra node flags for Moat (e.g. --cpu-prof). */
  moatNodeArgs?: string[];
  /** bin/moat.mjs of another build, for the moat-offload-base backend. */
  baseBin?: string;
  /** Give the guest IPv6 too (IPV6_BACKENDS): SLAAC from the backend's RA, an IPv6 host alias reaching the host's ::1. */
  ipv6?: boolean;
}

function guard(allowed: readonly string[]): (cmd: string, args: readonly string[]) => void {
  const ok = new Set(allowed);
  return (cmd, args) => {
    const bad = [...ipv4Literals([cmd, ...args]).filter((a) => !a.startsWith('0.')), ...ipv6Literals([cmd, ...args])].filter((a) => !ok.has(a));
    if (bad.length > 0) throw new Error(`refusing to run "${cmd} ${args.join(' ')}" in the guest: ${bad.join(', ')} not allowed`);
  };
}

/** Delete the guest's default route: it reaches its own subnet only. Throws if one is left. */
async function dropDefaultRoute(ns: string): Promise<void> {
  await nsRunAsync(ns, 'ip', ['-4', 'route', 'del', 'default']);
  const left = (await nsRunAsync(ns, 'ip', ['-4', 'route', 'show', 'default'])).stdout.trim();
  if (left !== '') throw new Error(`guest ${ns} still has a default route: ${left}`);
}

/** Moat's IPv6 host alias (::fe of its default prefix): Moat dials it at the host's ::1. */
const MOAT_HOST6 = DEFAULT_IPV6_PREFIX.replace(/::\/64$/, '::fe');

/**
 * Wait for the guest's SLAAC address on `dev` (in the backend's /64 `prefix`,
 * text up to "::"; DAD done), then take away its IPv6 default route and keep
 * later RAs from adding it back: the guest then reaches its own /64 only
 * (the backend's gateway and `hostAlias6`).
 */
async function slaacOnLinkOnly(ns: string, dev: string, prefix: string, hostAlias6: string): Promise<void> {
  await waitFor(
    `SLAAC address on ${dev}`,
    async () => {
      const r = await nsRunAsync(ns, 'ip', ['-6', '-o', 'addr', 'show', 'dev', dev, 'scope', 'global']);
      return r.stdout.split('\n').some((l) => l.includes(`inet6 ${prefix}`) && !l.includes('tentative'));
    },
    { timeoutMs: 20_000, intervalMs: 100 },
  );
  const sys = await nsRunAsync(ns, 'sysctl', ['-q', '-w', `net.ipv6.conf.${dev}.accept_ra_defrtr=0`]);
  if (sys.status !== 0) throw new Error(`sysctl accept_ra_defrtr: ${sys.stderr}`);
  await nsRunAsync(ns, 'ip', ['-6', 'route', 'del', 'default']);
  const left = (await nsRunAsync(ns, 'ip', ['-6', 'route', 'show', 'default'])).stdout.trim();
  if (left !== '') throw new Error(`guest ${ns} still has an IPv6 default route: ${left}`);
  const via = (await nsRunAsync(ns, 'ip', ['-6', 'route', 'get', hostAlias6])).stdout;
  if (!new RegExp(`\\bdev ${dev}\\b`).test(via)) throw new Error(`guest ${ns}: ${hostAlias6} does not route via ${dev}: ${via}`);
}

/**
 * The guest's TAP stands in for a VM's virtio-net queue, but the two fail
 * differently: a VMM that stops reading leaves the guest's frames in the
 * virtqueue (backpressure), while a TAP whose reader is behind drops them at
 * txqueuelen (1000 frames). A backend that advertises a window of more than
 * 1000 frames (passt relays the host socket's ~4-6 MB window; at MTU 1500
 * that is ~4000 frames) then loses a burst per window and uploads at a tenth
 * of its speed (passt: 0.07-0.84 Gbit/s here, 2.2+ with a deep queue): an
 * artefact of the bench, not of the backend. Every TAP backend gets the same
 * deep queue, so none is measured against the TAP's drop policy.
 */
export const GUEST_TAP_QUEUE = 10_000;

/** Give every TUN/TAP device in the guest namespace the deep queue (GUEST_TAP_QUEUE). */
async function deepenTapQueues(ns: string): Promise<void> {
  const list = await nsRunAsync(ns, 'ip', ['-o', 'link', 'show', 'type', 'tun']);
  const devices = [...list.stdout.matchAll(/^\d+:\s+([^:@\s]+)/gm)].map((m) => m[1]!);
  if (devices.length === 0) throw new Error(`guest ${ns}: no TAP device to give a deep queue`);
  for (const dev of devices) {
    const r = await nsRunAsync(ns, 'ip', ['link', 'set', dev, 'txqueuelen', String(GUEST_TAP_QUEUE)]);
    if (r.status !== 0) throw new Error(`ip link set ${dev} txqueuelen: ${r.stderr}`);
  }
}

/** DNS_SERVER_JS on ADDR:53 in namespace `ns` (undefined: the root namespace). */
async function startDnsServer(ns: string | undefined, addr: string, procs: TrackedProcess[]): Promise<void> {
  const args = ['-e', DNS_SERVER_JS, addr, '53', JSON.stringify(ZONE)];
  const p = ns === undefined ? spawnTracked(process.execPath, args) : nsSpawn(ns, process.execPath, args);
  procs.push(p);
  await waitForOutput(p, /^ready/m, { stream: 'stdout', timeoutMs: 10_000 });
}

function makeLink(
  base: Omit<GuestLink, 'guestRun' | 'guestSpawn' | 'serverSpawn' | 'stop'>,
  allowed: readonly string[],
  procs: TrackedProcess[],
  teardown: () => Promise<void>,
): GuestLink {
  const check = guard(allowed);
  let stopped = false;
  return {
    ...base,
    guestRun(cmd, args, opts = {}) {
      check(cmd, args);
      return nsRunAsync(base.guestNs, cmd, args, opts);
    },
    guestSpawn(cmd, args) {
      check(cmd, args);
      const p = nsSpawn(base.guestNs, cmd, args);
      procs.push(p);
      return p;
    },
    serverSpawn(cmd, args) {
      const p = base.serverNs === undefined ? spawnTracked(cmd, args) : nsSpawn(base.serverNs, cmd, args);
      procs.push(p);
      return p;
    },
    async stop() {
      if (stopped) return;
      stopped = true;
      for (const p of procs.splice(0)) await killTracked(p, 'SIGKILL').catch(() => {});
      await teardown();
    },
  };
}

// ------------------------------------------------------------------ moat

async function moatLink(o: LinkOptions, link: 'relay' | 'exec', offload = false, moatBin?: string): Promise<GuestLink> {
  const fx = await startMoatFixture({
    moatBin,
    link,
    offload,
    prefix: o.prefix,
    mtu: o.mtu,
    logLevel: 'info', // 'moat ready' is an info line; flows are not logged at info (refusals are)
    dnsZone: () => ZONE,
    nodeArgs: o.moatNodeArgs ?? [],
    guestIpv6: o.ipv6 ?? false,
  });
  try {
    await dropDefaultRoute(fx.guestNs);
    if (o.ipv6) {
      // Moat dials the IPv6 host alias at the host's ::1: it must be loopback.
      assertRoutesInto(['::1'], []);
      await slaacOnLinkOnly(fx.guestNs, fx.tap, DEFAULT_IPV6_PREFIX.replace(/::\/64$/, ':'), MOAT_HOST6);
    }
    await deepenTapQueues(fx.guestNs);
    const procs: TrackedProcess[] = [];
    return makeLink(
      {
        backend: link === 'relay' ? 'moat' : moatBin !== undefined ? 'moat-offload-base' : offload ? 'moat-offload' : 'moat-exec',
        mtu: o.mtu,
        guestNs: fx.guestNs,
        hostAlias: HOST_IP,
        dnsServer: GATEWAY_IP,
        serverNs: undefined,
        serverBind: '127.0.0.1',
        ...(o.ipv6 ? { hostAlias6: MOAT_HOST6, serverBind6: '::1' } : {}),
        costPids:
          link === 'exec'
            ? [{ role: 'moat', pid: fx.moat.child.pid! }]
            : [
                { role: 'moat', pid: fx.moat.child.pid! },
                { role: 'shim', pid: fx.shim.child.pid! },
              ],
      },
      o.ipv6 ? [HOST_IP, GATEWAY_IP, MOAT_HOST6] : [HOST_IP, GATEWAY_IP],
      procs,
      () => fx.stop(),
    );
  } catch (e) {
    await fx.stop();
    throw e;
  }
}

// ------------------------------------------------------------------ passt

const PASST_GUEST = '192.168.127.2';
const PASST_GATEWAY = '192.168.127.1'; // passt maps TCP/UDP to the gateway onto the host's loopback
const PASST_DNS = '192.168.127.3'; // --dns-forward: UDP :53 here goes to -D
const PASST_UPSTREAM_DNS = '127.0.0.1';

/**
 * This passt forwards --dns-forward only to a loopback resolver at 127.0.0.1
 * (with -D set to the topology's remote address, or to another 127/8
 * address, queries went unanswered): one DNS server on the root namespace's
 * 127.0.0.1:53 serves every passt link that is up (passt and passt-qemu run
 * side by side), started by the first and stopped with the last.
 */
let passtDns: { users: number; procs: TrackedProcess[]; ready: Promise<void> } | undefined;

/** For tests: how many passt links hold the shared DNS server, and its PIDs (undefined: none running). */
export function passtDnsState(): { users: number; pids: number[] } | undefined {
  return passtDns === undefined ? undefined : { users: passtDns.users, pids: passtDns.procs.map((p) => p.child.pid!) };
}

async function acquirePasstDns(): Promise<() => Promise<void>> {
  if (passtDns === undefined) {
    const procs: TrackedProcess[] = [];
    passtDns = { users: 0, procs, ready: startDnsServer(undefined, PASST_UPSTREAM_DNS, procs) };
  }
  const dns = passtDns;
  dns.users++;
  let released = false;
  const release = async (): Promise<void> => {
    if (released) return;
    released = true;
    if (--dns.users > 0) return;
    if (passtDns === dns) passtDns = undefined;
    for (const p of dns.procs) await killTracked(p, 'SIGKILL').catch(() => {});
  };
  try {
    await dns.ready;
  } catch (e) {
    await release();
    throw e;
  }
  return release;
}

/** passt's options shared by both modes: the guest's address, gateway, MTU and DNS; IPv4 only, no DHCP/NDP/RA (the bench configures the guest). */
function passtCommonArgs(mtu: number): string[] {
  return [
    '-a', PASST_GUEST, '-n', '24', '-g', PASST_GATEWAY,
    '-m', String(mtu),
    '-D', PASST_UPSTREAM_DNS, '--dns-forward', PASST_DNS,
    '--no-dhcp', '--no-ndp', '--no-dhcpv6', '--no-ra',
  ];
}

/** The GuestLink of a passt link once its guest interface pst0 is up. */
async function passtGuestLink(
  backend: BackendName,
  mtu: number,
  guestNs: string,
  costPids: GuestLink['costPids'],
  procs: TrackedProcess[],
  teardown: () => Promise<void>,
): Promise<GuestLink> {
  await dropDefaultRoute(guestNs);
  await deepenTapQueues(guestNs);
  return makeLink(
    {
      backend,
      mtu,
      guestNs,
      hostAlias: PASST_GATEWAY,
      dnsServer: PASST_DNS,
      serverNs: undefined,
      serverBind: '127.0.0.1',
      costPids,
    },
    [PASST_GATEWAY, PASST_DNS],
    procs,
    teardown,
  );
}

async function passtLink(o: LinkOptions): Promise<GuestLink> {
  const topo = createTopology({ prefix: o.prefix, internetAddresses: 1 });
  const procs: TrackedProcess[] = [];
  let releaseDns = async (): Promise<void> => {};
  const teardown = async (): Promise<void> => {
    await releaseDns();
    topo.destroy();
  };
  try {
    topo.assertRoutes(['127.0.0.1']);
    releaseDns = await acquirePasstDns();
    // pasta: passt's own namespace mode. It opens the TAP in the guest's
    // namespace itself, so, like slirp4netns and moat-exec, nothing sits
    // between the TAP and the backend. As root it would drop to "nobody"
    // and then fail to join the namespace: --runas 0 keeps it root.
    // -t/-u/-T/-U none: no port forwards.
    const passt = spawnTracked('pasta', [
      '-f', '-q', '-4', '--runas', '0',
      '--netns', `/run/netns/${topo.guestNs}`, '--config-net', '-I', 'pst0',
      ...passtCommonArgs(o.mtu),
      '-t', 'none', '-u', 'none', '-T', 'none', '-U', 'none',
    ]);
    procs.push(passt);
    await waitFor(
      'pasta pst0 configured',
      async () => {
        if (passt.child.exitCode !== null) throw new Error(`pasta exited: ${passt.stderr().slice(-1000)}`);
        return (await nsRunAsync(topo.guestNs, 'ip', ['-4', 'addr', 'show', 'dev', 'pst0'])).stdout.includes(`inet ${PASST_GUEST}/24`);
      },
      { timeoutMs: 10_000, intervalMs: 50 },
    );
    const mtuSet = await nsRunAsync(topo.guestNs, 'ip', ['link', 'set', 'pst0', 'mtu', String(o.mtu), 'up']);
    if (mtuSet.status !== 0) throw new Error(`ip link set pst0 mtu: ${mtuSet.stderr}`);
    return await passtGuestLink('passt', o.mtu, topo.guestNs, [{ role: 'passt', pid: passt.child.pid! }], procs, teardown);
  } catch (e) {
    for (const p of procs) await killTracked(p).catch(() => {});
    await teardown();
    throw e;
  }
}

/**
 * passt as a VM meets it: passt's QEMU stream socket (`passt -s PATH`, the
 * same length-prefixed frames as `-netdev stream`), bridged to the guest's
 * TAP by moat-shim's relay, the bridge `moat` runs behind. It measures
 * passt's own TCP/IP path without pasta's TAP reader.
 */
async function passtQemuLink(o: LinkOptions): Promise<GuestLink> {
  const topo = createTopology({ prefix: o.prefix, internetAddresses: 1 });
  const dir = mkdtempSync(join(tmpdir(), `${o.prefix}passt-`));
  const procs: TrackedProcess[] = [];
  let releaseDns = async (): Promise<void> => {};
  const teardown = async (): Promise<void> => {
    await releaseDns();
    topo.destroy();
    rmSync(dir, { recursive: true, force: true });
  };
  onCleanup(() => rmSync(dir, { recursive: true, force: true }));
  try {
    topo.assertRoutes(['127.0.0.1']);
    releaseDns = await acquirePasstDns();
    const sock = join(dir, 'passt.sock');
    // passt started as root drops to "nobody": let it create its socket here.
    chmodSync(dir, 0o777);
    // -1: one client, then exit. Port forwards are off by default in passt mode.
    const passt = spawnTracked('passt', ['-f', '-q', '-1', '-4', '-s', sock, ...passtCommonArgs(o.mtu)]);
    procs.push(passt);
    await waitFor(
      `passt socket ${sock}`,
      () => {
        if (passt.child.exitCode !== null) throw new Error(`passt exited: ${passt.stderr().slice(-1000)}`);
        return existsSync(sock);
      },
      { timeoutMs: 5_000 },
    );
    const shim = await startShim(['tap', '--dev', 'pst0', '--netns', topo.guestNs, '--mtu', String(o.mtu), '--connect', `unix://${sock}`], 10_000);
    procs.push(shim);
    for (const args of [
      ['addr', 'add', `${PASST_GUEST}/24`, 'dev', 'pst0'],
      ['link', 'set', 'pst0', 'mtu', String(o.mtu), 'up'],
    ]) {
      const r = await nsRunAsync(topo.guestNs, 'ip', args);
      if (r.status !== 0) throw new Error(`ip ${args.join(' ')}: ${r.stderr}`);
    }
    // The guest's on-link route only: passtGuestLink deletes any default route.
    return await passtGuestLink(
      'passt-qemu',
      o.mtu,
      topo.guestNs,
      [
        { role: 'passt', pid: passt.child.pid! },
        { role: 'shim', pid: shim.child.pid! },
      ],
      procs,
      teardown,
    );
  } catch (e) {
    for (const p of procs) await killTracked(p).catch(() => {});
    await teardown();
    throw e;
  }
}

// ------------------------------------------------------------------ slirp4netns

const SLIRP_HOST = '10.0.2.2';
const SLIRP_DNS = '10.0.2.3';
/** libslirp's IPv6 defaults: the guest's /64 fd00::/64 by RA, the host at fd00::2 (dialled at the host's ::1). */
const SLIRP_PREFIX6 = 'fd00::';
const SLIRP_HOST6 = 'fd00::2';

async function slirpLink(o: LinkOptions): Promise<GuestLink> {
  const topo = createTopology({ prefix: o.prefix, internetAddresses: 1, guestIpv6: o.ipv6 ?? false });
  const dir = mkdtempSync(join(tmpdir(), `${o.prefix}slirp-`));
  const procs: TrackedProcess[] = [];
  const teardown = async (): Promise<void> => {
    topo.destroy();
    rmSync(dir, { recursive: true, force: true });
  };
  onCleanup(() => rmSync(dir, { recursive: true, force: true }));
  try {
    topo.assertRoutes(['127.0.0.1', topo.remoteAddr]);
    await startDnsServer(topo.remoteNs, topo.remoteAddr, procs);
    const resolv = join(dir, 'resolv.conf');
    writeFileSync(resolv, `nameserver ${topo.remoteAddr}\n`);
    // A private mount namespace (unshare -m makes mounts private) in which
    // /etc/resolv.conf names our DNS server: libslirp forwards 10.0.2.3 there.
    // `exec` keeps the PID: the tracked PID is slirp4netns itself.
    const slirp = spawnTracked('unshare', [
      '-m', 'sh', '-c',
      'mount --bind "$1" /etc/resolv.conf && exec slirp4netns --configure $4 --mtu="$2" --netns-type=path "/run/netns/$3" tap0',
      'sh', resolv, String(o.mtu), topo.guestNs, o.ipv6 ? '--enable-ipv6' : '',
    ]);
    procs.push(slirp);
    await waitFor(
      'slirp4netns tap0 configured',
      async () => {
        if (slirp.child.exitCode !== null) throw new Error(`slirp4netns exited: ${slirp.stderr()}`);
        return (await nsRunAsync(topo.guestNs, 'ip', ['-4', 'addr', 'show', 'dev', 'tap0'])).stdout.includes('inet ');
      },
      { timeoutMs: 10_000, intervalMs: 50 },
    );
    await dropDefaultRoute(topo.guestNs);
    if (o.ipv6) {
      topo.assertRoutes(['::1']);
      await slaacOnLinkOnly(topo.guestNs, 'tap0', SLIRP_PREFIX6, SLIRP_HOST6);
    }
    await deepenTapQueues(topo.guestNs);
    return makeLink(
      {
        backend: 'slirp4netns',
        mtu: o.mtu,
        guestNs: topo.guestNs,
        hostAlias: SLIRP_HOST,
        dnsServer: SLIRP_DNS,
        serverNs: undefined,
        serverBind: '127.0.0.1',
        ...(o.ipv6 ? { hostAlias6: SLIRP_HOST6, serverBind6: '::1' } : {}),
        costPids: [{ role: 'slirp4netns', pid: slirp.child.pid! }],
      },
      o.ipv6 ? [SLIRP_HOST, SLIRP_DNS, SLIRP_HOST6] : [SLIRP_HOST, SLIRP_DNS],
      procs,
      teardown,
    );
  } catch (e) {
    for (const p of procs) await killTracked(p).catch(() => {});
    await teardown();
    throw e;
  }
}

// ------------------------------------------------------------------ veth (the ceiling)

async function vethLink(o: LinkOptions): Promise<GuestLink> {
  const pair = createVethPair(o.prefix, o.mtu);
  const procs: TrackedProcess[] = [];
  try {
    await startDnsServer(pair.nsB, pair.addrB, procs);
    return makeLink(
      {
        backend: 'veth',
        mtu: o.mtu,
        guestNs: pair.nsA,
        hostAlias: pair.addrB,
        dnsServer: pair.addrB,
        serverNs: pair.nsB,
        serverBind: pair.addrB,
        costPids: [],
      },
      [pair.addrB],
      procs,
      async () => pair.destroy(),
    );
  } catch (e) {
    for (const p of procs) await killTracked(p).catch(() => {});
    pair.destroy();
    throw e;
  }
}

/** Why `name` cannot run here (a missing program), or undefined when it can. */
export function backendMissing(name: BackendName): string | undefined {
  const tool = name === 'passt' ? 'pasta' : name === 'passt-qemu' ? 'passt' : name === 'slirp4netns' ? 'slirp4netns' : undefined;
  if (tool !== undefined && !hasTool(tool)) return `${tool} is not installed (apt-get install ${tool})`;
  return undefined;
}

export function startLink(name: BackendName, o: LinkOptions): Promise<GuestLink> {
  switch (name) {
    case 'moat':
      return moatLink(o, 'relay');
    case 'moat-exec':
      return moatLink(o, 'exec');
    case 'moat-offload':
      return moatLink(o, 'exec', true);
    case 'moat-offload-base':
      if (o.baseBin === undefined) throw new Error('backend moat-offload-base needs --base-bin OTHER_CHECKOUT/bin/moat.mjs');
      return moatLink(o, 'exec', true, o.baseBin);
    case 'passt':
      return passtLink(o);
    case 'passt-qemu':
      return passtQemuLink(o);
    case 'slirp4netns':
      return slirpLink(o);
    case 'veth':
      return vethLink(o);
  }
}
