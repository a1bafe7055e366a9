/**
 * Each flow limit of `moat serve`, driven over its bound from the guest
 * namespace (real kernel TCP/UDP through moat-shim): the newest work is
 * refused and counted in /stats.limits, the flows already running keep
 * working, and Moat's RSS stays under RSS_BOUND_KIB.
 *
 * Limits are set small so that the kernel's own bounds are not reached first:
 *   --max-tcp-flows 20, --max-half-open 8, --max-udp-flows 16,
 *   --total-buffer-bytes 2 MiB, --connect-timeout-ms 3000.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cleanupAll, e2eGate, waitFor } from './harness.js';
import { FIXTURE_TOOLS, HTTP_SERVER_JS, UDP_ECHO_JS, startMoatFixture, type MoatFixture } from './moat-fixture.js';
import {
  GUEST_STALLED_READERS_JS,
  GUEST_TCP_FLOOD_JS,
  GUEST_UDP_FLOWS_JS,
  TCP_ECHO_JS,
  TCP_STREAM_JS,
  limits,
  moatPid,
  natTables,
  readyPort,
  resultOf,
  rssKiB,
} from './limits-support.js';

const gate = e2eGate([...FIXTURE_TOOLS, 'curl']);

/**
 * Moat's RSS must stay under this through every test here. A fresh Moat is
 * ~60-70 MiB (Node itself); the limits here bound what the guest can make it
 * hold to a few MiB, so 160 MiB leaves room for V8's heap growth but would
 * catch anything that buffers per refused flow or grows without bound.
 */
const RSS_BOUND_KIB = 160 * 1024;
const TOTAL_BUFFER = 2 * 1024 * 1024;

interface FloodResult {
  connected: number;
  refused: number;
  timedOut: number;
  echoed: number;
  errors: Record<string, number>;
}

