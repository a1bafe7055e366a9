/**
 * ICMP echo beyond the gateway, end to end: a real Linux kernel guest pings
 * addresses in the fake internet (the remote namespace) through
 * `moat-shim tap --icmp --exec moat serve --tap-fd 3 --icmp-fd 4`; the shim
 * opens an unprivileged ICMP ping socket in its own (the root) namespace and
 * Moat forwards the guest's echo requests through it. Behind the relay
 * (moat-shim tap --connect) Moat is started through `moat-shim icmp --exec`,
 * which only opens the ping socket. Where the range leaves the group out (a
 * fresh namespace), the shim exits naming the sysctl.
 *
 * Prerequisite: the kernel creates a ping socket only for a group inside
 * net.ipv4.ping_group_range, root included (no capability bypasses it), and
 * that range is "1 0" (nobody) unless a distribution's sysctl.d widens it.
 * This test widens it in the root namespace to include group 0 for its run
 * and restores the value it found (afterAll and the harness's exit cleanup).
 * It does not skip: under CI as root it must pass.
 *
 * Addresses: internetAddrs[0] is allowed by an IP rule without a port
 * (echo allowed), internetAddrs[1] only on :443 (echo refused:
 * icmp-needs-ip-rule), internetAddrs[2] by no rule, and a link-local
 * address 169.254.78.N (on remote's lo, with a /32 route to it through the
 * topology's veth, removed at the end; N from the subnet lock, so parallel
 * runs differ) only by a rule containing 169.254/16, which does not open it.
 * The route guard checks all of them route into the test's own namespaces
 * before any traffic.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readFileSync, writeFileSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
import { cleanupAll, createNetns, deleteNetns, e2eGate, ensureShimBuilt, hostRun, nsRun, onCleanup, uniqueName } from './harness.js';
import { FIXTURE_TOOLS, startMoatFixture, type MoatFixture } from './moat-fixture.js';
import type { IcmpEchoStats } from '../../src/nat/icmp-echo.js';

const gate = e2eGate([...FIXTURE_TOOLS]);
const RANGE_FILE = '/proc/sys/net/ipv4/ping_group_range';

/** /stats nat.icmpEcho, as the NAT reports it. */
type EchoStats = IcmpEchoStats;

// The ping socket needs group 0 inside the root namespace's ping_group_range for this file's run.
let savedRange: string | undefined;
const restoreRange = (): void => {
  if (savedRange !== undefined) writeFileSync(RANGE_FILE, savedRange);
  savedRange = undefined;
};
beforeAll(() => {
  if (gate.skip) return;
  const current = readFileSync(RANGE_FILE, 'utf8').trim();
  const [lo, hi] = current.split(/\s+/).map(Number) as [number, number];
  if (!(lo <= 0 && 0 <= hi)) {
    savedRange = current;
    onCleanup(restoreRange);
    writeFileSync(RANGE_FILE, '0 0');
  }
});
afterAll(() => restoreRange());

