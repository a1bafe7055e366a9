/**
 * netstack throughput: two Stacks joined in memory (test/support/link.ts), the
 * "guest" opens a TCP connection into "moat" and pushes BYTES through it, at
 * MTU 1500 and 65520. Prints Gbit/s, frames/s and an allocation estimate.
 *
 * The link is perfect and time is a ManualClock, so what is measured is the
 * CPU cost of the two stacks (both ends: build, checksum, parse, verify,
 * deliver), not a network. Both stacks run on one core, so the figure is for
 * a sender and a receiver sharing one thread.
 *
 *   npm run bench                      # 1 GiB at each MTU
 *   node dist/bench/netstack.js 256    # MiB per run
 *   node dist/bench/netstack.js 1024 --runs 3   # median of 3
 *   node dist/bench/netstack.js 256 --ipv6      # the same over IPv6 (IPv4 figures beside it for the ratio)
 */
import { PerformanceObserver } from 'node:perf_hooks';
import v8 from 'node:v8';
import type { TcpSocket } from '../netstack/api.js';
import { GUEST_IP, GUEST_IP6, HOST_ALIAS, HOST_ALIAS6, Link, LINK_IPV6 } from '../test/support/link.js';

interface Result {
  mtu: number;
  bytes: number;
  seconds: number;
  gbps: number;
  framesPerSec: number;
  minorGcs: number;
  heapBytesPerFrame: number;
}

let minorGcs = 0;
new PerformanceObserver((list) => {
  for (const e of list.getEntries()) {
    // detail.kind 1 = minor (scavenge) in Node's perf_hooks GC entries.
    if ((e as unknown as { detail?: { kind?: number } }).detail?.kind === 1) minorGcs++;
  }
}).observe({ entryTypes: ['gc'] });

function semiSpaceBytes(): number {
  const ns = v8.getHeapSpaceStatistics().find((s) => s.space_name === 'new_space');
  // The new space holds two semi-spaces; a scavenge happens when one fills.
  return ns ? ns.space_size / 2 : 0;
}

async function runOnce(mtu: number, totalBytes: number, v6 = false): Promise<Result> {
  let received = 0;
  let guestSocket: TcpSocket | undefined;
  const link = new Link({
    mtu,
    copyFrames: false,
    // As the service does: staging buffers are fully written, so skip the zero-fill.
    allocate: (size) => Buffer.allocUnsafe(size),
    moatConfig: { ...(v6 ? LINK_IPV6.moat : {}), tcp: { sendBufferBytes: 4 << 20, recvBufferBytes: 4 << 20, oooBytes: 4 << 20, synHoldTimeoutMs: 30_000, maxConnections: 16, maxHeldSyns: 16 } },
    guestConfig: { ...(v6 ? LINK_IPV6.guest : {}), tcp: { sendBufferBytes: 4 << 20, recvBufferBytes: 4 << 20, oooBytes: 4 << 20, synHoldTimeoutMs: 30_000, maxConnections: 16, maxHeldSyns: 16 } },
    moatEvents: {
      onTcpSyn: (p) => {
        p.accept({
          onData: (d) => {
            received += d.length;
          },
          onEnd: () => {},
          onDrain: () => {},
          onClose: () => {},
        });
      },
      onUdp: () => {},
    },
    guestEvents: { onTcpSyn: (p) => p.refuse(), onUdp: () => {} },
  });

  const chunk = new Uint8Array(256 * 1024);
  for (let i = 0; i < chunk.length; i++) chunk[i] = (i * 7) & 0xff;
  let written = 0;
  const pump = () => {
    const s = guestSocket!;
    while (written < totalBytes) {
      const want = Math.min(chunk.length, totalBytes - written);
      const n = s.write(want === chunk.length ? chunk : chunk.subarray(0, want));
      written += n;
      if (n < want) return;
    }
  };
  let connected = false;
  guestSocket = link.guest.connectTcp(
    v6 ? { from: GUEST_IP6, fromPort: 40000, to: HOST_ALIAS6, toPort: 5201 } : { from: GUEST_IP, fromPort: 40000, to: HOST_ALIAS, toPort: 5201 },
    {
      onData: () => {},
      onEnd: () => {},
      onDrain: pump,
      onClose: () => {},
      onConnect: () => {
        connected = true;
      },
    },
  );
  // Over IPv6 the first SYN waits for neighbour discovery and is resent after the initial RTO (1 s of simulated time).
  if (!link.run(() => connected, 10_000)) throw new Error('bench: handshake did not complete');

  await settleGcEntries();
  const gcBefore = minorGcs;
  const framesBefore = link.sent;
  const t0 = process.hrtime.bigint();
  pump();
  if (!link.run(() => received >= totalBytes, 3_600_000)) {
    throw new Error(`bench: only ${received} of ${totalBytes} bytes arrived`);
  }
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
  const frames = link.sent - framesBefore;
  await settleGcEntries();
  const gcs = minorGcs - gcBefore;
  return {
    mtu,
    bytes: totalBytes,
    seconds,
    gbps: (totalBytes * 8) / seconds / 1e9,
    framesPerSec: frames / seconds,
    minorGcs: gcs,
    heapBytesPerFrame: (gcs * semiSpaceBytes()) / frames,
  };
}

/** GC entries reach the observer asynchronously: let the event loop deliver them. */
async function settleGcEntries(): Promise<void> {
  for (let i = 0; i < 3; i++) await new Promise((r) => setImmediate(r));
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
}

async function main(): Promise<void> {
  const args = process.argv.slice(2);
  const mib = Number(args.find((a) => /^\d+$/.test(a)) ?? 1024);
  const runsIdx = args.indexOf('--runs');
  const runs = runsIdx >= 0 ? Number(args[runsIdx + 1]) : 1;
  const targets: Record<number, number> = { 1500: 1.5, 65520: 8 };
  console.log(`netstack bench: ${mib} MiB per run, ${runs} run(s) per MTU, median reported`);
  console.log('mtu     Gbit/s   frames/s    minor GCs  ~heap B/frame  target');
  const v6 = args.includes('--ipv6');
  for (const mtu of [1500, 65520]) {
    const results: Result[] = [];
    const v4Results: Result[] = [];
    // With --ipv6, IPv4 and IPv6 runs alternate, so that a change in the machine's load hits both alike.
    for (let r = 0; r < runs; r++) {
      if (v6) v4Results.push(await runOnce(mtu, mib * 1024 * 1024, false));
      results.push(await runOnce(mtu, mib * 1024 * 1024, v6));
    }
    const gbps = median(results.map((r) => r.gbps));
    if (v6) {
      const v4 = median(v4Results.map((r) => r.gbps));
      console.log(`${String(mtu).padEnd(7)} IPv4 ${v4.toFixed(2)} Gbit/s, IPv6 ${gbps.toFixed(2)} Gbit/s: ratio IPv6/IPv4 ${(gbps / v4).toFixed(2)}`);
    }
    const fps = median(results.map((r) => r.framesPerSec));
    const gcs = median(results.map((r) => r.minorGcs));
    const bpf = median(results.map((r) => r.heapBytesPerFrame));
    const target = targets[mtu]!;
    console.log(
      `${String(mtu).padEnd(7)} ${gbps.toFixed(2).padStart(6)}   ${Math.round(fps).toString().padStart(9)}   ${String(gcs).padStart(9)}  ${bpf.toFixed(0).padStart(13)}  >= ${target} Gbit/s ${gbps >= target ? 'met' : 'MISSED'}`,
    );
  }
}

await main();
