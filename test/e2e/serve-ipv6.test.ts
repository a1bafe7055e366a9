/**
 * `moat serve` over IPv6 end to end (issue 19, netstack/NAT side), with the
 * real Linux kernel as the guest (see moat-fixture.ts for the topology):
 * the guest configures itself by SLAAC from Moat's router advertisements,
 * asks for its DNS server by stateless DHCPv6 with a real client (dhclient),
 * pings the gateway's IPv6 address, resolves AAAA through it (forwarding
 * mode, no allowlist), reaches a server on the host's ::1 through the IPv6
 * host alias, and is reached through a port forward to its IPv6 address.
 *
 * Addresses: the ULA /64 fd6d:6f61:7400::/64 exists only on the guest's TAP
 * (checked with `ip -6 route get` inside the guest namespace); the host side
 * is ::1 and 127.0.0.1 only (checked with `ip -6 route get` / `ip route get`
 * in the root namespace, where Moat dials); the "internet" server's IPv6
 * address lives on remote's lo and routes via the topology's veth (checked
 * by the harness with `ip route get`). 2001:db8::8 is a DNS answer the guest
 * only reads; nothing is sent to it.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createHash } from 'node:crypto';
import { createServer, type Server } from 'node:http';
import { createServer as createNetServer, type AddressInfo } from 'node:net';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { cleanupAll, e2eGate, hostRun, hostRunAsync, killTracked, nsRunAsync, waitFor } from './harness.js';
import { FIXTURE_TOOLS, HTTP_SERVER_JS, startMoatFixture, type MoatFixture } from './moat-fixture.js';

// dhclient (isc-dhcp-client): the real DHCPv6 client of the stateless information-request test.
const gate = e2eGate([...FIXTURE_TOOLS, 'curl', 'dig', 'dhclient']);

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

// Over the stream socket (relay), and over the TAP handed to Moat with receive offload: the guest's IPv6 TCP/UDP then arrives with checksums left to complete.
describe.skipIf(gate.skip).each([
  { link: 'relay' as const, offload: false },
  { link: 'exec' as const, offload: true },
])('moat serve over IPv6 (kernel guest, SLAAC; link $link, offload $offload)', ({ link, offload }) => {
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
    fx = await startMoatFixture({ prefix: 'm6-', guestIpv6: true, internetIpv6: true, link, offload });
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

  it('a real DHCPv6 client (dhclient -6 -S) gets the gateway as DNS server by information-request, and dig AAAA through it answers', async () => {
    // Everything dhclient writes stays in the fixture's temp dir: its own config, lease, DUID and pid files,
    // and an event script that only records the options (dhclient-script would rewrite /etc/resolv.conf).
    // It runs inside the guest namespace on the TAP only, so no interface of the root namespace is touched.
    const out = join(fx.dir, 'dhcp6.env');
    const script = join(fx.dir, 'dhcp6-script.sh');
    const conf = join(fx.dir, 'dhclient6.conf');
    writeFileSync(script, `#!/bin/sh
# dhclient event script: record the stateless reply, configure nothing.
echo "$reason" >> "${out}.log"
# dhclient 4.4 reports a stateless Reply as RENEW6 (older ones said INFORM6).
case "$reason" in
  INFORM6|RENEW6) printf 'sid=%s\\nns=%s\\nsearch=%s\\n' "$new_dhcp6_server_id" "$new_dhcp6_name_servers" "$new_dhcp6_domain_search" > "${out}.tmp" && mv "${out}.tmp" "${out}" ;;
esac
exit 0
`, { mode: 0o755 });
    writeFileSync(conf, 'request dhcp6.name-servers, dhcp6.domain-search;\n');
    const client = fx.guestSpawn('dhclient', ['-6', '-S', '-d', '-v', '-1', '-cf', conf, '-lf', join(fx.dir, 'dhclient6.leases'), '-df', join(fx.dir, 'dhclient6.duid'), '-pf', join(fx.dir, 'dhclient6.pid'), '-sf', script, fx.tap]);
    try {
      await waitFor('dhclient to record the Reply', () => existsSync(out), { timeoutMs: 30_000, intervalMs: 200 }).catch((e: Error) => {
        throw new Error(`${e.message}\n${client.stderr()}\n${existsSync(out + '.log') ? `script ran for: ${readFileSync(out + '.log', 'utf8')}` : 'script never ran'}\n${fx.moatLog().slice(-2000)}`);
      });
    } finally {
      await killTracked(client, 'SIGTERM').catch(() => killTracked(client));
    }
    const env = Object.fromEntries(readFileSync(out, 'utf8').trim().split('\n').map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)]));
    // The Reply came from Moat: its server DUID is DUID-LL (type 3, Ethernet) of the gateway MAC 5a:94:ef:e4:0c:dd.
    expect(env['sid']?.trim()).toBe('0:3:0:1:5a:94:ef:e4:c:dd');
    // Exactly one server, the gateway's IPv6 address (DNS answers there).
    expect(env['ns']?.trim(), client.stderr()).toBe(GW6);
    // `moat serve` configures no search domains, so the Reply carries no domain list (option 24 absent).
    expect(env['search']?.trim()).toBe('');
    await assertRoute6(fx.guestNs, env['ns']!.trim(), [fx.tap]);
    const r = await nsRunAsync(fx.guestNs, 'dig', [`@${env['ns']!.trim()}`, 'www.me8.test', 'AAAA', '+short', '+time=3', '+tries=2'], { timeoutMs: 20_000 });
    expect(r.stdout.trim()).toBe('2001:db8::8');
  }, 60_000);

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

  const MIB20 = 20 * 1024 * 1024;

  it('downloads 20 MiB from an IPv6 server in the fake internet (sha256 matches)', async () => {
    const addr = fx.topo.internetAddrs6[0]!;
    const server = await fx.startNodeServer(fx.remoteNs, HTTP_SERVER_JS, [addr, '0', 'remote6']);
    const port = Number(/^ready (\d+)/m.exec(server.stdout())![1]);
    const r = await nsRunAsync(fx.guestNs, 'sh', ['-c', `curl -sS --max-time 60 http://[${addr}]:${port}/bytes/${MIB20} | sha256sum`], { timeoutMs: 90_000 });
    expect(r.stdout.split(' ')[0], r.stderr).toBe(createHash('sha256').update(Buffer.alloc(MIB20, 120)).digest('hex'));
  }, 120_000);

  it('uploads 20 MiB to it over IPv6 with a half-close, and reads the answer sent after it', async () => {
    const addr = fx.topo.internetAddrs6[1]!;
    const sink = `
const net = require('node:net'); const crypto = require('node:crypto');
const s = net.createServer({ allowHalfOpen: true }, (c) => {
  const h = crypto.createHash('sha256'); let n = 0;
  c.on('data', (d) => { h.update(d); n += d.length; });
  c.on('end', () => c.end(n + ' ' + h.digest('hex')));
});
s.listen(0, process.argv[1], () => console.log('ready ' + s.address().port));`;
    const server = await fx.startNodeServer(fx.remoteNs, sink, [addr]);
    const port = Number(/^ready (\d+)/m.exec(server.stdout())![1]);
    const client = `
const net = require('node:net');
const [addr, port, size] = process.argv.slice(1);
const data = Buffer.alloc(Number(size)); for (let i = 0; i < data.length; i++) data[i] = (i * 131 + (i >> 8)) & 0xff;
const c = net.connect({ host: addr, port: Number(port), allowHalfOpen: true }, () => { c.end(data); });
let reply = ''; c.on('data', (d) => reply += d); c.on('end', () => { console.log(reply); c.destroy(); });
c.on('error', (e) => { console.error(e.message); process.exit(1); });`;
    const r = await nsRunAsync(fx.guestNs, process.execPath, ['-e', client, addr, String(port), String(MIB20)], { timeoutMs: 90_000 });
    const data = Buffer.alloc(MIB20);
    for (let i = 0; i < data.length; i++) data[i] = (i * 131 + (i >> 8)) & 0xff;
    expect(r.stdout.trim(), r.stderr).toBe(`${MIB20} ${createHash('sha256').update(data).digest('hex')}`);
  }, 120_000);

  it('counted no internal error, and IPv6 frames were handled (not dropped as unsupported)', async () => {
    const stats = await fx.stats();
    expect(stats.drops['stack:internal-error'] ?? 0).toBe(0);
    expect(stats.drops['ipv6:unsupported'] ?? 0).toBe(0);
    const errors = fx.moatLogEntries().filter((e) => e['level'] === 'error');
    expect(errors, JSON.stringify(errors)).toEqual([]);
  });
});
