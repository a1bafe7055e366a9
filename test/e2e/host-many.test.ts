/**
 * `moat host` at scale, end to end: one daemon (its default workers: one
 * per core), MOAT_E2E_HOST_GUESTS real Linux guests (default 100), each a
 * network namespace whose TAP moat-shim bridges (`tap --connect`) to its own
 * network, each network with its own allowlist: guest i may resolve and
 * fetch g<i>.mh7.test only. All guests at once resolve their own name and
 * the next guest's, and fetch both over HTTP: every guest gets its own, and
 * the next guest's name is sinkholed in DNS and refused on the wire for it.
 * Each network's decision log holds its own records only, with its name.
 *
 * The guests share one "remote" namespace (one DNS server, one HTTP server):
 * the e2e subnet pairs are a machine-wide pool of 128 that parallel runs
 * share, and what is under test is Moat's isolation, not the remote's. Every
 * address a test names routes into that namespace (checked with `ip route
 * get`) or stays inside a guest namespace (the guest side of each TAP).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  createNetns,
  createTopology,
  deleteNetns,
  deleteStaleWithPrefix,
  e2eGate,
  hostRunAsync,
  killTracked,
  nsSpawn,
  onCleanup,
  spawnTracked,
  startShim,
  uniqueName,
  waitFor,
  waitForOutput,
  type Topology,
  type TrackedProcess,
} from './harness.js';
import { DNS_SERVER_JS, FIXTURE_TOOLS, GATEWAY_IP, GUEST_IP, HTTP_SERVER_JS, MOAT_BIN, unixHttp } from './moat-fixture.js';

const gate = e2eGate([...FIXTURE_TOOLS, 'dig', 'curl']);
const GUESTS = Number(process.env['MOAT_E2E_HOST_GUESTS'] ?? 100);
const TAP = 'moat0';
const NS_PREFIX = 'mh7g-';
const nameOf = (i: number): string => `g${i}.mh7.test`;

/**
 * A command in a namespace, its output read to the end. The harness's
 * nsRunAsync waits at most 2 s for the pipes after 'exit'; with a hundred
 * guests' commands at once on a loaded machine that lost output (seen: dig
 * and curl exit 0 with nothing read).
 */
function nsRunToEnd(ns: string, cmd: string, args: string[], timeoutMs: number): Promise<{ status: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile('ip', ['netns', 'exec', ns, cmd, ...args], { timeout: timeoutMs, killSignal: 'SIGKILL' }, (err, stdout, stderr) => {
      resolve({ status: err ? Number((err as { code?: unknown }).code ?? 1) || 1 : 0, stdout, stderr });
    });
  });
}

interface Guest {
  index: number;
  ns: string;
  socket: string;
  decisions: string;
}

/** One decision record as --decision-log writes it (the fields this test reads). */
interface DecisionLine {
  network?: string;
  decision: 'allowed' | 'blocked';
  name?: string;
}

