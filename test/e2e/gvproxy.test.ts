/**
 * `moat gvproxy` started with gvproxy's own command line as podman machine 5
 * builds it (containers/podman pkg/machine/shim/networking.go
 * startHostForwarder + the QEMU provider's StartNetworking, rendered by
 * gvisor-tap-vsock pkg/types/gvproxy_command.go ToCmdline: -listen, -mtu,
 * -ssh-port, -listen-qemu, -forward-*, -pid-file, -log-file), plus
 * -notification, and after "--" the test's DNS upstream (so no query leaves
 * the test's namespaces). A real Linux kernel guest (moat-shim TAP in a
 * namespace, udhcpc) works through it: DHCP, DNS (gvproxy's built-in
 * names, upstream names, a record added over the API), HTTP to the fake
 * internet; the API answers gvproxy's paths; the notification listener hears
 * ready and the guest's MAC; the pid file holds Moat's PID and goes at exit.
 *
 * Second part: with an allowlist (after "--"), a record added over
 * /services/dns/add is answered but opens nothing, and cannot redirect an
 * allowed name.
 *
 * Network safety: the guest names only the gateway, the topology's
 * internet addresses (checked by the fixture's allowAddresses) and names
 * answered by Moat; curl gets addresses with --resolve, never the system
 * resolver.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type AddressInfo, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { e2eGate, waitFor, type TrackedProcess } from './harness.js';
import { FIXTURE_TOOLS, GATEWAY_IP, GUEST_IP, HOST_IP, HTTP_SERVER_JS, startMoatFixture, type MoatFixture } from './moat-fixture.js';

const gate = e2eGate([...FIXTURE_TOOLS, 'curl', 'dig']);

async function freePort(): Promise<number> {
  const s = createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', () => r()));
  const port = (s.address() as AddressInfo).port;
  await new Promise((r) => s.close(r));
  return port;
}

/** The --notification listener: every JSON line received. */
async function listenForEvents(path: string): Promise<{ server: Server; events: Record<string, unknown>[] }> {
  const events: Record<string, unknown>[] = [];
  const server = createServer((c) => {
    let buf = '';
    c.setEncoding('utf8');
    c.on('data', (d: string) => (buf += d));
    c.on('end', () => {
      for (const line of buf.split('\n')) if (line.trim() !== '') events.push(JSON.parse(line) as Record<string, unknown>);
    });
  });
  await new Promise<void>((r) => server.listen(path, () => r()));
  return { server, events };
}

/** podman machine's gvproxy command line (ToCmdline order), for sockets in `dir`. */
function podmanCommandLine(dir: string, sshPort: number, qemuSocket: string, apiSocket: string): string[] {
  return [
    '-listen', `unix://${apiSocket}`,
    '-mtu', '1500',
    '-ssh-port', String(sshPort),
    '-listen-qemu', `unix://${qemuSocket}`,
    '-forward-sock', join(dir, 'podman.sock'),
    '-forward-dest', '/run/podman/podman.sock',
    '-forward-user', 'root',
    '-forward-identity', join(dir, 'machine'),
    '-pid-file', join(dir, 'gvproxy.pid'),
    '-log-file', join(dir, 'gvproxy.log'),
  ];
}

async function dig(fx: MoatFixture, name: string): Promise<string[]> {
  const r = await fx.guestRun('dig', ['+short', '+time=2', '+tries=2', `@${GATEWAY_IP}`, name, 'A'], { timeoutMs: 10_000 });
  return r.stdout.split('\n').filter((l) => l.trim() !== '');
}

async function curl(fx: MoatFixture, name: string, ip: string): Promise<{ status: number; out: string }> {
  const r = await fx.guestRun('curl', ['-sS', '--max-time', '5', '-w', '\nHTTP %{http_code}\n', '--resolve', `${name}:80:${ip}`, `http://${name}/`], { timeoutMs: 10_000 });
  return { status: r.status, out: r.stdout + r.stderr };
}

