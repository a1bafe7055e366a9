/**
 * `moat serve` end to end under load, with the real Linux kernel as the guest
 * (topology and safety checks: moat-fixture.ts):
 *  - 100 MiB each way, sha256 compared at both ends and with an independent
 *    expectation computed here;
 *  - upload and download at the same time (one connection, and two);
 *  - 200 connections open at once from the guest;
 *  - a host server that never reads: the guest's send blocks, Moat's memory
 *    stays bounded, other flows keep working, and the flow recovers when the
 *    server starts reading;
 *  - iperf3 both ways at MTU 1500 and 65520 (figures printed, only completion
 *    and nonzero throughput asserted), and the same over a bare veth as a
 *    baseline.
 *
 * Addresses: the guest names only 192.168.127.254 (the host alias, dialed to
 * 127.0.0.1) and remote's "internet" addresses, all checked by the fixture's
 * route guard; the veth baseline uses two fresh namespaces with no other
 * route (checked by createVethPair).
 */
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { createServer as createNetServer, type AddressInfo, type Server, type Socket } from 'node:net';
import { randomBytes } from 'node:crypto';
import {
  cleanupAll,
  e2eGate,
  hostRunAsync,
  killTracked,
  nsRunAsync,
  nsSpawn,
  waitFor,
  waitForOutput,
  type ExecResult,
  type TrackedProcess,
} from './harness.js';
import { FIXTURE_TOOLS, HOST_IP, startMoatFixture, type MoatFixture } from './moat-fixture.js';
import {
  BLOCKING_WRITER_JS,
  BULK_CLIENT_JS,
  BULK_SERVER_JS,
  MANY_CONNECTIONS_CLIENT_JS,
  MiB,
  bulkResults,
  createVethPair,
  expectedSha,
  gbps,
  inFlightBytes,
  lastProgress,
  parseIperfJson,
  parseSs,
  pollUntil,
  rssBytes,
  serverMaxActive,
  type BulkResult,
  type IperfFigures,
} from './bulk-support.js';

const gate = e2eGate([...FIXTURE_TOOLS, 'iperf3', 'ss']);
const PREFIX = 'mb9-';
/** Seeds differ per run, so no hash below can be a remembered constant. */
const RUN = randomBytes(4).toString('hex');

function readyPort(stdout: string): number {
  const m = /^ready (\d+)/m.exec(stdout);
  if (!m) throw new Error(`no "ready PORT" line in: ${stdout}`);
  return Number(m[1]);
}

/** Moat's drops and log tail, attached to failing assertions. */
async function evidence(fx: MoatFixture): Promise<string> {
  let stats = '';
  try {
    const s = await fx.stats();
    stats = JSON.stringify({ drops: s.drops, flows: s.flows, nat: s['nat'] });
  } catch (e) {
    stats = `(stats failed: ${(e as Error).message})`;
  }
  const shim = fx.shim.child;
  const shimState = shim.exitCode !== null || shim.signalCode !== null ? `exited (${shim.exitCode ?? shim.signalCode})` : 'running';
  return `stats=${stats}\nshim ${shim.pid} ${shimState}, stderr:\n${fx.shim.stderr().slice(-2000)}\nmoat log tail:\n${fx.moatLog().slice(-3000)}`;
}

/**
 * If an earlier case killed the shim (Moat sent it a bad frame), start a new
 * one so that each case reports its own outcome; the earlier case has
 * already failed with the shim's stderr as evidence.
 */
async function reviveShim(fx: MoatFixture | undefined): Promise<void> {
  if (!fx) return;
  const c = fx.shim.child;
  if (c.exitCode === null && c.signalCode === null) return;
  console.log(`moat-shim had exited (${c.exitCode ?? c.signalCode}): ${fx.shim.stderr().trim().split('\n').pop()}; restarting it for the next case`);
  await fx.restartShim();
}

