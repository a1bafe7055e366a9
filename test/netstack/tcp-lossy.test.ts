/**
 * Two TcpConnections back to back over a link that drops, duplicates,
 * reorders and delays (seeded by fast-check): every byte arrives exactly
 * once and in order, both ways, and both ends close cleanly.
 */
import { describe, it, expect } from 'vitest';
import fc from 'fast-check';
import { TcpConnection, type TcpConfig } from '../../netstack/tcp/connection.js';
import { Network, Recorder, MIRROR } from './tcp-harness.js';

function pattern(n: number, salt: number): Uint8Array {
  const d = new Uint8Array(n);
  for (let i = 0; i < n; i++) d[i] = (i * 131 + salt + (i >>> 8)) & 0xff;
  return d;
}

function pumpInto(conn: () => TcpConnection, rec: Recorder, data: Uint8Array): () => void {
  let off = 0;
  let ended = false;
  const pump = (): void => {
    while (off < data.length) {
      const n = conn().write(data.subarray(off));
      off += n;
      if (n === 0) break;
    }
    if (off === data.length && !ended) {
      ended = true;
      conn().end();
    }
  };
  rec.onDrain = () => pump();
  return pump;
}

describe('TCP over a lossy link (property)', () => {
  it('delivers every byte exactly once, in order, both ways, and closes cleanly', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 0, max: 2 ** 31 - 1 }),
        fc.double({ min: 0, max: 0.15, noNaN: true }),
        fc.double({ min: 0, max: 0.1, noNaN: true }),
        fc.double({ min: 0, max: 0.2, noNaN: true }),
        fc.integer({ min: 0, max: 30 }),
        fc.integer({ min: 0, max: 40_000 }),
        fc.integer({ min: 0, max: 40_000 }),
        fc.constantFrom(536, 1460, 9000),
        (seed, drop, duplicate, reorder, jitterMs, sizeAB, sizeBA, mss) => {
          // FIN-WAIT-2's idle limit is raised: under 15% loss an RTO backed off past 60 s is legitimate,
          // and the default (Linux's tcp_fin_timeout) would then end a half-closed connection that is still live.
          const cfg: TcpConfig = { sendBufferBytes: 16 * 1024, recvBufferBytes: 24 * 1024, oooBytes: 16 * 1024, timeWaitMs: 2000, finWait2TimeoutMs: 600_000 };
          const net = new Network({ drop, duplicate, reorder, delayMs: 2, jitterMs }, seed, mss);
          const ra = new Recorder();
          const rb = new Recorder();
          net.listener = { config: cfg, handlers: ra };
          const dataAB = pattern(sizeAB, 1); // A (us) -> B (guest)
          const dataBA = pattern(sizeBA, 2);
          const pumpB = pumpInto(() => net.b, rb, dataBA);
          const pumpA = pumpInto(() => net.a!, ra, dataAB);
          rb.onConnect = () => { rb.connected = true; pumpB(); };
          net.b = TcpConnection.connect(net.hostB, cfg, MIRROR, rb);
          // A starts writing once it exists (accepted on B's SYN).
          const ok = net.run(() => {
            if (net.a !== undefined && !('started' in ra)) { (ra as unknown as { started: boolean }).started = true; pumpA(); }
            return ra.closed !== null && rb.closed !== null && net.a!.state === 'CLOSED' && net.b.state === 'CLOSED';
          }, 3_000_000);
          expect(ok).toBe(true);
          expect(ra.data()).toEqual(dataBA);
          expect(rb.data()).toEqual(dataAB);
          expect(ra.ended && rb.ended).toBe(true);
          // A side whose last FIN or ACK outlived the peer's TIME-WAIT is reset by the peer's stack
          // (RFC 9293 §3.10.7.1), after every byte and the end of stream were delivered.
          expect(ra.closed === 'closed' || (ra.closed === 'reset' && rb.closed === 'closed')).toBe(true);
          expect(rb.closed === 'closed' || (rb.closed === 'reset' && ra.closed === 'closed')).toBe(true);
          expect(ra.closeCount + rb.closeCount).toBe(2);
          expect(net.hostA.releasedCount).toBe(1);
          expect(net.hostB.releasedCount).toBe(1);
        },
      ),
      { numRuns: 40 },
    );
  });
});

