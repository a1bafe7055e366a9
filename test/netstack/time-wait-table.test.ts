/**
 * The TIME-WAIT table's four-tuple key (netstack/tcp/time-wait.ts keyOf):
 * every distinct tuple gets its own record, IPv4 and IPv6 alike, and a tuple
 * differing in any one field finds nothing. The key is packed into a few
 * UTF-16 code units, so a packing slip (a dropped half of an address, a port
 * truncated) would make two connections share a record.
 */
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { ipv6, type IpAddress } from '../../netstack/addr.js';
import type { FourTuple } from '../../netstack/api.js';
import { ManualClock } from '../../netstack/clock.js';
import { TimerWheel } from '../../netstack/timer-wheel.js';
import { TimeWaitTable, type TimeWaitFields } from '../../netstack/tcp/time-wait.js';

function table(max = 1_000): TimeWaitTable {
  const clock = new ManualClock();
  return new TimeWaitTable(max, 60_000, clock, new TimerWheel(clock), () => {});
}

function fields(tuple: FourTuple, n: number): TimeWaitFields {
  return { tuple, sndNxt: n, rcvNxt: n + 1, window: 100, tsOk: false, tsOffset: 0, tsRecent: 0, tsRecentAt: 0 };
}

const v4 = fc.integer({ min: 0, max: 0xffffffff });
const port = fc.integer({ min: 0, max: 0xffff });
const group = fc.integer({ min: 0, max: 0xffff });
const v6 = fc.tuple(group, group, group, group, group, group, group, group).map((g) => ipv6(...g));
const tuple4 = fc.record({ src: v4, srcPort: port, dst: v4, dstPort: port });
const tuple6 = fc.record({ src: v6, srcPort: port, dst: v6, dstPort: port });

const id = (t: FourTuple): string => `${String(t.src)}|${t.srcPort}|${String(t.dst)}|${t.dstPort}`;

describe('TIME-WAIT table keys', () => {
  it('property: distinct four-tuples (IPv4 and IPv6 mixed) each find their own record, and only theirs', () => {
    fc.assert(
      fc.property(fc.array(fc.oneof(tuple4, tuple6) as fc.Arbitrary<FourTuple>, { minLength: 1, maxLength: 60 }), (tuples) => {
        const t = table();
        const unique = new Map(tuples.map((x) => [id(x), x]));
        let n = 0;
        const recs = new Map<string, number>();
        for (const [k, x] of unique) {
          t.add(fields(x, n));
          recs.set(k, n);
          n += 10;
        }
        expect(t.size).toBe(unique.size);
        for (const [k, x] of unique) expect(t.get(x.src, x.srcPort, x.dst, x.dstPort)?.sndNxt).toBe(recs.get(k));
      }),
    );
  });

  it('property: a tuple that differs from a held one in one field (either half of an address, or a port) finds nothing', () => {
    const flip = (a: IpAddress, bit: number): IpAddress => (typeof a === 'number' ? (a ^ (1 << bit)) >>> 0 : a);
    fc.assert(
      fc.property(tuple4, fc.integer({ min: 0, max: 31 }), fc.integer({ min: 0, max: 15 }), (x, addrBit, portBit) => {
        const t = table();
        t.add(fields(x, 1));
        const others: FourTuple[] = [
          { ...x, src: flip(x.src, addrBit) },
          { ...x, dst: flip(x.dst, addrBit) },
          { ...x, srcPort: x.srcPort ^ (1 << portBit) },
          { ...x, dstPort: x.dstPort ^ (1 << portBit) },
          { src: x.dst, srcPort: x.dstPort, dst: x.src, dstPort: x.srcPort },
        ];
        for (const o of others) if (id(o) !== id(x)) expect(t.get(o.src, o.srcPort, o.dst, o.dstPort)).toBeUndefined();
        expect(t.get(x.src, x.srcPort, x.dst, x.dstPort)).toBeDefined();
      }),
    );
  });
});