/** No internal errors, no error log lines, and one shim connection for the whole run. */
async function expectCleanAfterLoad(fx: MoatFixture, label: string): Promise<void> {
  const stats = await fx.stats();
  console.log(`moat stats after the ${label} load: ${JSON.stringify({ drops: stats.drops, link: stats['link'], nat: stats['nat'] })}`);
  expect(stats.drops['stack:internal-error'] ?? 0, JSON.stringify(stats.drops)).toBe(0);
  const errors = fx.moatLogEntries().filter((e) => e['level'] === 'error');
  expect(errors, JSON.stringify(errors)).toEqual([]);
  // A second connection means the shim died (e.g. it read a corrupt frame length) and was restarted.
  const linkErrors = fx.moatLogEntries().filter((e) => e['msg'] === 'guest connection error');
  expect(linkErrors, `the Moat <-> shim stream broke: ${JSON.stringify(linkErrors)}`).toEqual([]);
  expect((stats['link'] as { connections: number }).connections).toBe(1);
}

/** Throw (ends a pollUntil early) when the shim has died: the guest's link is gone. */
function assertShimAlive(fx: MoatFixture): void {
  const c = fx.shim.child;
  if (c.exitCode !== null || c.signalCode !== null) {
    throw new Error(`moat-shim died (${c.exitCode ?? c.signalCode}): ${fx.shim.stderr().trim().split('\n').pop()}`);
  }
}

/**
 * Run a command in the guest like fx.guestRun, but give up at once if the
 * shim dies meanwhile (the guest's link is gone: waiting for the timeout would
 * only slow the failure down). The shim's last words go into stderr.
 */
async function guestRunWatched(fx: MoatFixture, cmd: string, args: string[], timeoutMs: number): Promise<ExecResult> {
  const shim = fx.shim;
  const p = fx.guestSpawn(cmd, args);
  p.child.stdin?.end();
  let timer: NodeJS.Timeout | undefined;
  const outcome = await Promise.race([
    p.exited.then(() => 'exited' as const),
    shim.exited.then(() => 'shim-died' as const),
    new Promise<'timeout'>((r) => (timer = setTimeout(() => r('timeout'), timeoutMs))),
  ]);
  clearTimeout(timer);
  if (outcome !== 'exited') await killTracked(p);
  const why =
    outcome === 'shim-died'
      ? `\n[moat-shim died while this ran: ${shim.stderr().trim().split('\n').pop()}]`
      : outcome === 'timeout'
        ? `\n[killed after ${timeoutMs} ms]`
        : '';
  return { status: outcome === 'exited' ? p.child.exitCode : null, stdout: p.stdout(), stderr: p.stderr() + why };
}

interface BulkServer {
  proc: TrackedProcess;
  addr: string;
  port: number;
}

async function startBulkServer(fx: MoatFixture, addr: string): Promise<BulkServer> {
  const proc = await fx.startNodeServer(fx.remoteNs, BULK_SERVER_JS, [addr, '0']);
  return { proc, addr, port: readyPort(proc.stdout()) };
}

/**
 * One bulk connection from the guest: `down` bytes remote->guest and `up`
 * bytes guest->remote at the same time. Checks byte counts and that each
 * receiver's sha256 equals the sender's and the expectation computed here.
 */