describe('TCP segmentation offload (segmentOffloadBytes)', () => {
  it('sends new data in whole-MSS super-segments, and every byte still arrives once, in order, over a lossy link (property)', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 0, max: 2 ** 31 - 1 }),
        fc.double({ min: 0, max: 0.1, noNaN: true }),
        fc.double({ min: 0, max: 0.1, noNaN: true }),
        fc.integer({ min: 1, max: 60_000 }),
        fc.constantFrom(536, 1460),
        fc.constantFrom(8_000, 30_000, 65_455),
        (seed, drop, reorder, size, mss, offload) => {
          const base: TcpConfig = { sendBufferBytes: 128 * 1024, recvBufferBytes: 128 * 1024, oooBytes: 64 * 1024, timeWaitMs: 2000, finWait2TimeoutMs: 600_000 };
          const ours: TcpConfig = { ...base, segmentOffloadBytes: offload };
          const net = new Network({ drop, duplicate: 0, reorder, delayMs: 2, jitterMs: 3 }, seed, mss);
          const payloads: number[] = [];
          const ends: number[] = [];
          let firstSeq: number | undefined;
          const carry = net.hostA.onTransmit!;
          net.hostA.onTransmit = (s) => {
            if (s.payload.length > 0) {
              firstSeq ??= s.seq;
              payloads.push(s.payload.length);
              ends.push((s.seq - firstSeq + s.payload.length) >>> 0);
            }
            carry(s);
          };
          const ra = new Recorder();
          const rb = new Recorder();
          net.listener = { config: ours, handlers: ra };
          const data = pattern(size, 3);
          const pumpA = pumpInto(() => net.a!, ra, data);
          const pumpB = pumpInto(() => net.b, rb, new Uint8Array(0));
          rb.onConnect = () => { rb.connected = true; pumpB(); };
          net.b = TcpConnection.connect(net.hostB, base, MIRROR, rb);
          const ok = net.run(() => {
            if (net.a !== undefined && !('started' in ra)) { (ra as unknown as { started: boolean }).started = true; pumpA(); }
            return ra.closed !== null && rb.closed !== null;
          }, 3_000_000);
          expect(ok).toBe(true);
          expect(rb.data()).toEqual(data);
          // The segment size is the MSS less the timestamp option both sides negotiated.
          const smss = mss - 12;
          expect(Math.max(...payloads)).toBeLessThanOrEqual(offload);
          // A super-segment is a whole number of segments, but for the one that ends the data.
          payloads.forEach((p, i) => {
            if (p > smss && ends[i] !== size) expect(p % smss).toBe(0);
          });
          // Without loss, a transfer of several segments leaves in fewer, larger ones.
          if (drop === 0 && size > 4 * offload) expect(payloads.some((p) => p > smss)).toBe(true);
        },
      ),
      { numRuns: 40 },
    );
  });

  it.each([
    [0, 1448],
    [65_455, Math.floor(65_455 / 1448) * 1448],
  ])('with segmentOffloadBytes %i, a 200 kB transfer leaves in segments of at most %i bytes (and reaches that size)', (offload, largest) => {
    const base: TcpConfig = { sendBufferBytes: 256 * 1024, recvBufferBytes: 256 * 1024, oooBytes: 64 * 1024, timeWaitMs: 2000 };
    const net = new Network({ drop: 0, duplicate: 0, reorder: 0, delayMs: 2, jitterMs: 0 }, 5, 1460);
    const payloads: number[] = [];
    const carry = net.hostA.onTransmit!;
    net.hostA.onTransmit = (s) => {
      if (s.payload.length > 0) payloads.push(s.payload.length);
      carry(s);
    };
    const ra = new Recorder();
    const rb = new Recorder();
    net.listener = { config: { ...base, segmentOffloadBytes: offload }, handlers: ra };
    const data = pattern(200_000, 4);
    const pumpA = pumpInto(() => net.a!, ra, data);
    const pumpB = pumpInto(() => net.b, rb, new Uint8Array(0));
    rb.onConnect = () => { rb.connected = true; pumpB(); };
    net.b = TcpConnection.connect(net.hostB, base, MIRROR, rb);
    net.run(() => {
      if (net.a !== undefined && !('started' in ra)) { (ra as unknown as { started: boolean }).started = true; pumpA(); }
      return ra.closed !== null && rb.closed !== null;
    }, 3_000_000);
    expect(rb.data()).toEqual(data);
    expect(Math.max(...payloads)).toBe(largest);
  });
});
