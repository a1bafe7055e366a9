import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { emitSvcb, parseSvcb, SVC_KEY, SvcbError, targetText, type SvcbRecord } from '../../dns/svcb.js';
import { filterServiceRecord } from '../../dns/svcb-filter.js';

const hex = (s: string): Uint8Array => Uint8Array.from(Buffer.from(s.replace(/\s+/g, ''), 'hex'));

/** A well-formed record: labels 1..63 bytes within 255 octets, keys strictly increasing. */
const arbRecord: fc.Arbitrary<SvcbRecord> = fc
  .record({
    priority: fc.integer({ min: 0, max: 0xffff }),
    target: fc.array(fc.uint8Array({ minLength: 1, maxLength: 63 }), { maxLength: 3 }),
    params: fc.uniqueArray(fc.record({ key: fc.integer({ min: 0, max: 0xffff }), value: fc.uint8Array({ maxLength: 40 }) }), { selector: (p) => p.key, maxLength: 8 }),
  })
  .map((r) => ({ ...r, params: [...r.params].sort((a, b) => a.key - b.key) }));

describe('SVCB/HTTPS RDATA (RFC 9460 2.2)', () => {
  it('reads the RFC 9460 appendix D.2 ServiceMode example (alpn, ipv4hint, port)', () => {
    // "1 . alpn=h2,h3-19 ipv4hint=192.0.2.1 port=8080" style record, written out by hand.
    const rdata = hex('0001 00 0001 0009 02 6832 05 68332d3139 0003 0002 1f90 0004 0004 c0000201');
    const r = parseSvcb(rdata);
    expect(r).not.toBeInstanceOf(SvcbError);
    const rec = r as SvcbRecord;
    expect(rec.priority).toBe(1);
    expect(targetText(rec)).toBe('');
    expect(rec.params.map((p) => p.key)).toEqual([1, 3, 4]);
    expect(emitSvcb(rec)).toEqual(rdata);
  });

  it('refuses malformed data with a reason: compression, overruns, keys out of order or repeated', () => {
    expect(parseSvcb(hex('0001'))).toBeInstanceOf(SvcbError);
    expect((parseSvcb(hex('0001 c00c')) as SvcbError).reason).toMatch(/compressed/);
    expect((parseSvcb(hex('0001 05 6162')) as SvcbError).reason).toMatch(/past the end/);
    expect((parseSvcb(hex('0001 00 0003 0002 1f90 0001 0003 026832')) as SvcbError).reason).toMatch(/increasing/);
    expect((parseSvcb(hex('0001 00 0001 0003 026832 0001 0003 026833')) as SvcbError).reason).toMatch(/increasing/);
    expect((parseSvcb(hex('0001 00 0001 0009 02')) as SvcbError).reason).toMatch(/past the end/);
    expect((parseSvcb(hex('0001 00 00')) as SvcbError).reason).toMatch(/header/);
  });

  it('never throws on arbitrary bytes, and whatever parses emits back to the same bytes (property)', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 300 }), (bytes) => {
        const r = parseSvcb(bytes);
        if (!(r instanceof SvcbError)) expect(emitSvcb(r)).toEqual(bytes);
      }),
      { numRuns: 2000 },
    );
  });

  it('round-trips every well-formed record (property)', () => {
    fc.assert(
      fc.property(arbRecord, (rec) => {
        const back = parseSvcb(emitSvcb(rec));
        expect(back).not.toBeInstanceOf(SvcbError);
        expect(back).toEqual({ priority: rec.priority, target: rec.target, params: rec.params });
      }),
    );
  });
});

