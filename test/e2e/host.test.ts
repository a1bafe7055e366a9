/**
 * `moat host` end to end: one daemon, two real Linux guests (each a network
 * namespace whose TAP moat-shim bridges to that guest's network socket),
 * each network with its own allowlist, created and deleted over the control
 * API. Each guest has its own topology (guest namespace, and a "remote"
 * namespace with a DNS server and an "internet" address), so every address
 * a test names routes into the test's own namespaces (checked with
 * `ip route get` by the topology) or stays inside a guest namespace.
 *
 * The fault test runs the daemon with MOAT_TEST_FAULT set: a guest frame
 * carrying that marker throws inside its network's input (src/serve.ts
 * testFaultHook), the seam for "an exception inside one network's stack".
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { availableParallelism, tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  createTopology,
  e2eGate,
  killTracked,
  nsRunAsync,
  nsSpawn,
  onCleanup,
  spawnTracked,
  startShim,
  waitFor,
  waitForOutput,
  type Topology,
  type TrackedProcess,
} from './harness.js';
import { DNS_SERVER_JS, FIXTURE_TOOLS, GATEWAY_IP, GUEST_IP, MOAT_BIN, unixHttp } from './moat-fixture.js';
import { defaultWorkers } from '../../src/host-config.js';

const gate = e2eGate([...FIXTURE_TOOLS, 'dig']);
const FAULT_MARKER = 'MOAT-E2E-FAULT-7f3a';
const TAP = 'moat0';

/** A TCP server that answers "hi\n" and prints "closed" when a connection ends. */
const HOLD_SERVER_JS = `
const net = require('node:net');
const [addr, port] = process.argv.slice(1);
net.createServer((c) => { c.write('hi\\n'); c.on('close', () => console.log('closed')); c.on('error', () => {}); })
  .listen(Number(port), addr, () => console.log('ready'));
`;

interface Guest {
  topo: Topology;
  name: string;
  socket: string;
  shim: TrackedProcess | undefined;
}

