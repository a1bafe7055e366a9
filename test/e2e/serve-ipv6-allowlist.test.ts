/**
 * One allowlist for both families end to end (issue 19, Acceptance, second
 * bullet): a kernel guest with IPv4 (DHCP) and IPv6 (SLAAC) behind Moat with
 * `--allow allowed.test`, and a fake internet that serves allowed.test and
 * refused.test on an IPv4 and an IPv6 address each.
 *
 *   allowed.test  A internetAddrs[0]   AAAA internetAddrs6[0]   HTTPS/HTTP sites
 *   refused.test  A internetAddrs[1]   AAAA internetAddrs6[1]   HTTPS/HTTP sites + traps :9000, udp :9053
 *   64:ff9b::<internetAddrs[1]>  NAT64 form of the refused IPv4 address   traps, on remote's lo
 *   fd00:ec2::254                IPv6 cloud metadata                      traps, on remote's lo
 *
 * The two IPv6 trap addresses are put on remote's lo and routed there from
 * the root namespace (a /128 each via the topology's veth) for this file
 * only, so even a wrong dial by Moat would reach a trap that logs it, never
 * the machine's network. Every literal the guest names is checked with
 * `ip -6 route get` in the guest namespace (it leaves by the TAP, to Moat)
 * and with `ip route get` in the root namespace (lo or the veth).
 * "The internet" is private space (198.18/15, fd19::/16), so Moat is started
 * with --admit-resolved for both.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { e2eGate, hostRun, nsRun, nsRunAsync, type TrackedProcess } from './harness.js';
import { FIXTURE_TOOLS, GATEWAY_IP, startMoatFixture, type MoatFixture } from './moat-fixture.js';
import { SITE_SERVER_JS, TCP_CONNECT_PY, linesStartingWith, makeSelfSignedCert, type TestCert } from './egress-support.js';

const gate = e2eGate([...FIXTURE_TOOLS, 'curl', 'dig', 'openssl', 'python3']);

const ALLOWED = 'allowed.test';
const REFUSED = 'refused.test';
const GW6 = 'fd6d:6f61:7400::1';
const METADATA6 = 'fd00:ec2::254';
const SETTLE_MS = 400;
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Logs "tcp REMOTE" / "udp REMOTE" for everything reaching ADDR on the given ports ("uN": UDP port N). */
const TRAP_JS = `
const net = require('node:net'); const dgram = require('node:dgram');
const [addr, ...ports] = process.argv.slice(1);
let pending = ports.length; const ready = () => { if (--pending === 0) console.log('ready'); };
for (const p of ports) {
  if (p.startsWith('u')) {
    const u = dgram.createSocket(addr.includes(':') ? 'udp6' : 'udp4');
    u.on('message', (m, r) => console.log('udp ' + r.address));
    u.bind(Number(p.slice(1)), addr, ready);
  } else {
    const s = net.createServer((c) => { console.log('tcp ' + c.remoteAddress); c.on('error', () => {}); c.destroy(); });
    s.listen(Number(p), addr, ready);
  }
}`;

/** Guest probe: one UDP datagram to [ADDR]:PORT over IPv6; prints "sent". */
const UDP6_SEND_PY = `
import socket, sys
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.sendto(b'probe', (sys.argv[1], int(sys.argv[2])))
print('sent', flush=True)
`;

/** The NAT64 (64:ff9b::/96) form of an IPv4 address. */
function nat64(ipv4: string): string {
  const [a, b, c, d] = ipv4.split('.').map(Number) as [number, number, number, number];
  return `64:ff9b::${((a << 8) | b).toString(16)}:${((c << 8) | d).toString(16)}`;
}

interface DecisionLine {
  decision: string;
  reason: string;
  dst: string;
  name: string | null;
}