describe.skipIf(gate.skip)("moat gvproxy with podman machine's command line: kernel guest e2e", () => {
  let fx: MoatFixture;
  const dir = mkdtempSync(join(tmpdir(), 'mgv-'));
  let events: { server: Server; events: Record<string, unknown>[] };
  let web: TrackedProcess;
  let webIp: string;

  beforeAll(async () => {
    writeFileSync(join(dir, 'machine'), 'not a real key\n');
    events = await listenForEvents(join(dir, 'events.sock'));
    const sshPort = await freePort();
    fx = await startMoatFixture({
      prefix: 'mgv-',
      moatCommand: ({ moatSocket, apiSocket, dnsServerAddr }) => [
        'gvproxy',
        ...podmanCommandLine(dir, sshPort, moatSocket, apiSocket),
        '-notification', `unix://${join(dir, 'events.sock')}`,
        '--',
        '--dns-upstream', `${dnsServerAddr}:53`,
        '--log-format', 'json',
      ],
      // Ready when the notification listener hears it (gvproxy's "ready": the API listens).
      moatReady: () => waitFor('the ready notification', () => events.events.some((e) => e['notification_type'] === 'ready'), { timeoutMs: 15_000, intervalMs: 50 }),
    });
    webIp = fx.topo.internetAddrs[0]!;
    web = await fx.startNodeServer(fx.remoteNs, HTTP_SERVER_JS, [webIp, '80', 'web'], /^ready/m);
  }, 60_000);

  afterAll(async () => {
    await fx?.stop();
    events?.server.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('-pid-file holds the PID of the Moat process', () => {
    expect(readFileSync(join(dir, 'gvproxy.pid'), 'utf8')).toBe(String(fx.moat.child.pid));
  });

  it('DHCP gives the guest gvproxy\'s addresses (192.168.127.2, router and DNS at .1, MTU 1500)', () => {
    expect(fx.lease).toMatchObject({ ip: GUEST_IP, prefix: 24, router: GATEWAY_IP, dns: [GATEWAY_IP], mtu: 1500 });
  });

  it('DNS: gvproxy\'s built-in names, and upstream names through the gateway', async () => {
    expect(await dig(fx, 'host.containers.internal')).toEqual([HOST_IP]);
    expect(await dig(fx, 'gateway.docker.internal')).toEqual([GATEWAY_IP]);
    expect(await dig(fx, 'www.me8.test')).toEqual([webIp]);
  });

  it('HTTP from the guest reaches the fake internet', async () => {
    const r = await curl(fx, 'www.me8.test', webIp);
    expect(r.status).toBe(0);
    expect(r.out).toContain('web /');
    void web;
  });

  it('POST /services/dns/add (gvproxy\'s Zone shape): the guest resolves the new record at once', async () => {
    const add = await fx.api('POST', '/services/dns/add', { Name: 'added.test.', Records: [{ Name: 'web', IP: webIp }] });
    expect(add.status).toBe(200);
    expect(add.text).toBe('');
    expect(await dig(fx, 'web.added.test')).toEqual([webIp]);
    const all = (await fx.api('GET', '/services/dns/all')).body as { Name: string }[];
    expect(all.map((z) => z.Name)).toEqual(['containers.internal.', 'docker.internal.', 'added.test.']);
  });

  it('the API answers gvproxy\'s paths in gvproxy\'s shapes', async () => {
    const mac = await fx.tapMac();
    expect((await fx.api('GET', '/leases')).body).toEqual({ [GUEST_IP]: mac });
    expect((await fx.api('GET', '/services/dhcp/leases')).body).toEqual({ [GUEST_IP]: mac });
    const fwd = (await fx.api('GET', '/services/forwarder/all')).body as { local: string; remote: string; protocol: string }[];
    expect(fwd).toEqual([{ local: expect.stringMatching(/^127\.0\.0\.1:\d+$/), remote: `${GUEST_IP}:22`, protocol: 'tcp' }]);
    const stats = (await fx.api('GET', '/stats')).body as Record<string, number>;
    expect(stats['BytesSent']).toBeGreaterThan(0);
    expect(stats['BytesReceived']).toBeGreaterThan(0);
  });

  it('the notification listener heard ready, then connection_established with the guest\'s MAC', async () => {
    const mac = await fx.tapMac();
    expect(events.events[0]).toEqual({ notification_type: 'ready' });
    expect(events.events).toContainEqual({ notification_type: 'connection_established', mac_address: mac });
  });

  it('-log-file gets the log; on SIGTERM Moat stops and removes the pid file', async () => {
    expect(readFileSync(join(dir, 'gvproxy.log'), 'utf8')).toContain('"msg":"moat ready"');
    await fx.stop();
    expect(existsSync(join(dir, 'gvproxy.pid'))).toBe(false);
    expect(readFileSync(join(dir, 'gvproxy.log'), 'utf8')).toContain('"msg":"moat stopped"');
    const code = (await fx.moat.exited).code;
    expect(code).toBe(0);
  });
});

describe.skipIf(gate.skip)('moat gvproxy -- --allow: a record added over the API grants nothing', () => {
  let fx: MoatFixture;
  const dir = mkdtempSync(join(tmpdir(), 'mgva-'));
  let wwwIp: string;
  let evilIp: string;

  beforeAll(async () => {
    writeFileSync(join(dir, 'machine'), 'not a real key\n');
    const sshPort = await freePort();
    fx = await startMoatFixture({
      prefix: 'mga-',
      moatCommand: ({ moatSocket, apiSocket, dnsServerAddr, topo }) => [
        'gvproxy',
        ...podmanCommandLine(dir, sshPort, moatSocket, apiSocket),
        '--',
        '--allow', 'www.me8.test',
        '--resolver', `${dnsServerAddr}:53`,
        '--admit-resolved', topo.internetSubnet,
        '--log-format', 'json',
      ],
      // Ready when -log-file says so (gvproxy mode logs there, not on stderr).
      moatReady: () => waitFor('"moat ready" in -log-file', () => logSays(join(dir, 'gvproxy.log'), '"msg":"moat ready"'), { timeoutMs: 15_000, intervalMs: 50 }),
    });
    wwwIp = fx.topo.internetAddrs[0]!;
    evilIp = fx.topo.internetAddrs[1]!;
    await fx.startNodeServer(fx.remoteNs, HTTP_SERVER_JS, [wwwIp, '80', 'www'], /^ready/m);
    await fx.startNodeServer(fx.remoteNs, HTTP_SERVER_JS, [evilIp, '80', 'evil'], /^ready/m);
  }, 60_000);

  afterAll(async () => {
    await fx?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  it('the allowed name works; a name outside the allowlist is sinkholed', async () => {
    expect(await dig(fx, 'www.me8.test')).toEqual([wwwIp]);
    expect((await curl(fx, 'www.me8.test', wwwIp)).out).toContain('www /');
    expect(await dig(fx, 'mail.me8.test')).toEqual(['0.0.0.0']);
  });

  it('an added record resolves, but the flow to its address is refused', async () => {
    expect((await fx.api('POST', '/services/dns/add', { Name: 'sneaky.test.', Records: [{ Name: 'evil', IP: evilIp }] })).status).toBe(200);
    expect(await dig(fx, 'evil.sneaky.test')).toEqual([evilIp]);
    const r = await curl(fx, 'evil.sneaky.test', evilIp);
    expect(r.out).not.toContain('evil /');
    // Refused by Moat's policy (its 403), not lost on the way.
    expect(r.out).toContain('HTTP 403');
    const decisions = fx.moatLog() + readFileSync(join(dir, 'gvproxy.log'), 'utf8');
    expect(decisions).toMatch(/"decision":"blocked"[^\n]*evil\.sneaky\.test|evil\.sneaky\.test[^\n]*"decision":"blocked"|blocked[^\n]*evil\.sneaky\.test/);
  });

  it('an added record shadowing an allowed name cannot redirect it: Moat dials the name by its own resolution', async () => {
    expect((await fx.api('POST', '/services/dns/add', { Name: 'me8.test.', Records: [{ Name: 'www', IP: evilIp }] })).status).toBe(200);
    expect(await dig(fx, 'www.me8.test')).toEqual([evilIp]);
    const r = await curl(fx, 'www.me8.test', evilIp);
    expect(r.out).toContain('www /');
    expect(r.out).not.toContain('evil /');
  });
});

function logSays(path: string, text: string): boolean {
  return existsSync(path) && readFileSync(path, 'utf8').includes(text);
}
