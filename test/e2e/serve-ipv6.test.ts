/**
 * `moat serve` over IPv6 end to end (issue 19, netstack/NAT side), with the
 * real Linux kernel as the guest (see moat-fixture.ts for the topology):
 * the guest configures itself by SLAAC from Moat's router advertisements,
 * pings the gateway's IPv6 address, resolves AAAA through it (forwarding
 * mode, no allowlist), reaches a server on the host's ::1 through the IPv6
 * host alias, and is reached through a port forward to its IPv6 address.
 *
 * Addresses: the ULA /64 fd6d:6f61:7400::/64 exists only on the guest's TAP
 * (checked with `ip -6 route get` inside the guest namespace); the host side
 * is ::1 and 127.0.0.1 only (checked with `ip -6 route get` / `ip route get`
 * in the root namespace, where Moat dials). 2001:db8::8 is a DNS answer the
 * guest only reads; nothing is sent to it.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createServer, type Server } from 'node:http';
import { createServer as createNetServer, type AddressInfo } from 'node:net';
import { cleanupAll, e2eGate, hostRun, hostRunAsync, nsRunAsync } from './harness.js';
import { FIXTURE_TOOLS, HTTP_SERVER_JS, startMoatFixture, type MoatFixture } from './moat-fixture.js';

const gate = e2eGate([...FIXTURE_TOOLS, 'curl', 'dig']);

const PREFIX = 'fd6d:6f61:7400:';
const GW6 = 'fd6d:6f61:7400::1';
const HOST6 = 'fd6d:6f61:7400::fe';

/** `ip -6 route get ADDR` in a namespace (or the root one) must leave by one of `devices`. */
async function assertRoute6(ns: string | undefined, addr: string, devices: string[]): Promise<void> {
  const r = ns === undefined ? hostRun('ip', ['-6', 'route', 'get', addr], { timeoutMs: 5_000 }) : await nsRunAsync(ns, 'ip', ['-6', 'route', 'get', addr]);
  const dev = /\bdev (\S+)/.exec(r.stdout)?.[1];
  if (r.status !== 0 || dev === undefined || !devices.includes(dev)) {
    throw new Error(`refusing to run: ${addr} must route via ${devices.join('|')} in ${ns ?? 'the root namespace'}, got: ${r.stdout.trim()} ${r.stderr.trim()}`);
  }
}