describe('filterServiceRecord', () => {
  const rec = (params: [number, number[]][], priority = 1): SvcbRecord => ({ priority, target: [], params: params.map(([key, v]) => ({ key, value: Uint8Array.from(v) })) });

  it('never lets ech, ipv6hint, unknown keys or an unpinned ipv4hint through, and never throws (property)', () => {
    fc.assert(
      fc.property(arbRecord, fc.array(fc.ipV4(), { maxLength: 3 }), (r, pinned) => {
        const f = filterServiceRecord(r, pinned);
        expect(f.echRemoved).toBe(r.params.some((p) => p.key === SVC_KEY.ech));
        if (f.record === null) return;
        for (const p of f.record.params) expect([0, 1, 2, 3, 4]).toContain(p.key);
        const hint = f.record.params.find((p) => p.key === SVC_KEY.ipv4hint);
        if (hint !== undefined) {
          for (let i = 0; i < hint.value.length; i += 4) expect(pinned).toContain([...hint.value.subarray(i, i + 4)].join('.'));
        }
        expect(parseSvcb(emitSvcb(f.record))).toEqual(f.record); // still a valid record
      }),
      { numRuns: 2000 },
    );
  });

  it('AliasMode keeps its target and loses its params', () => {
    const f = filterServiceRecord({ priority: 0, target: [Uint8Array.of(0x61)], params: [{ key: SVC_KEY.ech, value: Uint8Array.of(1) }] }, []);
    expect(f).toEqual({ record: { priority: 0, target: [Uint8Array.of(0x61)], params: [] }, echRemoved: true });
  });

  it('drops a record whose kept values are malformed or whose mandatory key was removed', () => {
    expect(filterServiceRecord(rec([[SVC_KEY.port, [1]]]), []).record).toBeNull();
    expect(filterServiceRecord(rec([[SVC_KEY.alpn, [3, 0x68, 0x32]]]), []).record).toBeNull();
    expect(filterServiceRecord(rec([[SVC_KEY.ipv4hint, [1, 2, 3]]]), ['1.2.3.4']).record).toBeNull();
    expect(filterServiceRecord(rec([[SVC_KEY.mandatory, [0, 4]], [SVC_KEY.ipv4hint, [1, 2, 3, 4]]]), []).record).toBeNull();
    expect(filterServiceRecord(rec([[SVC_KEY.mandatory, [0, 4]], [SVC_KEY.ipv4hint, [1, 2, 3, 4]]]), ['1.2.3.4']).record).not.toBeNull();
  });

  // Issue 19: on a guest network with IPv6, ipv6hint is filtered exactly as ipv4hint is.
  const v6 = (...groups: number[]): number[] => groups.flatMap((g) => [g >> 8, g & 0xff]);
  const PINNED6 = v6(0x2606, 0x4700, 0, 0, 0, 0, 0, 0x10);
  const OTHER6 = v6(0x2606, 0x4700, 0, 0, 0, 0, 0, 0x99);

  it('IPv6 guest: ipv6hint cut to pinned addresses (any spelling of the pin), removed when none is; IPv4 guest: removed', () => {
    const both = rec([[SVC_KEY.ipv4hint, [203, 0, 113, 10, 198, 51, 100, 9]], [SVC_KEY.ipv6hint, [...OTHER6, ...PINNED6]]]);
    const pins = ['203.0.113.10', '2606:4700:0000:0:0:0:0:0010'];
    const on = filterServiceRecord(both, pins, true).record!;
    expect(on.params.map((p) => [p.key, [...p.value]])).toEqual([
      [SVC_KEY.ipv4hint, [203, 0, 113, 10]],
      [SVC_KEY.ipv6hint, PINNED6],
    ]);
    expect(filterServiceRecord(both, ['203.0.113.10'], true).record!.params.map((p) => p.key)).toEqual([SVC_KEY.ipv4hint]);
    expect(filterServiceRecord(both, pins, false).record!.params.map((p) => p.key)).toEqual([SVC_KEY.ipv4hint]);
    // An IPv4 pin never keeps an IPv6 hint (the IPv4-mapped form of a pin is not that pin), nor the reverse.
    expect(filterServiceRecord(rec([[SVC_KEY.ipv6hint, v6(0, 0, 0, 0, 0, 0xffff, 0xcb00, 0x710a)]]), ['203.0.113.10'], true).record!.params).toEqual([]);
  });

  it('IPv6 guest: a malformed ipv6hint drops the record; a mandatory ipv6hint with nothing pinned drops it', () => {
    expect(filterServiceRecord(rec([[SVC_KEY.ipv6hint, PINNED6.slice(1)]]), ['2606:4700::10'], true).record).toBeNull();
    expect(filterServiceRecord(rec([[SVC_KEY.mandatory, [0, 6]], [SVC_KEY.ipv6hint, OTHER6]]), ['2606:4700::10'], true).record).toBeNull();
    expect(filterServiceRecord(rec([[SVC_KEY.mandatory, [0, 6]], [SVC_KEY.ipv6hint, PINNED6]]), ['2606:4700::10'], true).record).not.toBeNull();
    expect(filterServiceRecord(rec([[SVC_KEY.mandatory, [0, 6]], [SVC_KEY.ipv6hint, PINNED6]]), ['2606:4700::10'], false).record).toBeNull();
  });

  it('IPv6 guest: never lets an unpinned hint of either family through (property)', () => {
    fc.assert(
      fc.property(arbRecord, fc.array(fc.oneof(fc.ipV4(), fc.ipV6()), { maxLength: 4 }), (r, pinned) => {
        const f = filterServiceRecord(r, pinned, true);
        if (f.record === null) return;
        for (const p of f.record.params) expect([0, 1, 2, 3, 4, 6]).toContain(p.key);
        const norm = (t: string): string => (t.includes(':') ? new URL(`http://[${t}]`).hostname : t);
        const pins = new Set(pinned.map(norm));
        for (const p of f.record.params.filter((x) => x.key === SVC_KEY.ipv4hint || x.key === SVC_KEY.ipv6hint)) {
          const size = p.key === SVC_KEY.ipv4hint ? 4 : 16;
          for (let i = 0; i < p.value.length; i += size) {
            const b = [...p.value.subarray(i, i + size)];
            const text = size === 4 ? b.join('.') : norm(Array.from({ length: 8 }, (_, g) => ((b[2 * g]! << 8) | b[2 * g + 1]!).toString(16)).join(':'));
            expect(pins.has(text)).toBe(true);
          }
        }
      }),
      { numRuns: 2000 },
    );
  });
});
