/**
 * Server-closed connection churn on the in-memory link, simulated time: the
 * guest opens RATE connections per second for SECONDS, each sends a request,
 * Moat's owner answers and closes first (so Moat holds TIME-WAIT, as when a
 * host server closes), the guest closes second. Prints how many were
 * refused, the largest connection and TIME-WAIT tables seen, and the heap.
 *
 *   npm run build && node --expose-gc dist/bench/tcp-timewait.js [rate] [seconds]
 *
 * Issue 16's target: 1,000 per second for 120 s, zero refused, memory bounded.
 */
import { GUEST_IP, HOST_ALIAS, Link } from '../test/support/link.js';

function main(): void {
  const rate = Number(process.argv[2] ?? 1000);
  const seconds = Number(process.argv[3] ?? 120);
  let opened = 0;
  let completed = 0;
  let refused = 0;
  let maxConnections = 0;
  let maxTimeWait = 0;
  const link = new Link({
    faults: { drop: 0, duplicate: 0, reorder: 0, delayMs: 0.25, jitterMs: 0 },
    moatEvents: {
      onTcpSyn: (p) => {
        const s = p.accept({
          onData: () => {
            s.write(new Uint8Array(200));
            s.end(); // the server closes first: TIME-WAIT is Moat's
          },
          onEnd() {},
          onDrain() {},
          onClose() {},
        });
      },
      onUdp() {},
    },
    guestEvents: { onTcpSyn: (p) => p.ignore(), onUdp() {} },
  });
  const heapBefore = heap();
  const gapMs = 1000 / rate;
  const total = rate * seconds;
  const start = link.clock.now();
  for (let i = 0; i < total; i++) {
    const due = start + i * gapMs;
    link.run(() => link.clock.now() >= due, due - link.clock.now() + 1);
    if (link.clock.now() < due) link.clock.set(due);
    opened++;
    // Source ports cycle through the ephemeral range, as a guest's do.
    const port = 32768 + (i % 28232);
    const c = link.guest.connectTcp(
      { from: GUEST_IP, fromPort: port, to: HOST_ALIAS, toPort: 80 },
      {
        onConnect: () => void c.write(new Uint8Array(100)),
        onData() {},
        onEnd: () => c.end(),
        onDrain() {},
        onClose: (r) => {
          if (r === 'closed') completed++;
          else refused++;
        },
      },
    );
    if (i % 1000 === 0) {
      const t = link.moat.tableSizes();
      maxConnections = Math.max(maxConnections, t.connections);
      maxTimeWait = Math.max(maxTimeWait, t.timeWait);
    }
  }
  link.run(() => completed + refused === opened, 10_000);
  const t = link.moat.tableSizes();
  console.log(
    `${opened} server-closed connections at ${rate}/s for ${seconds} s (simulated): ${completed} completed, ${refused} refused; ` +
      `Moat connections max ${maxConnections}, TIME-WAIT max ${maxTimeWait} (now ${t.timeWait}, recycled ${link.moat.stats.tcpTimeWaitRecycled ?? 0}); ` +
      `drops ${JSON.stringify(link.moat.stats.drops)}; heap growth ${((heap() - heapBefore) / 1e6).toFixed(1)} MB`,
  );
}

function heap(): number {
  (globalThis as { gc?: () => void }).gc?.();
  return process.memoryUsage().heapUsed;
}

if (import.meta.url === `file://${process.argv[1]}`) main();