describe.skipIf(gate.skip)('moat serve over IPv6 (kernel guest, SLAAC)', () => {
  let fx: MoatFixture;
  let guest6 = '';
  let hostServer: Server;
  let hostPort = 0;

  beforeAll(async () => {
    // Traffic to the host alias lands on ::1 in the root namespace, where Moat dials.
    await assertRoute6(undefined, '::1', ['lo']);
    hostServer = createServer((req, res) => res.end(`host ${req.url} from ${req.socket.remoteAddress}\n`));
    await new Promise<void>((r) => hostServer.listen(0, '::1', r));
    hostPort = (hostServer.address() as AddressInfo).port;
    fx = await startMoatFixture({ prefix: 'm6-', guestIpv6: true });
    // SLAAC: the kernel asks for an RA when the TAP comes up; wait for a global address in the prefix (after DAD).
    const deadline = Date.now() + 20_000;
    while (Date.now() < deadline) {
      const r = await nsRunAsync(fx.guestNs, 'ip', ['-6', '-o', 'addr', 'show', 'dev', fx.tap, 'scope', 'global']);
      const m = /inet6 (fd6d:6f61:7400:[0-9a-f:]+)\/64(?![^\n]*tentative)/.exec(r.stdout);
      if (m) {
        guest6 = m[1]!;
        break;
      }
      await new Promise((res) => setTimeout(res, 200));
    }
    if (guest6 === '') throw new Error(`no SLAAC address on ${fx.tap}: ${(await nsRunAsync(fx.guestNs, 'ip', ['-6', 'addr'])).stdout}\n${fx.moatLog().slice(-2000)}`);
    for (const a of [GW6, HOST6]) await assertRoute6(fx.guestNs, a, [fx.tap]);
    await assertRoute6(fx.guestNs, guest6, ['lo']); // its own address
  }, 60_000);

  afterAll(async () => {
    await fx?.stop();
    await new Promise<void>((r) => (hostServer ? hostServer.close(() => r()) : r()));
    await cleanupAll();
  });

  it('configures itself by SLAAC in the announced /64, with the gateway link-local address as default router and the MTU', async () => {
    expect(guest6.startsWith(PREFIX)).toBe(true);
    const routes = (await nsRunAsync(fx.guestNs, 'ip', ['-6', 'route', 'show', 'default'])).stdout;
    expect(routes).toMatch(/default via fe80::5894:efff:fee4:cdd dev /);
    expect(routes).toMatch(/proto ra/);
  });

  it('pings the gateway over IPv6 (and its link-local address)', async () => {
    const r = await nsRunAsync(fx.guestNs, 'busybox', ['ping', '-6', '-c', '2', '-W', '3', GW6], { timeoutMs: 15_000 });
    expect(r.status, r.stdout + r.stderr).toBe(0);
    expect(r.stdout).toMatch(/2 packets received/);
    const ll = await nsRunAsync(fx.guestNs, 'busybox', ['ping', '-6', '-c', '1', '-W', '3', '-I', fx.tap, 'fe80::5894:efff:fee4:cdd'], { timeoutMs: 15_000 });
    expect(ll.status, ll.stdout + ll.stderr).toBe(0);
  });

  it('resolves AAAA through the gateway at its IPv6 address (forwarding mode)', async () => {
    const r = await nsRunAsync(fx.guestNs, 'dig', [`@${GW6}`, 'www.me8.test', 'AAAA', '+short', '+time=3', '+tries=2'], { timeoutMs: 20_000 });
    expect(r.stdout.trim()).toBe('2001:db8::8');
  });

  it("reaches a server on the host's ::1 through the IPv6 host alias", async () => {
    const r = await nsRunAsync(fx.guestNs, 'curl', ['-sS', '--max-time', '10', `http://[${HOST6}]:${hostPort}/hello`], { timeoutMs: 20_000 });
    expect(r.stdout, r.stderr).toBe('host /hello from ::1\n');
  });

  it("a port forward to the guest's IPv6 address carries a request from the host", async () => {
    const server = await fx.startNodeServer(fx.guestNs, HTTP_SERVER_JS, ['::', '0', 'guest6']);
    const guestPort = Number(/^ready (\d+)/m.exec(server.stdout())![1]);
    const probe = createNetServer();
    await new Promise<void>((r) => probe.listen(0, '127.0.0.1', r));
    const local = (probe.address() as AddressInfo).port;
    await new Promise<void>((r) => probe.close(() => r()));
    const exposed = await fx.api('POST', '/services/forwarder/expose', { local: `127.0.0.1:${local}`, remote: `[${guest6}]:${guestPort}`, protocol: 'tcp' });
    expect(exposed.status, exposed.text).toBe(200);
    const r = await hostRunAsync('curl', ['-sS', '--max-time', '10', `http://127.0.0.1:${local}/fwd`], { timeoutMs: 20_000 });
    expect(r.stdout, r.stderr).toBe(`guest6 /fwd from ${GW6}\n`);
  });

  it('counted no internal error, and IPv6 frames were handled (not dropped as unsupported)', async () => {
    const stats = await fx.stats();
    expect(stats.drops['stack:internal-error'] ?? 0).toBe(0);
    expect(stats.drops['ipv6:unsupported'] ?? 0).toBe(0);
    const errors = fx.moatLogEntries().filter((e) => e['level'] === 'error');
    expect(errors, JSON.stringify(errors)).toEqual([]);
  });
});