async function runBulk(fx: MoatFixture, server: BulkServer, name: string, down: number, up: number, timeoutMs: number): Promise<BulkResult> {
  const tag = `${name}-${RUN}`;
  const downSeed = `${tag}-down`;
  const upSeed = `${tag}-up`;
  const r = await guestRunWatched(
    fx,
    process.execPath,
    ['-e', BULK_CLIENT_JS, server.addr, String(server.port), tag, String(down), String(up), downSeed, upSeed, String(timeoutMs)],
    timeoutMs + 5_000,
  );
  const client = bulkResults(r.stdout).get(tag);
  expect(r.status, `bulk client ${tag}: exit ${r.status}\n${r.stdout}${r.stderr}\n${await evidence(fx)}`).toBe(0);
  expect(client, r.stdout).toBeDefined();
  const remote = await waitFor(`bulk server report for ${tag}`, () => bulkResults(server.proc.stdout()).get(tag), { timeoutMs: 5_000 });
  const [wantDown, wantUp] = [expectedSha(downSeed, down), expectedSha(upSeed, up)];
  // remote -> guest
  expect(remote.sentBytes).toBe(down);
  expect(remote.sentSha).toBe(wantDown);
  expect(client!.recvBytes).toBe(down);
  expect(client!.recvSha, `${tag}: guest received different bytes than remote sent`).toBe(wantDown);
  // guest -> remote
  expect(client!.sentBytes).toBe(up);
  expect(client!.sentSha).toBe(wantUp);
  expect(remote.recvBytes).toBe(up);
  expect(remote.recvSha, `${tag}: remote received different bytes than the guest sent`).toBe(wantUp);
  return client!;
}

const mbps = (bytes: number, ms: number): string => ((bytes * 8) / (ms * 1e3)).toFixed(0);

/** iperf3 from the guest to an iperf3 server in remote; returns the figures (asserting a finished run, > 0). */
async function iperf(run: (args: string[]) => Promise<{ status: number | null; stdout: string; stderr: string }>, label: string, args: string[]): Promise<IperfFigures> {
  const r = await run(['-J', '-t', '3', '--connect-timeout', '3000', ...args]);
  expect(r.status, `iperf3 ${label}: exit ${r.status}\n${r.stdout.slice(-2000)}\n${r.stderr}`).toBe(0);
  const f = parseIperfJson(r.stdout);
  expect(f.receivedBps, `iperf3 ${label}`).toBeGreaterThan(0);
  expect(f.bytes).toBeGreaterThan(0);
  console.log(`iperf3 ${label}: ${gbps(f.receivedBps)} Gbit/s received (sender ${gbps(f.sentBps)} Gbit/s, retransmits ${f.retransmits ?? '?'})`);
  return f;
}

async function startIperfServer(ns: string, addr: string, port: number): Promise<TrackedProcess> {
  const p = nsSpawn(ns, 'iperf3', ['-s', '--forceflush', '-B', addr, '-p', String(port)]);
  await waitForOutput(p, /Server listening on/, { stream: 'stdout', timeoutMs: 5_000 });
  return p;
}

// ------------------------------------------------------------------ MTU 1500: bulk, concurrency, backpressure, iperf3