describe.skipIf(gate.skip)('moat serve e2e: ICMP echo beyond the gateway through moat-shim --icmp', () => {
  let fx: MoatFixture;
  let metadataIp = '';
  let routeArgs: string[] = [];
  let routeAdded = false;
  const removeRoute = (): void => {
    if (routeAdded) hostRun('ip', ['route', 'del', ...routeArgs]);
    routeAdded = false;
  };

  beforeAll(async () => {
    fx = await startMoatFixture({
      prefix: 'mic-',
      link: 'exec',
      shimArgs: ['--icmp'],
      extraMoatArgs: (topo) => {
        const k = Number(topo.hostAddr.split('.')[2]) / 2;
        metadataIp = `169.254.78.${k + 1}`;
        routeArgs = [`${metadataIp}/32`, 'via', topo.remoteAddr, 'dev', topo.hostVeth];
        const added = hostRun('ip', ['route', 'add', ...routeArgs]);
        if (added.status !== 0) throw new Error(`ip route add ${routeArgs.join(' ')}: ${added.stderr}`);
        routeAdded = true;
        onCleanup(removeRoute);
        const addr = nsRun(topo.remoteNs, 'ip', ['addr', 'add', `${metadataIp}/32`, 'dev', 'lo']);
        if (addr.status !== 0) throw new Error(`ip addr add ${metadataIp}: ${addr.stderr}`);
        topo.assertRoutes([metadataIp]);
        return [
          '--icmp-fd', '4',
          '--allow', topo.internetAddrs[0]!,
          '--allow', `${topo.internetAddrs[1]}:443`,
          '--allow', '169.254.0.0/15',
          '--resolver', `${topo.remoteAddr}:53`,
          '--icmp-echo-per-sec', '20',
        ];
      },
    });
    fx.allowAddresses([metadataIp]);
  }, 90_000);

  afterAll(async () => {
    await fx?.stop();
    removeRoute();
  }, 30_000);

  const echo = async (): Promise<EchoStats> => ((await fx.stats())['nat'] as { icmpEcho: EchoStats }).icmpEcho;
  const evidence = async (): Promise<string> => `\nicmpEcho=${JSON.stringify(await echo())}\nmoat log tail:\n${fx.moatLog().slice(-3000)}`;

  it('the shim handed over the ping socket on descriptor 4 and Moat took it', () => {
    expect(fx.moat.stderr()).toMatch(/icmp socket on fd 4; exec /);
    expect(fx.moatLogEntries().some((e) => e['msg'] === 'icmp echo beyond the gateway: through the ping socket')).toBe(true);
  });

  it('ping -c 3 to an address an IP rule allows gets 3 replies', async () => {
    const allowed = fx.topo.internetAddrs[0]!;
    fx.topo.assertRoutes([allowed]);
    const before = await echo();
    const r = await fx.guestRun('busybox', ['ping', '-c', '3', '-W', '3', allowed], { timeoutMs: 15_000 });
    expect(r.status, `ping: ${r.stdout}${r.stderr}${await evidence()}`).toBe(0);
    expect(r.stdout).toMatch(/3 packets transmitted, 3 packets received/);
    // The replies carry the guest's own sequence numbers back (the kernel rewrote the id on the way out).
    expect(r.stdout).toMatch(/seq=0 .*\n.*seq=1 .*\n.*seq=2 /);
    const after = await echo();
    expect(after.forwarded - before.forwarded).toBe(3);
    expect(after.replied - before.replied).toBe(3);
    // Figures for the report: the guest's round trip through Moat, and the root namespace's own (no Moat).
    const direct = hostRun('busybox', ['ping', '-c', '3', '-W', '2', allowed]).stdout;
    console.log(`icmp: via Moat ${/round-trip.*$/m.exec(r.stdout)?.[0]}; direct from the root namespace ${/round-trip.*$/m.exec(direct)?.[0]}`);
  });

  it('refused addresses get no reply and are counted: a port-only rule, no rule, link-local under a containing CIDR', async () => {
    const portOnly = fx.topo.internetAddrs[1]!;
    const noRule = fx.topo.internetAddrs[2]!;
    fx.topo.assertRoutes([portOnly, noRule, metadataIp]);
    // Positive control: each answers ping from the root namespace (so silence below is Moat's doing).
    for (const target of [portOnly, noRule, metadataIp]) {
      const direct = hostRun('busybox', ['ping', '-c', '1', '-W', '2', target]);
      expect(direct.status, `direct ping ${target}: ${direct.stdout}${direct.stderr}`).toBe(0);
    }
    const before = await echo();
    for (const target of [portOnly, noRule, metadataIp]) {
      const r = await fx.guestRun('busybox', ['ping', '-c', '2', '-W', '1', target], { timeoutMs: 10_000 });
      expect(r.status, `${target}: ${r.stdout}`).not.toBe(0);
      expect(r.stdout).toMatch(/2 packets transmitted, 0 packets received/);
    }
    const after = await echo();
    expect(after.refused - before.refused, await evidence()).toBe(6);
    expect(after.forwarded).toBe(before.forwarded);
    const decisions = fx.moatLogEntries().filter((e) => e['msg'] === 'egress decision' && e['proto'] === 'icmp');
    expect(decisions.map((d) => d['reason'])).toEqual(expect.arrayContaining(['icmp-needs-ip-rule', 'link-local']));
    const metrics = await fetchMetrics(fx);
    expect(metrics).toMatch(/^moat_icmp_echo_total\{outcome="refused"\} 6$/m);
  });

  it('a ping flood is held to --icmp-echo-per-sec; the excess is counted, never forwarded', async () => {
    const allowed = fx.topo.internetAddrs[0]!;
    const before = await echo();
    // 200 requests as fast as busybox sends them (interval 0.005 s), well past 20/s.
    const r = await fx.guestRun('busybox', ['ping', '-q', '-c', '200', '-i', '0.005', '-W', '2', allowed], { timeoutMs: 30_000 });
    const after = await echo();
    const forwarded = after.forwarded - before.forwarded;
    const limited = after.rateLimited - before.rateLimited;
    expect(forwarded + limited, `${r.stdout}${await evidence()}`).toBe(200);
    console.log(`icmp flood: 200 requests, ${forwarded} forwarded, ${limited} rate-limited; ${/\d+ packets received/.exec(r.stdout)?.[0]}`);
    expect(limited).toBeGreaterThan(100);
    // Burst 20 plus 20/s for the few seconds the flood lasts.
    expect(forwarded).toBeLessThan(100);
    expect(after.current).toBeLessThanOrEqual(after.max);
  });
});

