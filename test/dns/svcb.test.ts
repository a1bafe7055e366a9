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
});