describe.skipIf(gate.skip)(`moat host e2e: ${GUESTS} kernel guests at once, a policy each`, () => {
  const dir = mkdtempSync(join(tmpdir(), 'mh7-'));
  const apiSocket = join(dir, 'host.sock');
  const procs: TrackedProcess[] = [];
  const guests: Guest[] = [];
  let topo: Topology;
  let server: string;
  let moat: TrackedProcess;

  /** Phase times, printed for the record (bench/README.md quotes them); nothing asserts on them. */
  const phases: string[] = [];
  let t0 = Date.now();
  const phase = (what: string): void => {
    phases.push(`${what} ${((Date.now() - t0) / 1000).toFixed(1)} s`);
    t0 = Date.now();
  };

  beforeAll(async () => {
    expect(Number.isInteger(GUESTS) && GUESTS >= 2, 'MOAT_E2E_HOST_GUESTS must be an integer >= 2').toBe(true);
    onCleanup(() => rmSync(dir, { recursive: true, force: true }));
    topo = createTopology({ prefix: 'mh7-', internetAddresses: 1 });
    server = topo.internetAddrs[0]!;
    topo.assertRoutes([topo.remoteAddr, server]);
    // The remote answers every guest's name; which one a guest may see is its network's allowlist alone.
    const zone: Record<string, { type: string; data: string }[]> = {};
    for (let i = 0; i < GUESTS; i++) zone[nameOf(i)] = [{ type: 'A', data: server }];
    const dns = nsSpawn(topo.remoteNs, process.execPath, ['-e', DNS_SERVER_JS, topo.remoteAddr, '53', JSON.stringify(zone)]);
    const http = nsSpawn(topo.remoteNs, process.execPath, ['-e', HTTP_SERVER_JS, server, '80', 'remote']);
    procs.push(dns, http);
    await waitForOutput(dns, /^ready/m, { timeoutMs: 20_000, stream: 'stdout' });
    await waitForOutput(http, /^ready/m, { timeoutMs: 20_000, stream: 'stdout' });

    deleteStaleWithPrefix(NS_PREFIX);
    for (let i = 0; i < GUESTS; i++) {
      const ns = uniqueName(`${NS_PREFIX}${i}-`);
      createNetns(ns);
      onCleanup(() => deleteNetns(ns));
      guests.push({ index: i, ns, socket: join(dir, `g${i}.sock`), decisions: join(dir, `g${i}.jsonl`) });
    }
    phase('remote and namespaces');

    // The daemon as it starts by default: its networks on one worker thread per core.
    moat = spawnTracked(process.execPath, [MOAT_BIN, 'host', '--api', `unix://${apiSocket}`, '--log-format', 'json', '--log-level', 'warn']);
    procs.push(moat);
    await waitFor('moat host API', async () => (await unixHttp(apiSocket, 'GET', '/healthz').catch(() => undefined))?.status === 200, {
      timeoutMs: 30_000,
      intervalMs: 100,
    });
    for (const g of guests) {
      const r = await unixHttp(
        apiSocket,
        'POST',
        '/networks',
        {
          name: `g${g.index}`,
          'listen-qemu': `unix://${g.socket}`,
          allow: [nameOf(g.index)],
          resolver: `${topo.remoteAddr}:53`,
          'dns-upstream': `${topo.remoteAddr}:53`,
          // The test's "internet" is in 198.18.0.0/15 (benchmarking), which the rebinding guard refuses by default.
          'admit-resolved': topo.internetSubnet,
          'decision-log': g.decisions,
        },
        30_000,
      );
      expect(r.status, `POST g${g.index}: ${r.text}`).toBe(201);
    }
    phase('daemon and networks');
    // Every guest's shim and TAP; the guest side is configured statically (the network's default addresses).
    await Promise.all(
      guests.map(async (g) => {
        procs.push(await startShim(['tap', '--dev', TAP, '--netns', g.ns, '--connect', `unix://${g.socket}`], 60_000));
        for (const args of [
          ['addr', 'add', `${GUEST_IP}/24`, 'dev', TAP],
          ['link', 'set', TAP, 'up'],
          ['route', 'add', 'default', 'via', GATEWAY_IP],
        ]) {
          const r = await hostRunAsync('ip', ['-n', g.ns, ...args], { timeoutMs: 30_000 });
          expect(r.status, `ip -n ${g.ns} ${args.join(' ')}: ${r.stderr}`).toBe(0);
        }
      }),
    );
    phase('shims');
  }, 600_000);

  afterAll(async () => {
    for (const p of procs.reverse()) await killTracked(p, p === moat ? 'SIGTERM' : 'SIGKILL', 10_000).catch(() => {});
    for (const g of guests) deleteNetns(g.ns);
    topo?.destroy();
    rmSync(dir, { recursive: true, force: true });
  }, 120_000);

  it('every guest at once: its own name resolves and fetches; the next guest\'s is sinkholed and refused; each decision log is its own', async () => {
    const list = (await unixHttp(apiSocket, 'GET', '/networks', undefined, 30_000)).body as { name: string; state: string; guestConnected: boolean; worker?: number }[];
    expect(list.length).toBe(GUESTS);
    expect(list.every((n) => n.state === 'running' && n.guestConnected)).toBe(true);

    const results = await Promise.all(
      guests.map(async (g) => {
        const own = nameOf(g.index);
        const other = nameOf((g.index + 1) % GUESTS);
        const run = (cmd: string, args: string[]) => nsRunToEnd(g.ns, cmd, args, 60_000);
        const dig = (name: string) => run('dig', [`@${GATEWAY_IP}`, '+short', '+time=5', '+tries=3', name, 'A']);
        // --resolve: curl asks no resolver of its own; the name reaches Moat in the Host header.
        const curl = (name: string) =>
          run('curl', ['-sS', '--max-time', '20', '--retry', '2', '--retry-connrefused', '--resolve', `${name}:80:${server}`, `http://${name}/${g.index}`]);
        const [ownDns, otherDns] = [await dig(own), await dig(other)];
        const [ownHttp, otherHttp] = [await curl(own), await curl(other)];
        return {
          g,
          ownDns: ownDns.stdout.trim(),
          otherDns: otherDns.stdout.trim(),
          ownHttp: ownHttp.stdout,
          otherHttp: otherHttp.stdout,
          why: `${g.ns}: dig ${own} ${ownDns.status} ${ownDns.stderr}; curl ${own} ${ownHttp.status} ${ownHttp.stderr}`,
        };
      }),
    );
    const failed = results.filter(
      (r) => r.ownDns !== server || r.otherDns !== '0.0.0.0' || !r.ownHttp.startsWith(`remote /${r.g.index} `) || r.otherHttp.includes('remote'),
    );
    expect(
      failed.map((r) => `${r.why}\n  own ${JSON.stringify(r.ownDns)} other ${JSON.stringify(r.otherDns)} http ${JSON.stringify(r.ownHttp)} other http ${JSON.stringify(r.otherHttp)}`),
      `moat log:\n${moat.stderr().slice(-3000)}`,
    ).toEqual([]);

    phase('traffic');
    console.log(`host-many: ${GUESTS} guests: ${phases.join(', ')}`);

    // Each network's decision log: records of its own network only, its name allowed, the next guest's blocked.
    for (const g of guests) {
      await waitFor(`g${g.index}'s decision log`, () => readFileSync(g.decisions, 'utf8').split('\n').filter(Boolean).length >= 2, {
        timeoutMs: 10_000,
        intervalMs: 100,
      });
      const records = readFileSync(g.decisions, 'utf8')
        .split('\n')
        .filter(Boolean)
        .map((l) => JSON.parse(l) as DecisionLine);
      expect(new Set(records.map((r) => r.network))).toEqual(new Set([`g${g.index}`]));
      expect(records.some((r) => r.decision === 'allowed' && r.name === nameOf(g.index))).toBe(true);
      expect(records.some((r) => r.decision === 'blocked' && r.name === nameOf((g.index + 1) % GUESTS))).toBe(true);
    }
  }, 600_000);
});