// Once as the daemon starts by default (a worker thread per core: 2 on a 2-core machine), once with
// every network on the API thread (--workers 0).
describe.skipIf(gate.skip).each([
  { flag: 'default', workers: defaultWorkers(availableParallelism()), args: [] as string[] },
  { flag: '0', workers: 0, args: ['--workers', '0'] },
])('moat host --workers $flag e2e: many guests, one process, a policy each', ({ workers, args }) => {
  const dir = mkdtempSync(join(tmpdir(), `mh5-host${args.length}-`));
  const apiSocket = join(dir, 'host.sock');
  const procs: TrackedProcess[] = [];
  let moat: TrackedProcess;
  const guests: Record<string, Guest> = {};

  const api = (method: 'GET' | 'POST' | 'PUT' | 'DELETE', path: string, body?: unknown) => unixHttp(apiSocket, method, path, body);

  const spawnIn = (ns: string, cmd: string, args: string[]): TrackedProcess => {
    const p = nsSpawn(ns, cmd, args);
    procs.push(p);
    return p;
  };

  /** Starts the shim for a guest and configures its TAP statically (the network's guest address). */
  const attach = async (g: Guest): Promise<void> => {
    g.shim = await startShim(['tap', '--dev', TAP, '--netns', g.topo.guestNs, '--connect', `unix://${g.socket}`], 10_000);
    procs.push(g.shim);
    await waitFor(`TAP in ${g.topo.guestNs}`, async () => (await nsRunAsync(g.topo.guestNs, 'ip', ['link', 'show', 'dev', TAP])).status === 0, {
      timeoutMs: 5_000,
      intervalMs: 50,
    });
    for (const args of [
      ['addr', 'add', `${GUEST_IP}/24`, 'dev', TAP],
      ['link', 'set', TAP, 'up'],
      ['route', 'add', 'default', 'via', GATEWAY_IP],
    ]) {
      const r = await nsRunAsync(g.topo.guestNs, 'ip', args);
      expect(r.status, `ip ${args.join(' ')}: ${r.stderr}`).toBe(0);
    }
  };

  const dig = async (g: Guest, name: string): Promise<string> => {
    const r = await nsRunAsync(g.topo.guestNs, 'dig', [`@${GATEWAY_IP}`, '+time=2', '+tries=2', '+short', name, 'A'], { timeoutMs: 15_000 });
    expect(r.status, `dig ${name} in ${g.name}: ${r.stdout}${r.stderr}\nmoat log:\n${moat.stderr().slice(-3000)}`).toBe(0);
    return r.stdout.trim();
  };

  /** POST /networks for a guest: its socket, its topology's DNS server as resolver, its allowlist. */
  const create = (g: Guest, allow: string[]) =>
    api('POST', '/networks', {
      name: g.name,
      'listen-qemu': `unix://${g.socket}`,
      resolver: [`${g.topo.remoteAddr}:53`],
      'dns-upstream': [`${g.topo.remoteAddr}:53`],
      allow,
    });

  beforeAll(async () => {
    onCleanup(() => rmSync(dir, { recursive: true, force: true }));
    for (const name of ['ga', 'gb']) {
      const topo = createTopology({ prefix: `mh5${args.length}${name}-`, internetAddresses: 1 });
      topo.assertRoutes([topo.remoteAddr, ...topo.internetAddrs]);
      guests[name] = { topo, name, socket: join(dir, `${name}.sock`), shim: undefined };
    }
    // Each remote answers both names; which one a guest may see is its network's allowlist.
    for (const g of Object.values(guests)) {
      const zone = {
        'a.mh5.test': [{ type: 'A', data: g.topo.internetAddrs[0]! }],
        'b.mh5.test': [{ type: 'A', data: g.topo.internetAddrs[0]! }],
      };
      const dns = spawnIn(g.topo.remoteNs, process.execPath, ['-e', DNS_SERVER_JS, g.topo.remoteAddr, '53', JSON.stringify(zone)]);
      await waitForOutput(dns, /^ready/m, { timeoutMs: 10_000, stream: 'stdout' });
    }
    moat = spawnTracked(process.execPath, [MOAT_BIN, 'host', '--api', `unix://${apiSocket}`, ...args, '--log-format', 'json'], {
      env: { ...process.env, MOAT_TEST_FAULT: FAULT_MARKER },
    });
    procs.push(moat);
    await waitForOutput(moat, /"msg":"moat host ready"/, { timeoutMs: 15_000, stream: 'stderr' });
  }, 90_000);

  afterAll(async () => {
    for (const p of procs.reverse()) await killTracked(p, p === moat ? 'SIGTERM' : 'SIGKILL').catch(() => {});
    for (const g of Object.values(guests)) g.topo.destroy();
    rmSync(dir, { recursive: true, force: true });
  }, 30_000);

  it('bad POST /networks bodies get 400 naming each bad field, and nothing is created', async () => {
    const r = await api('POST', '/networks', { name: '../x', mtu: 'huge', allow: ['*.'], tapFd: 3, 'listen-qemu': 'ftp://nope' });
    expect(r.status).toBe(400);
    const fields = (r.body as { errors: { field: string }[] }).errors.map((e) => e.field).sort();
    expect(fields).toEqual(['allow', 'listen-qemu', 'mtu', 'name', 'tapFd']);
    expect((await api('GET', '/networks')).body).toEqual([]);
  });

  it('creates and lists networks; two guests with different allowlists see different DNS answers', async () => {
    const ga = guests['ga']!;
    const gb = guests['gb']!;
    // Guest a may reach a.mh5.test and its server's address (for the flow test below); guest b only b.mh5.test.
    expect((await create(ga, ['a.mh5.test', ga.topo.internetAddrs[0]!])).status).toBe(201);
    expect((await create(gb, ['b.mh5.test'])).status).toBe(201);
    expect((await create(gb, ['b.mh5.test'])).status).toBe(409);
    const list = (await api('GET', '/networks')).body as { name: string; state: string; worker?: number }[];
    expect(list.map((n) => [n.name, n.state])).toEqual([
      ['ga', 'running'],
      ['gb', 'running'],
    ]);
    // With workers, the two networks are placed on different threads.
    if (workers > 0) expect(list.map((n) => n.worker)).toEqual([0, 1]);
    await attach(ga);
    await attach(gb);
    expect(await dig(ga, 'a.mh5.test')).toBe(ga.topo.internetAddrs[0]);
    expect(await dig(ga, 'b.mh5.test')).toBe('0.0.0.0');
    expect(await dig(gb, 'b.mh5.test')).toBe(gb.topo.internetAddrs[0]);
    expect(await dig(gb, 'a.mh5.test')).toBe('0.0.0.0');
    const detail = (await api('GET', '/networks/ga')).body as { guestConnected: boolean; allow: string[] };
    expect(detail.guestConnected).toBe(true);
    expect(detail.allow).toContain('a.mh5.test');
    // Each network's decisions are logged with its name.
    const lines = moat.stderr().split('\n').filter((l) => l.includes('"egress decision"'));
    expect(lines.some((l) => l.includes('"network":"gb"') && l.includes('a.mh5.test'))).toBe(true);
  }, 60_000);

  it("each network's serve API answers under its prefix wherever the network runs: stats, leases, forwarder, allowlist reload", async () => {
    const ga = guests['ga']!;
    const stats = await api('GET', '/networks/ga/stats');
    expect(stats.status).toBe(200);
    expect((stats.body as { frames: { in: number } }).frames.in).toBeGreaterThan(0);
    const leases = await api('GET', '/networks/ga/services/dhcp/leases');
    expect(leases.status).toBe(200);
    expect(typeof leases.body).toBe('object');
    // A forward on the host's loopback (a port picked at random), listed for ga only, then removed.
    const forward = { local: `127.0.0.1:${20_000 + Math.floor(Math.random() * 20_000)}`, remote: `${GUEST_IP}:7100`, protocol: 'tcp' };
    const exposed = await api('POST', '/networks/ga/services/forwarder/expose', forward);
    expect(exposed.status, exposed.text).toBe(200);
    const listed = (await api('GET', '/networks/ga/services/forwarder/all')).body as { local: string; remote: string }[];
    expect(listed.map((f) => f.remote)).toEqual([forward.remote]);
    expect((await api('GET', '/networks/gb/services/forwarder/all')).body).toEqual([]);
    expect((await api('POST', '/networks/ga/services/forwarder/unexpose', { local: forward.local, protocol: 'tcp' })).status).toBe(200);
    expect((await api('GET', '/networks/ga/services/forwarder/all')).body).toEqual([]);
    // The allowlist reloaded through the host: ga now sees b.mh5.test and no longer a.mh5.test; gb is untouched.
    const reload = await api('PUT', '/networks/ga/allowlist', { allow: ['b.mh5.test', ga.topo.internetAddrs[0]!] });
    expect(reload.status, reload.text).toBe(200);
    expect(await dig(ga, 'b.mh5.test')).toBe(ga.topo.internetAddrs[0]);
    expect(await dig(ga, 'a.mh5.test')).toBe('0.0.0.0');
    expect(await dig(guests['gb']!, 'a.mh5.test')).toBe('0.0.0.0');
    expect((await api('PUT', '/networks/ga/allowlist', { allow: ['a.mh5.test', ga.topo.internetAddrs[0]!] })).status).toBe(200);
    expect(await dig(ga, 'a.mh5.test')).toBe(ga.topo.internetAddrs[0]);
  }, 60_000);

  it("one network's injected fault closes it, says why, and leaves the other serving", async () => {
    const ga = guests['ga']!;
    const gb = guests['gb']!;
    // A DNS question whose name carries the marker: the frame holds its bytes. No answer comes (the network closes).
    await nsRunAsync(gb.topo.guestNs, 'dig', [`@${GATEWAY_IP}`, '+time=1', '+tries=1', `${FAULT_MARKER}.test`, 'A'], { timeoutMs: 10_000 });
    await waitFor('network gb to fail', async () => ((await api('GET', '/networks/gb')).body as { state: string }).state === 'failed', {
      timeoutMs: 5_000,
      intervalMs: 50,
    });
    const failed = (await api('GET', '/networks/gb')).body as { failure: string };
    expect(failed.failure).toContain('injected fault');
    expect(existsSync(gb.socket)).toBe(false);
    // The process and the other network are fine.
    expect(moat.child.exitCode).toBeNull();
    expect(await dig(ga, 'a.mh5.test')).toBe(ga.topo.internetAddrs[0]);
    expect((await api('DELETE', '/networks/gb')).status).toBe(200);
  }, 60_000);

  it("deleting a network ends its guest's flows and frees its socket", async () => {
    const ga = guests['ga']!;
    const server = spawnIn(ga.topo.remoteNs, process.execPath, ['-e', HOLD_SERVER_JS, ga.topo.internetAddrs[0]!, '7000']);
    await waitForOutput(server, /^ready/m, { timeoutMs: 10_000, stream: 'stdout' });
    // A connection the guest holds open (nc's stdin stays open).
    const client = spawnIn(ga.topo.guestNs, 'busybox', ['nc', ga.topo.internetAddrs[0]!, '7000']);
    await waitForOutput(client, /^hi/m, { timeoutMs: 10_000, stream: 'stdout' });
    expect(server.stdout()).not.toContain('closed');
    const del = await api('DELETE', '/networks/ga');
    expect(del.status).toBe(200);
    // The host side of the flow is closed by Moat, and the socket path is gone.
    await waitForOutput(server, /^closed/m, { timeoutMs: 5_000, stream: 'stdout' });
    expect(existsSync(ga.socket)).toBe(false);
    expect((await api('GET', '/networks/ga')).status).toBe(404);
    expect((await api('GET', '/networks')).body).toEqual([]);
    // The name and the socket path can be used again.
    expect((await create(ga, ['a.mh5.test'])).status).toBe(201);
    expect((await api('DELETE', '/networks/ga')).status).toBe(200);
  }, 60_000);
});