describe.skipIf(gate.skip)('moat serve e2e: flow limits driven over their bound from the guest', () => {
  let fx: MoatFixture;
  let target: string;
  let blackhole: string;
  let echoPort: number;
  let streamPort: number;
  let udpPort: number;
  let httpPort: number;

  beforeAll(async () => {
    fx = await startMoatFixture({
      prefix: 'mz9l-',
      extraMoatArgs: [
        '--max-tcp-flows', '20',
        '--max-half-open', '8',
        '--max-udp-flows', '16',
        '--total-buffer-bytes', String(TOTAL_BUFFER),
        '--connect-timeout-ms', '3000',
      ],
    });
    target = fx.topo.internetAddrs[0]!;
    // An address routed into remote but assigned to nothing there: SYNs to it go unanswered.
    blackhole = fx.topo.internetSubnet.replace(/\.0\/24$/, '.200');
    fx.allowAddresses([blackhole]);
    echoPort = readyPort((await fx.startNodeServer(fx.remoteNs, TCP_ECHO_JS, [target, '0'])).stdout());
    streamPort = readyPort((await fx.startNodeServer(fx.remoteNs, TCP_STREAM_JS, [target, '0'])).stdout());
    udpPort = readyPort((await fx.startNodeServer(fx.remoteNs, UDP_ECHO_JS, [target, '0'])).stdout());
    httpPort = readyPort((await fx.startNodeServer(fx.remoteNs, HTTP_SERVER_JS, [target, '0', 'remote'])).stdout());
  });

  afterAll(async () => {
    if (fx) {
      process.stdout.write(`limits-flows: moat RSS at the end ${Math.round(rssKiB(moatPid(fx)) / 1024)} MiB\n`);
      await fx.stop();
    }
    cleanupAll();
  });

  async function curlOk(): Promise<void> {
    const r = await fx.guestRun('curl', ['-sS', '--max-time', '10', `http://${target}:${httpPort}/bytes/100000`, '-o', '/dev/null', '-w', '%{http_code} %{size_download}'], {
      timeoutMs: 15_000,
    });
    expect(r.stdout.trim(), r.stderr).toBe('200 100000');
  }

  it('--max-tcp-flows: 30 connections -> 20 open and echoing, 10 refused with RST; freed slots serve new flows', async () => {
    const flood = fx.guestSpawn(process.execPath, ['-e', GUEST_TCP_FLOOD_JS, target, String(echoPort), '30', '4000', 'hold']);
    await waitFor('flood result', async () => /^result /m.test(flood.stdout()), { timeoutMs: 20_000, intervalMs: 100 });
    const r = resultOf<FloodResult>(flood.stdout());
    expect(r, flood.stderr()).toMatchObject({ connected: 20, refused: 10, timedOut: 0, echoed: 20 });
    const l = await limits(fx);
    expect(l['tcpFlows']).toMatchObject({ max: 20, current: 20 });
    expect(l['tcpFlows']!.refused).toBeGreaterThanOrEqual(10);
    // Every limit reports itself, with the flag's value as its bound.
    expect(Object.keys(l).sort()).toEqual(['apiBody', 'buffers', 'dnsInFlight', 'fragments', 'halfOpen', 'icmpEcho', 'peek', 'tcpFlows', 'timeWait', 'udpFlows']);
    expect(l['fragments']).toMatchObject({ maxBytes: 4 * 1024 * 1024, maxDatagrams: 256, datagrams: 0, bytes: 0, refused: 0 });
    expect(l['halfOpen']!.max).toBe(8);
    expect(rssKiB(moatPid(fx))).toBeLessThan(RSS_BOUND_KIB);
    // The log says so once per interval, not once per refusal.
    const lines = fx.moatLogEntries().filter((e) => e['limit'] === 'tcpFlows');
    expect(lines.length).toBeGreaterThanOrEqual(1);
    expect(lines.length).toBeLessThanOrEqual(2);

    flood.child.kill('SIGKILL');
    await waitFor('tcp flows to close', async () => (await natTables(fx)).tcpFlows === 0, { timeoutMs: 10_000, intervalMs: 100 });
    await curlOk();
  });

  it('--max-half-open: a SYN flood to a silent destination holds at most 8 SYNs; an open flow keeps streaming', async () => {
    // An established download first.
    const reader = fx.guestSpawn(process.execPath, ['-e', 'const s=require("node:net").connect({host:process.argv[1],port:+process.argv[2]});let n=0;s.on("data",d=>{n+=d.length});setInterval(()=>console.log("got "+n),200);', target, String(streamPort)]);
    await waitFor('download to start', async () => /got [1-9]/.test(reader.stdout()), { timeoutMs: 10_000, intervalMs: 100 });
    const flood = fx.guestSpawn(process.execPath, ['-e', GUEST_TCP_FLOOD_JS, blackhole, '80', '20', '2500', 'exit']);
    let peak = 0;
    await waitFor(
      'half-open to fill',
      async () => {
        peak = Math.max(peak, (await limits(fx))['halfOpen']!.current);
        return peak >= 8;
      },
      { timeoutMs: 10_000, intervalMs: 50 },
    );
    const during = Number(/got (\d+)\n$/.exec(reader.stdout())?.[1] ?? 0);
    await new Promise((r) => setTimeout(r, 1000));
    const after = Number(/got (\d+)\n$/.exec(reader.stdout())?.[1] ?? 0);
    expect(after, 'the open download must keep moving during the flood').toBeGreaterThan(during);
    const l = await limits(fx);
    expect(l['halfOpen']!.current).toBeLessThanOrEqual(8);
    expect(l['halfOpen']!.refused).toBeGreaterThanOrEqual(12);
    await waitFor('flood to end', async () => /^result /m.test(flood.stdout()), { timeoutMs: 15_000, intervalMs: 100 });
    const r = resultOf<FloodResult>(flood.stdout());
    expect(r.connected).toBe(0);
    reader.child.kill('SIGKILL');
    // Dials time out (--connect-timeout-ms 3000) and the backlog empties.
    await waitFor('half-open to drain', async () => (await limits(fx))['halfOpen']!.current === 0, { timeoutMs: 15_000, intervalMs: 200 });
    expect(rssKiB(moatPid(fx))).toBeLessThan(RSS_BOUND_KIB);
    await curlOk();
  });

  it('--max-udp-flows: 40 new flows beside a busy one -> 15 admitted, the rest dropped, the busy flow untouched', async () => {
    const r = await fx.guestRun(process.execPath, ['-e', GUEST_UDP_FLOWS_JS, target, String(udpPort), '40'], { timeoutMs: 15_000 });
    const res = resultOf<{ first: boolean; firstAgain: boolean; newReplies: number }>(r.stdout);
    expect(res).toEqual({ first: true, firstAgain: true, newReplies: 15 });
    const l = await limits(fx);
    expect(l['udpFlows']).toMatchObject({ max: 16, current: 16 });
    expect(l['udpFlows']!.refused).toBeGreaterThanOrEqual(25);
    expect(rssKiB(moatPid(fx))).toBeLessThan(RSS_BOUND_KIB);
  });

  it('--total-buffer-bytes: guests that stop reading cannot make Moat buffer past the budget; another download still completes', async () => {
    // Small guest receive buffers, so that the guest kernel stops taking bytes soon and Moat's buffers fill.
    await fx.guestRun('sysctl', ['-w', 'net.ipv4.tcp_rmem=4096 16384 65536']);
    const stalled = fx.guestSpawn(process.execPath, ['-e', GUEST_STALLED_READERS_JS, target, String(streamPort), '8']);
    await waitFor('stalled readers', async () => /^ready 8/m.test(stalled.stdout()), { timeoutMs: 10_000, intervalMs: 100 });
    // Let the buffers fill: the guest kernel's receive buffers first, then Moat's.
    await waitFor('budget to be reached', async () => ((await limits(fx))['buffers']!['pausedFlows'] ?? 0) > 0, { timeoutMs: 15_000, intervalMs: 100 });
    await new Promise((r) => setTimeout(r, 1500));
    const b = (await limits(fx))["buffers"]!;
    process.stdout.write(`limits-flows: buffers with 8 stalled readers ${JSON.stringify(b)}\n`);
    // The bound --total-buffer-bytes documents (src/limits.ts help): the budget plus, per flow, its fair
    // share (64 KiB), one read (64 KiB) and the stack's initial receive window (64 KiB). 9 flows: 8 + the probe.
    const bound = TOTAL_BUFFER + 9 * 192 * 1024;
    expect(b['current']).toBeLessThanOrEqual(bound);
    expect(b['peak']).toBeLessThanOrEqual(bound);
    // Per flow open at the time: the 8 stalled ones (the probe below comes later). The deterministic test
    // (test/src/nat-budget-overshoot.test.ts) holds downloads to share + one 64 KiB read = 128 KiB per flow;
    // here only the documented bound above is asserted, because a clean-clone CI run on 7c85f55 measured
    // 142 KiB per flow once (32-68 KiB in other runs), which that model does not explain yet: printed, not judged.
    const open = (await natTables(fx)).tcpFlows;
    process.stdout.write(`limits-flows: over the budget by ${Math.max(0, b['peak']! - TOTAL_BUFFER)} B at peak (${Math.round(Math.max(0, b['peak']! - TOTAL_BUFFER) / open / 1024)} KiB per flow, ${open} flows open; documented bound 192 KiB per flow)\n`);
    expect(b['pauses']).toBeGreaterThan(0);
    // Stuck at the budget (without it the 8 flows would hold 1 MiB each in Moat's send buffers).
    expect(b['current']).toBeGreaterThanOrEqual(TOTAL_BUFFER / 2);
    expect(b['pausedFlows']).toBeGreaterThan(0);
    // A flow under its fair share is not starved by the stalled ones.
    await curlOk();
    expect(rssKiB(moatPid(fx))).toBeLessThan(RSS_BOUND_KIB);
    stalled.child.kill('SIGKILL');
    await waitFor('tcp flows to close', async () => (await natTables(fx)).tcpFlows === 0, { timeoutMs: 10_000, intervalMs: 100 });
    expect((await limits(fx))['buffers']!['pausedFlows']).toBe(0);
    await fx.guestRun('sysctl', ['-w', 'net.ipv4.tcp_rmem=4096 131072 6291456']);
  });
});