describe.skipIf(gate.skip)('moat serve bulk e2e (MTU 1500)', () => {
  let fx: MoatFixture;
  let bulk: BulkServer;

  beforeAll(async () => {
    fx = await startMoatFixture({ prefix: PREFIX, mtu: 1500 });
    bulk = await startBulkServer(fx, fx.topo.internetAddrs[0]!);
  }, 60_000);

  beforeEach(async () => reviveShim(fx), 30_000);

  afterAll(async () => {
    await fx?.stop();
    cleanupAll();
  }, 30_000);

  it('100 MiB guest -> remote: remote hashes exactly what the guest sent', async () => {
    const c = await runBulk(fx, bulk, 'up100', 0, 100 * MiB, 30_000);
    console.log(`bulk 100 MiB guest->remote (MTU 1500): ${c.ms} ms, ${mbps(100 * MiB, c.ms!)} Mbit/s`);
  }, 40_000);

  it('100 MiB remote -> guest: the guest hashes exactly what remote sent', async () => {
    const c = await runBulk(fx, bulk, 'down100', 100 * MiB, 0, 30_000);
    console.log(`bulk 100 MiB remote->guest (MTU 1500): ${c.ms} ms, ${mbps(100 * MiB, c.ms!)} Mbit/s`);
  }, 40_000);

  it('upload and download at the same time: one connection both ways, and two connections', async () => {
    const one = await runBulk(fx, bulk, 'both1', 32 * MiB, 32 * MiB, 30_000);
    console.log(`bulk 32+32 MiB on one connection (MTU 1500): ${one.ms} ms`);
    const [a, b] = await Promise.all([
      runBulk(fx, bulk, 'pairdown', 32 * MiB, 0, 30_000),
      runBulk(fx, bulk, 'pairup', 0, 32 * MiB, 30_000),
    ]);
    console.log(`bulk 32 MiB down + 32 MiB up on two connections (MTU 1500): ${a.ms} ms / ${b.ms} ms`);
  }, 80_000);

  it('200 connections open at once from the guest, each answers a request', async () => {
    const n = 200;
    const server = await startBulkServer(fx, fx.topo.internetAddrs[1]!);
    try {
      const before = await fx.stats();
      const r = await guestRunWatched(fx, process.execPath, ['-e', MANY_CONNECTIONS_CLIENT_JS, server.addr, String(server.port), String(n), '30000'], 35_000);
      expect(r.status, `many-connections client: ${r.stdout}${r.stderr}\n${await evidence(fx)}`).toBe(0);
      const res = JSON.parse(r.stdout.trim().split('\n').pop()!) as { connected: number; answered: number; maxActive: number; errorCount: number };
      expect(res).toMatchObject({ connected: n, answered: n, errorCount: 0 });
      // All n were open at the remote server at the same moment.
      expect(serverMaxActive(server.proc.stdout())).toBe(n);
      expect(res.maxActive).toBe(n);
      const after = await fx.stats();
      const opened = (s: typeof after): number => (s['nat'] as { tcp: { opened: number } }).tcp.opened;
      expect(opened(after) - opened(before)).toBe(n);
    } finally {
      await killTracked(server.proc);
    }
  }, 45_000);

  it('a host server that never reads: the guest send blocks, Moat memory stays bounded, other flows work, then it recovers', async () => {
    const total = 200 * MiB;
    const moatPid = fx.moat.child.pid!;
    const stalled: Socket[] = [];
    let received = 0;
    // Accepts and never reads (pauseOnConnect: no read(2) until resume()).
    const host: Server = createNetServer({ pauseOnConnect: true }, (s) => {
      stalled.push(s);
      s.on('data', (d: Buffer) => (received += d.length));
      s.on('error', () => {});
    });
    await new Promise<void>((r) => host.listen(0, '127.0.0.1', r));
    const port = (host.address() as AddressInfo).port;
    let writer: TrackedProcess | undefined;
    try {
      const rssBefore = rssBytes(moatPid);
      writer = fx.guestSpawn(process.execPath, ['-e', BLOCKING_WRITER_JS, HOST_IP, String(port), String(total)]);
      await waitForOutput(writer, /^connected$/m, { stream: 'stdout', timeoutMs: 10_000 });

      // Blocked = no progress for 2 s (bounded: fails if it keeps going for 40 s).
      let last = -1;
      let since = Date.now();
      await pollUntil(
        'the guest writer to stop making progress',
        () => {
          const p = lastProgress(writer!.stdout());
          if (/^(done|error)/m.test(writer!.stdout())) throw new Error(`writer finished: ${writer!.stdout().slice(-300)}`);
          assertShimAlive(fx);
          if (p !== last) {
            last = p;
            since = Date.now();
            return false;
          }
          return Date.now() - since >= 2_000;
        },
        { timeoutMs: 40_000, intervalMs: 100 },
      );
      const accepted = lastProgress(writer.stdout());
      const rssStalled = rssBytes(moatPid);
      expect(stalled.length).toBe(1);
      expect(received).toBe(0);

      // Where the bytes are: guest kernel (unacked), host kernel (Moat's socket
      // Send-Q + server's Recv-Q), and whatever Moat holds in between.
      const guestSs = parseSs((await fx.guestRun('ss', ['-tniH', 'dst', HOST_IP, 'dport', '=', `:${port}`])).stdout);
      const serverSs = parseSs((await hostRunAsync('ss', ['-tniH', 'sport', '=', `:${port}`])).stdout);
      const moatSs = parseSs((await hostRunAsync('ss', ['-tniH', 'dport', '=', `:${port}`])).stdout);
      const acked = guestSs[0]?.bytesAcked ?? 0;
      const inHostKernel = (serverSs[0]?.recvQ ?? 0) + (moatSs[0]?.sendQ ?? 0);
      const heldByMoat = acked - inHostKernel;
      const where =
        `writer accepted ${accepted} B of ${total}; guest acked ${acked} B, in flight ${guestSs[0] ? inFlightBytes(guestSs[0]) : '?'} B, ` +
        `sent ${guestSs[0]?.bytesSent} B (retransmissions included), Send-Q ${guestSs[0]?.sendQ} B; ` +
        `host kernel: server Recv-Q ${serverSs[0]?.recvQ}, Moat Send-Q ${moatSs[0]?.sendQ}; so Moat holds ~${heldByMoat} B; ` +
        `Moat RSS ${(rssBefore / MiB).toFixed(1)} -> ${(rssStalled / MiB).toFixed(1)} MiB\n` +
        `guest ss: ${guestSs[0]?.info}`;
      console.log(`stalled host reader (MTU 1500): ${where}`);
      expect(guestSs.length, `guest ss: ${JSON.stringify(guestSs)}`).toBe(1);
      expect(serverSs.length, `host server ss: ${JSON.stringify(serverSs)}`).toBe(1);
      expect(moatSs.length, `Moat's host socket ss: ${JSON.stringify(moatSs)}`).toBe(1);
      // The guest's send is blocked by Moat's closed window: everything it sent
      // is acknowledged, nothing is in flight, and bytes wait unsent in its socket.
      const g = guestSs[0]!;
      expect(inFlightBytes(g), where).toBe(0);
      expect(Number(/\bnotsent:(\d+)/.exec(g.info)?.[1] ?? 0), where).toBeGreaterThan(0);
      // It blocks long before 200 MiB: only socket buffers' worth got through.
      expect(accepted, where).toBeLessThan(64 * MiB);
      // Moat itself holds about its receive window plus the host socket's high-water mark (1 MiB + 256 KiB).
      expect(heldByMoat, where).toBeLessThan(4 * MiB);
      expect(rssStalled - rssBefore, where).toBeLessThan(150 * MiB);

      // Other flows still work meanwhile: 8 MiB each way to remote, hashes right.
      await runBulk(fx, bulk, 'during-stall', 8 * MiB, 8 * MiB, 30_000);
      // (A chunk may still slip in if the guest kernel grows its send buffer.)
      expect(lastProgress(writer.stdout()), 'the stalled writer moved while the server was not reading').toBeLessThan(accepted + MiB);
      expect(rssBytes(moatPid) - rssBefore).toBeLessThan(150 * MiB);

      // The server starts reading: the window reopens and all 200 MiB arrive.
      stalled[0]!.resume();
      await pollUntil(
        'the guest writer to finish after the server resumed reading',
        () => {
          assertShimAlive(fx);
          return /^done$/m.test(writer!.stdout()) || /^error/m.test(writer!.stdout());
        },
        { timeoutMs: 30_000, intervalMs: 100 },
      );
      expect(writer.stdout(), await evidence(fx)).toMatch(/^done$/m);
      await waitFor('the host server to receive every byte', () => received === total, { timeoutMs: 15_000 }).catch(() => {});
      expect(received, `host server received ${received} of ${total}\n${await evidence(fx)}`).toBe(total);
      const rssEnd = rssBytes(moatPid);
      console.log(`stalled host reader (MTU 1500): after resume, all ${total} B arrived; Moat RSS ${(rssEnd / MiB).toFixed(1)} MiB`);
      expect(rssEnd - rssBefore).toBeLessThan(150 * MiB);
    } finally {
      if (writer) await killTracked(writer);
      for (const s of stalled) s.destroy();
      await new Promise<void>((r) => host.close(() => r()));
    }
  }, 120_000);

  it('iperf3 both directions (MTU 1500)', async () => {
    const addr = fx.topo.internetAddrs[2]!;
    const server = await startIperfServer(fx.remoteNs, addr, 5201);
    try {
      const run = (args: string[]) => guestRunWatched(fx, 'iperf3', ['-c', addr, '-p', '5201', ...args], 20_000);
      await iperf(run, 'through Moat, guest->remote, MTU 1500', []);
      await iperf(run, 'through Moat, remote->guest (-R), MTU 1500', ['-R']);
    } finally {
      await killTracked(server);
    }
  }, 60_000);

  it('no internal errors after the load, and the guest link never broke', async () => {
    await expectCleanAfterLoad(fx, 'MTU 1500');
  });
});