/** GET /metrics over the fixture's API socket (curl, as an operator would). */
async function fetchMetrics(fx: MoatFixture): Promise<string> {
  const r = spawnSync('curl', ['-s', '--unix-socket', fx.apiSocket, 'http://moat/metrics'], { encoding: 'utf8', timeout: 10_000 });
  return r.stdout;
}

describe.skipIf(gate.skip)('moat serve e2e: ICMP echo behind the relay (Moat started through moat-shim icmp --exec)', () => {
  let fx: MoatFixture;

  beforeAll(async () => {
    fx = await startMoatFixture({
      prefix: 'micr-',
      moatLauncher: [ensureShimBuilt(), 'icmp', '--exec'],
      extraMoatArgs: (topo) => ['--icmp-fd', '4', '--allow', topo.internetAddrs[0]!, '--resolver', `${topo.remoteAddr}:53`],
    });
  }, 90_000);

  afterAll(async () => {
    await fx?.stop();
  }, 30_000);

  it('ping -c 3 through the relay gets 3 replies', async () => {
    const allowed = fx.topo.internetAddrs[0]!;
    fx.topo.assertRoutes([allowed]);
    expect(fx.moat.stderr()).toMatch(/moat-shim: ready: icmp socket on fd 4; exec /);
    const r = await fx.guestRun('busybox', ['ping', '-c', '3', '-W', '3', allowed], { timeoutMs: 15_000 });
    expect(r.status, `ping: ${r.stdout}${r.stderr}\n${fx.moatLog().slice(-2000)}`).toBe(0);
    expect(r.stdout).toMatch(/3 packets transmitted, 3 packets received/);
    const echo = ((await fx.stats())['nat'] as { icmpEcho: { replied: number } }).icmpEcho;
    expect(echo.replied).toBe(3);
  });
});

describe.skipIf(gate.skip)('moat-shim --icmp: what it says when it cannot', () => {
  afterAll(() => cleanupAll());

  it('--icmp without --exec is a usage error naming why (the relay carries frames only)', () => {
    const r = spawnSync(ensureShimBuilt(), ['tap', '--dev', 'x', '--icmp', '--connect', 'unix:///nonexistent'], { encoding: 'utf8' });
    expect(r.status).toBe(2);
    expect(r.stderr).toMatch(/--icmp needs --exec/);
  });

  it('where ping_group_range leaves the group out (a fresh namespace: "1 0"), it exits naming the sysctl and never runs the command', () => {
    const ns = uniqueName('micn-');
    createNetns(ns);
    try {
      expect(nsRun(ns, 'cat', [RANGE_FILE]).stdout.trim().split(/\s+/)).toEqual(['1', '0']);
      const r = nsRun(ns, ensureShimBuilt(), ['icmp', '--exec', 'echo', 'RAN']);
      expect(r.status).toBe(1);
      expect(r.stdout).not.toContain('RAN');
      expect(r.stderr).toMatch(/group 0 is outside net\.ipv4\.ping_group_range \(1 0\); allow it \(sysctl -w net\.ipv4\.ping_group_range="0 0"\)/);
    } finally {
      deleteNetns(ns);
    }
  });
});
