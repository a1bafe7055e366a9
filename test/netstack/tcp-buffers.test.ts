import { describe, it, expect } from 'vitest';
import fc from 'fast-check';
import { SendBuffer } from '../../netstack/tcp/send-buffer.js';
import { OooRanges, RecvRing } from '../../netstack/tcp/recv-buffer.js';
import { RttEstimator } from '../../netstack/tcp/rtt.js';
import { seqAdd } from '../../netstack/tcp/seq.js';

describe('SendBuffer', () => {
  it('never exceeds its capacity and returns exactly the bytes written (model check)', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 300 }),
        fc.array(fc.oneof(fc.uint8Array({ maxLength: 200 }).map((d) => ({ w: d })), fc.nat(300).map((n) => ({ c: n }))), { maxLength: 60 }),
        (cap, ops) => {
          const b = new SendBuffer(cap);
          let model: number[] = [];
          for (const op of ops) {
            if ('w' in op) {
              const n = b.write(op.w);
              expect(n).toBe(Math.min(op.w.length, cap - model.length));
              model.push(...op.w.subarray(0, n));
            } else {
              const n = Math.min(op.c, model.length);
              b.consume(n);
              model = model.slice(n);
            }
            expect(b.length).toBe(model.length);
            expect(b.length).toBeLessThanOrEqual(cap);
            const out = new Uint8Array(model.length);
            b.copyOut(0, out, 0, model.length);
            expect([...out]).toEqual(model);
          }
        },
      ),
    );
  });
});

describe('RecvRing + OooRanges', () => {
  it('reassembles any arrival order into the original stream within the bounds', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 0, max: 0xffffffff }),
        fc.array(fc.integer({ min: 1, max: 50 }), { minLength: 1, maxLength: 30 }),
        fc.infiniteStream(fc.nat()),
        fc.integer({ min: 20, max: 2000 }),
        (isn, sizes, picks, oooBound) => {
          const total = sizes.reduce((a, b) => a + b, 0);
          const stream = new Uint8Array(total).map((_, i) => (i * 13 + 5) & 0xff);
          const segs: [number, number][] = [];
          let o = 0;
          for (const s of sizes) {
            segs.push([o, s]);
            o += s;
          }
          const ring = new RecvRing(total);
          const ooo = new OooRanges(oooBound, 8);
          let rcvNxt = isn;
          const got: number[] = [];
          const it = picks[Symbol.iterator]();
          const pending = segs.slice();
          let guard = 0;
          while (got.length < total && guard++ < 10_000) {
            const [off, len] = pending[it.next().value % pending.length]!;
            const seq = seqAdd(isn, off);
            const rel = (seq - rcvNxt) | 0;
            if (rel + len <= 0) continue;
            if (rel <= 0) {
              const data = stream.subarray(off - rel, off + len);
              ring.writeAt(0, data);
              ring.commit(data.length);
              rcvNxt = seqAdd(rcvNxt, data.length);
              const next = ooo.advance(rcvNxt);
              const extra = (next - rcvNxt) | 0;
              if (extra > 0) {
                ring.commit(extra);
                rcvNxt = next;
              }
            } else if (ooo.insert(seq, seqAdd(seq, len))) {
              ring.writeAt(rel, stream.subarray(off, off + len));
            }
            expect(ooo.bytes).toBeLessThanOrEqual(oooBound);
            expect(ooo.count).toBeLessThanOrEqual(8);
            while (ring.length > 0) {
              const v = ring.peek();
              got.push(...v);
              ring.consume(v.length);
            }
          }
          expect(got).toEqual([...stream]);
        },
      ),
      { numRuns: 300 },
    );
  });
});

describe('RttEstimator (RFC 6298)', () => {
  it('follows §2 with a 200 ms floor and doubles on backoff up to the ceiling', () => {
    const r = new RttEstimator(200, 120_000, 1000);
    expect(r.rto).toBe(1000);
    r.sample(100); // srtt 100, rttvar 50 -> 300
    expect(r.rto).toBe(300);
    r.sample(100); // rttvar 37.5 -> 250
    expect(r.rto).toBe(250);
    for (let i = 0; i < 20; i++) r.backoff();
    expect(r.rto).toBe(120_000);
    r.sample(1);
    expect(r.rto).toBeGreaterThanOrEqual(200);
    expect(r.rto).toBeLessThan(300);
  });
});

describe('ring memory grows on demand', () => {
  // An idle connection must not hold its full buffers: 10,000 idle flows at
  // 1 MiB + 1 MiB each were 680 KiB of RSS apiece before rings grew lazily.
  it('a fresh ring holds no memory; it grows by doubling from 4 KiB, never past capacity, and keeps its bytes', () => {
    const send = new SendBuffer(1 << 20);
    const recv = new RecvRing(1 << 20);
    expect(send.allocated).toBe(0);
    expect(recv.allocated).toBe(0);
    const data = Uint8Array.from({ length: 10_000 }, (_, i) => i & 0xff);
    send.write(data.subarray(0, 10));
    expect(send.allocated).toBe(4096);
    send.write(data.subarray(10));
    expect(send.allocated).toBe(10_000); // the doubling (8192) would not hold 10,000 bytes
    const out = new Uint8Array(10_000);
    send.copyOut(0, out, 0, 10_000);
    expect(out).toEqual(data);
    // Out-of-order bytes far beyond the in-order tail grow the receive ring to reach them.
    recv.writeAt(500_000, data.subarray(0, 100));
    expect(recv.allocated).toBe(500_100);
    recv.writeAt(0, data.subarray(0, 10));
    recv.commit(10);
    expect(Array.from(recv.peek())).toEqual(Array.from(data.subarray(0, 10)));
    const huge = new SendBuffer(8192);
    huge.write(new Uint8Array(100_000));
    expect(huge.allocated).toBe(8192);
    expect(huge.length).toBe(8192);
  });
});