// ------------------------------------------------------------------ MTU 65520: iperf3 and one 100 MiB check

describe.skipIf(gate.skip)('moat serve bulk e2e (MTU 65520)', () => {
  let fx: MoatFixture;

  beforeAll(async () => {
    fx = await startMoatFixture({ prefix: PREFIX, mtu: 65520 });
  }, 60_000);

  beforeEach(async () => reviveShim(fx), 30_000);

  afterAll(async () => {
    await fx?.stop();
    cleanupAll();
  }, 30_000);

  it('100 MiB both ways at once on one connection, hashes right', async () => {
    const bulk = await startBulkServer(fx, fx.topo.internetAddrs[0]!);
    try {
      const c = await runBulk(fx, bulk, 'both100-jumbo', 100 * MiB, 100 * MiB, 45_000);
      console.log(`bulk 100+100 MiB on one connection (MTU 65520): ${c.ms} ms`);
    } finally {
      await killTracked(bulk.proc);
    }
  }, 55_000);

  it('iperf3 both directions (MTU 65520)', async () => {
    const addr = fx.topo.internetAddrs[2]!;
    const server = await startIperfServer(fx.remoteNs, addr, 5201);
    try {
      const run = (args: string[]) => guestRunWatched(fx, 'iperf3', ['-c', addr, '-p', '5201', ...args], 20_000);
      await iperf(run, 'through Moat, guest->remote, MTU 65520', []);
      await iperf(run, 'through Moat, remote->guest (-R), MTU 65520', ['-R']);
    } finally {
      await killTracked(server);
    }
  }, 60_000);

  it('no internal errors after the load, and the guest link never broke', async () => {
    await expectCleanAfterLoad(fx, 'MTU 65520');
  });
});

// ------------------------------------------------------------------ baseline: the kernel alone over a veth

describe.skipIf(gate.skip)('baseline: iperf3 over a bare veth between two namespaces (no Moat)', () => {
  afterAll(() => cleanupAll());

  for (const mtu of [1500, 65520]) {
    it(`veth MTU ${mtu}, both directions`, async () => {
      const pair = createVethPair(PREFIX, mtu);
      let server: TrackedProcess | undefined;
      try {
        server = await startIperfServer(pair.nsB, pair.addrB, 5201);
        const run = (args: string[]) => nsRunAsync(pair.nsA, 'iperf3', ['-c', pair.addrB, '-p', '5201', ...args], { timeoutMs: 20_000 });
        await iperf(run, `baseline veth (no Moat), A->B, MTU ${mtu}`, []);
        await iperf(run, `baseline veth (no Moat), B->A (-R), MTU ${mtu}`, ['-R']);
      } finally {
        if (server) await killTracked(server);
        pair.destroy();
      }
    }, 60_000);
  }
});