describe.skipIf(gate.skip)('moat serve: one allowlist for IPv4 and IPv6 guest flows (kernel guest, SLAAC + DHCP)', () => {
  let fx: MoatFixture;
  const dir = mkdtempSync(join(tmpdir(), 'm19-allow-'));
  const decisionLogFile = join(dir, 'decisions.jsonl');
  let cert: TestCert;
  let a4 = '';
  let a6 = '';
  let r4 = '';
  let r6 = '';
  let n64 = '';
  let via6 = '';
  const sites: Record<string, TrackedProcess> = {};
  const traps: Record<string, TrackedProcess> = {};
  const routes: string[] = [];

  /** `ip -6 route get` in the guest namespace must leave by the TAP (to Moat). */
  const assertGuestRoute6 = (addr: string): void => {
    const r = nsRun(fx.guestNs, 'ip', ['-6', 'route', 'get', addr]);
    const dev = /\bdev (\S+)/.exec(r.stdout)?.[1];
    if (r.status !== 0 || dev !== fx.tap) throw new Error(`refusing to run: ${addr} must route via ${fx.tap} in the guest, got: ${r.stdout.trim()} ${r.stderr.trim()}`);
  };

  beforeAll(async () => {
    cert = makeSelfSignedCert(dir, [ALLOWED, REFUSED]);
    fx = await startMoatFixture({
      prefix: 'm19-',
      internetAddresses: 2,
      guestIpv6: true,
      internetIpv6: true,
      extraMoatArgs: (topo) => [
        '--allow', ALLOWED,
        '--resolver', `${topo.remoteAddr}:53`,
        '--admit-resolved', topo.internetSubnet,
        '--admit-resolved', `${topo.internetAddrs6[0]!.replace(/::1$/, '::')}/64`,
        '--decision-log', decisionLogFile,
      ],
      dnsZone: (topo) => ({
        [ALLOWED]: [{ type: 'A', data: topo.internetAddrs[0]! }, { type: 'AAAA', data: topo.internetAddrs6[0]! }],
        [REFUSED]: [{ type: 'A', data: topo.internetAddrs[1]! }, { type: 'AAAA', data: topo.internetAddrs6[1]! }],
      }),
    });
    [a4, r4] = fx.topo.internetAddrs as [string, string];
    [a6, r6] = fx.topo.internetAddrs6 as [string, string];
    n64 = nat64(r4);
    // The remote end of the topology's IPv6 link: fd19:8180:K:1::2 beside the internet's fd19:8180:K:2::/64.
    via6 = a6.replace(/:2::1$/, ':1::2');
    // The two trap addresses live on remote's lo, routed there from the root namespace for this file only.
    for (const addr of [n64, METADATA6]) {
      const add = hostRun('ip', ['-6', 'route', 'add', `${addr}/128`, 'via', via6, 'dev', fx.topo.hostVeth]);
      if (add.status !== 0) throw new Error(`ip -6 route add ${addr}/128: ${add.stderr}`);
      routes.push(addr);
      const lo = nsRun(fx.remoteNs, 'ip', ['-6', 'addr', 'add', `${addr}/128`, 'dev', 'lo']);
      if (lo.status !== 0) throw new Error(`ip -6 addr add ${addr} in remote: ${lo.stderr}`);
    }
    fx.allowAddresses([n64, METADATA6]); // root namespace: lo or the veth (throws otherwise)

    // SLAAC: wait for a global address (after DAD) and the default route from Moat's RA.
    const deadline = Date.now() + 20_000;
    for (;;) {
      const r = await nsRunAsync(fx.guestNs, 'ip', ['-6', '-o', 'addr', 'show', 'dev', fx.tap, 'scope', 'global']);
      if (/inet6 fd6d:6f61:7400:[0-9a-f:]+\/64(?![^\n]*tentative)/.test(r.stdout)) break;
      if (Date.now() > deadline) throw new Error(`no SLAAC address on ${fx.tap}: ${r.stdout}\n${fx.moatLog().slice(-2000)}`);
      await sleep(200);
    }
    for (const addr of [GW6, a6, r6, n64, METADATA6]) assertGuestRoute6(addr);

    const site = (ip: string, name: string): Promise<TrackedProcess> =>
      fx.startNodeServer(fx.remoteNs, SITE_SERVER_JS, [ip, name, cert.certFile, cert.keyFile, '80', '443']);
    sites['allowed4'] = await site(a4, 'allowed4');
    sites['allowed6'] = await site(a6, 'allowed6');
    sites['refused4'] = await site(r4, 'refused4');
    sites['refused6'] = await site(r6, 'refused6');
    traps['refused4'] = await fx.startNodeServer(fx.remoteNs, TRAP_JS, [r4, '9000', 'u9053']);
    traps['refused6'] = await fx.startNodeServer(fx.remoteNs, TRAP_JS, [r6, '9000', 'u9053']);
    traps['nat64'] = await fx.startNodeServer(fx.remoteNs, TRAP_JS, [n64, '80', '443', '9000', 'u9053']);
    traps['metadata'] = await fx.startNodeServer(fx.remoteNs, TRAP_JS, [METADATA6, '80', '443', '9000', 'u9053']);
  }, 90_000);

  afterAll(async () => {
    await fx?.stop();
    for (const addr of routes) hostRun('ip', ['-6', 'route', 'del', `${addr}/128`, 'via', via6]);
    rmSync(dir, { recursive: true, force: true });
  }, 30_000);

  const evidence = (): string => `\nmoat log tail:\n${fx.moatLog().slice(-3000)}`;
  const curl = (args: string[]) => fx.guestRun('curl', ['-sS', '--max-time', '5', '--cacert', cert.certFile, ...args], { timeoutMs: 10_000 });
  const dig = async (server: string, name: string, type: 'A' | 'AAAA'): Promise<string> => {
    const r = await fx.guestRun('dig', [`@${server}`, '+time=2', '+tries=1', '+short', name, type], { timeoutMs: 10_000 });
    expect(r.status, `dig ${name} ${type}: ${r.stdout}${r.stderr}${evidence()}`).toBe(0);
    return r.stdout.trim();
  };
  const decisions = (): DecisionLine[] =>
    existsSync(decisionLogFile)
      ? readFileSync(decisionLogFile, 'utf8').split('\n').filter((l) => l.trim() !== '').map((l) => JSON.parse(l) as DecisionLine)
      : [];
  /** Nothing reached any refused server or trap (after a moment for a wrong dial to land). */
  const nothingReachedTraps = async (): Promise<void> => {
    await sleep(SETTLE_MS);
    for (const name of ['refused4', 'refused6']) expect(linesStartingWith(sites[name]!.stdout(), 'conn').concat(linesStartingWith(sites[name]!.stdout(), 'request')), `site ${name}`).toEqual([]);
    for (const [name, p] of Object.entries(traps)) expect(linesStartingWith(p.stdout(), 'tcp').concat(linesStartingWith(p.stdout(), 'udp')), `trap ${name}`).toEqual([]);
  };

  it('the gateway answers A and AAAA for the allowed name (pre-resolved), over IPv4 and IPv6', async () => {
    expect(await dig(GATEWAY_IP, ALLOWED, 'A')).toBe(a4);
    expect(await dig(GW6, ALLOWED, 'AAAA')).toBe(a6);
  });

  it('an allowed name is reached over IPv6 and over IPv4 from the same guest, each dialed in its own family', async () => {
    for (const [family, addr, server] of [['-6', `[${a6}]`, 'allowed6'], ['-4', a4, 'allowed4']] as const) {
      for (const scheme of ['https', 'http'] as const) {
        const port = scheme === 'https' ? 443 : 80;
        const r = await curl([family, '--resolve', `${ALLOWED}:${port}:${addr}`, `${scheme}://${ALLOWED}/${family}`]);
        expect(r.stdout, `curl ${family} ${scheme}: ${r.stderr}${evidence()}`).toBe(`${server} ${scheme} ${ALLOWED} /${family}\n`);
      }
    }
    // Moat dialed the name over IPv6 for the IPv6 flow: allowed6 saw Moat's IPv6 address on the topology link.
    const conns6 = linesStartingWith(sites['allowed6']!.stdout(), 'conn ');
    expect(conns6.length, sites['allowed6']!.stdout()).toBe(2);
    expect(conns6.every((l) => l.endsWith(` ${via6.replace(/::2$/, '::1')}`)), conns6.join('\n')).toBe(true);
    expect(linesStartingWith(sites['allowed4']!.stdout(), 'conn ').length, sites['allowed4']!.stdout()).toBe(2);
  }, 30_000);

  it('a refused name is refused over both families (403 for HTTP, no TLS for HTTPS); the refused sites see nothing', async () => {
    for (const [family, addr] of [['-6', `[${r6}]`], ['-4', r4]] as const) {
      const http = await curl([family, '-i', '--resolve', `${REFUSED}:80:${addr}`, `http://${REFUSED}/x`]);
      expect(http.stdout, `${family}: ${http.stderr}${evidence()}`).toMatch(/^HTTP\/1\.1 403 /);
      expect(http.stdout).toContain('x-moat-reason: name-not-allowed');
      const https = await curl([family, '--resolve', `${REFUSED}:443:${addr}`, `https://${REFUSED}/x`]);
      expect(https.status, https.stdout).not.toBe(0);
      expect(https.stdout).toBe('');
    }
    await nothingReachedTraps();
    const refusedNames = decisions().filter((d) => d.decision === 'blocked' && d.name === REFUSED);
    expect(refusedNames.some((d) => d.dst.startsWith(r6)), JSON.stringify(refusedNames)).toBe(true);
    expect(refusedNames.some((d) => d.dst.startsWith(r4)), JSON.stringify(refusedNames)).toBe(true);
  }, 30_000);

  it('direct IPv6 literals, the IPv4-mapped and NAT64 forms of a refused IPv4 address, and fd00:ec2::254 are refused and reach nobody', async () => {
    // TCP to a port no rule covers: reset at the SYN.
    for (const addr of [r6, `::ffff:${r4}`, n64, METADATA6]) {
      const r = await fx.guestRun('python3', ['-c', TCP_CONNECT_PY, addr, '9000', '3000'], { timeoutMs: 10_000 });
      expect(r.stdout.trim().split(' ')[0], `TCP to [${addr}]:9000: ${r.stdout}${r.stderr}${evidence()}`).toBe('refused');
    }
    // HTTP/HTTPS to the literal: no allowed name is named (the Host is the literal; no SNI), or refused at the SYN.
    for (const addr of [r6, n64, METADATA6]) {
      const http = await curl(['-6', `http://[${addr}]/latest/meta-data/`]);
      // Never a site's answer ("<site> http ..."): Moat's 403, or nothing when reset at the SYN.
      expect(http.stdout, `http [${addr}]`).not.toMatch(/^(allowed|refused)[46] /);
      const https = await curl(['-6', '-k', `https://[${addr}]/`]);
      expect(https.status, `https [${addr}]: ${https.stdout}`).not.toBe(0);
    }
    // UDP: only an IP rule would let it out; none does.
    for (const addr of [r6, n64, METADATA6]) {
      const r = await fx.guestRun('python3', ['-c', UDP6_SEND_PY, addr, '9053'], { timeoutMs: 10_000 });
      expect(r.stdout.trim(), r.stderr).toBe('sent');
    }
    await nothingReachedTraps();
    const blocked = decisions().filter((d) => d.decision === 'blocked');
    // The metadata address is refused as link-local by the policy (the NAT hands it over under an allowlist).
    expect(blocked.some((d) => d.dst.startsWith(METADATA6) && d.reason === 'link-local'), JSON.stringify(blocked.slice(-20))).toBe(true);
    expect(blocked.some((d) => d.dst.startsWith(r6)), JSON.stringify(blocked.slice(-20))).toBe(true);
  }, 60_000);

  it('counted no internal error', async () => {
    const stats = await fx.stats();
    expect(stats.drops['stack:internal-error'] ?? 0).toBe(0);
    const errors = fx.moatLogEntries().filter((e) => e['level'] === 'error');
    expect(errors, JSON.stringify(errors)).toEqual([]);
  });
});
