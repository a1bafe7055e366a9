import { describe, it, expect } from 'vitest';
import fc from 'fast-check';
import { Reassembler, type ReassemblyLimits } from '../../netstack/reassembly.js';
import { fragmentPlan, parseIpv4, emitIpv4Header, IPPROTO_UDP, type Ipv4Repr } from '../../netstack/ipv4.js';
import { emitUdp, parseUdp } from '../../netstack/udp.js';
import { ParseError } from '../../netstack/errors.js';
import { TimerWheel } from '../../netstack/timer-wheel.js';
import { ManualClock } from '../../netstack/clock.js';
import { reasonOf } from '../support/wire-helpers.js';

const LIMITS: ReassemblyLimits = { maxBytes: 1 << 20, maxDatagrams: 8, timeoutMs: 30_000 };

function setup(limits: Partial<ReassemblyLimits> = {}) {
  const clock = new ManualClock(0);
  const wheel = new TimerWheel(clock, 1, 4096);
  const r = new Reassembler({ ...LIMITS, ...limits }, wheel);
  const expired: string[] = [];
  r.onExpire = (reason, d) => expired.push(`${reason} id=${d.id} first=${d.hadFirstFragment}`);
  return { clock, wheel, r, expired };
}

/** A fragment as parseIpv4 would give it (the reassembler only reads the repr). */
function frag(offset: number, data: Uint8Array | number[], more: boolean, id = 7, src = 0x0a000001): Ipv4Repr {
  return {
    src, dst: 0x0a000002, protocol: IPPROTO_UDP, ttl: 64, tos: 0, id,
    dontFragment: false, moreFragments: more, fragmentOffset: offset, headerLength: 20,
    payload: data instanceof Uint8Array ? data : Uint8Array.from(data),
  };
}

function piecesOf(payload: Uint8Array, mtu: number, id = 7): Ipv4Repr[] {
  return fragmentPlan(payload.length, mtu).map((p) => frag(p.offset, payload.subarray(p.offset, p.offset + p.length), p.more, id));
}

function bytes(n: number, seed = 1): Uint8Array {
  return Uint8Array.from({ length: n }, (_, i) => (i * 31 + seed) & 0xff);
}

function expectClean(s: ReturnType<typeof setup>): void {
  expect(s.r.datagrams).toBe(0);
  expect(s.r.bufferedBytes).toBe(0);
  expect(s.wheel.size).toBe(0);
}

describe('Reassembler (RFC 791 / RFC 815)', () => {
  it('reassembles in order, returns a fresh copy, and leaves no state behind', () => {
    const s = setup();
    const payload = bytes(3008);
    const [a, b, c] = piecesOf(payload, 1500);
    expect(s.r.push(a!)).toBeNull();
    expect(s.r.push(b!)).toBeNull();
    expect(s.r.datagrams).toBe(1);
    expect(s.r.bufferedBytes).toBe(2960);
    expect(s.wheel.size).toBe(1);
    const whole = s.r.push(c!);
    if (!(whole instanceof Uint8Array)) throw new Error(String(whole));
    expect([...whole]).toEqual([...payload]);
    expect(whole.buffer).not.toBe(payload.buffer);
    expectClean(s);
  });

  it('reassembles any order with exact duplicates mixed in (property)', () => {
    fc.assert(fc.property(
      fc.integer({ min: 1, max: 9000 }), fc.integer({ min: 68, max: 1500 }), fc.infiniteStream(fc.nat()), fc.array(fc.nat(), { maxLength: 5 }),
      (len, mtu, randomness, dupPicks) => {
        const payload = bytes(len, len);
        let pieces = piecesOf(payload, mtu);
        if (pieces.length === 1) pieces = piecesOf(payload, 68); // make it a real fragment train
        if (pieces.length === 1) return; // < 49 bytes: cannot be fragmented
        for (const d of dupPicks) pieces.push(pieces[d % pieces.length]!);
        // Fisher-Yates with the generated stream
        const it = randomness[Symbol.iterator]();
        for (let i = pieces.length - 1; i > 0; i--) {
          const j = it.next().value % (i + 1);
          [pieces[i], pieces[j]] = [pieces[j]!, pieces[i]!];
        }
        const s = setup({ maxFragmentsPerDatagram: 2048 });
        let result: ReturnType<Reassembler['push']> = null;
        for (const p of pieces) {
          const out = s.r.push(p);
          if (out === null) continue;
          // Duplicates after completion start a new datagram: only the first completion counts.
          if (result === null) result = out;
        }
        if (!(result instanceof Uint8Array)) throw new Error(`not reassembled: ${String(result)}`);
        expect(result.length).toBe(len);
        expect(result).toEqual(payload);
      },
    ), { numRuns: 100 });
  });

  it('passes a non-fragment through as a copy', () => {
    const s = setup();
    const p = frag(0, [1, 2, 3], false);
    const out = s.r.push(p);
    expect(out).toEqual(Uint8Array.from([1, 2, 3]));
    expect(out).not.toBe(p.payload);
    expectClean(s);
  });

  it('keeps datagrams apart by (src, dst, protocol, id)', () => {
    const s = setup();
    expect(s.r.push(frag(0, bytes(8, 1), true, 1))).toBeNull();
    expect(s.r.push(frag(0, bytes(8, 2), true, 2))).toBeNull();
    expect(s.r.push(frag(0, bytes(8, 3), true, 1, 0x0a000009))).toBeNull();
    expect(s.r.push({ ...frag(0, bytes(8, 4), true, 1), protocol: 1 })).toBeNull();
    expect(s.r.datagrams).toBe(4);
    expect(s.r.push(frag(8, [9], false, 2))).toEqual(Uint8Array.from([...bytes(8, 2), 9]));
    expect(s.r.datagrams).toBe(3);
  });

  it('drops the whole datagram on a partial overlap (frag:overlap)', () => {
    const s = setup();
    expect(s.r.push(frag(0, bytes(16), true))).toBeNull();
    expect(s.r.push(frag(32, bytes(16), true))).toBeNull();
    expect(reasonOf(s.r.push(frag(8, bytes(16), true)))).toBe('frag:overlap'); // overlaps [0,16)
    expectClean(s);
    expect(s.r.push(frag(0, bytes(16), true))).toBeNull();
    expect(reasonOf(s.r.push(frag(8, bytes(8), true)))).toBe('frag:overlap'); // inside [0,16)
    expect(s.r.push(frag(16, bytes(16), true))).toBeNull(); // a fresh datagram
    expect(reasonOf(s.r.push(frag(8, bytes(16), true)))).toBe('frag:overlap'); // overlaps the next one
    expectClean(s);
  });

  it('drops the datagram on a same-place fragment with different bytes, ignores identical ones', () => {
    const s = setup();
    expect(s.r.push(frag(0, [1, 2, 3, 4, 5, 6, 7, 8], true))).toBeNull();
    expect(s.r.push(frag(0, [1, 2, 3, 4, 5, 6, 7, 8], true))).toBeNull();
    expect(s.r.bufferedBytes).toBe(8);
    expect(reasonOf(s.r.push(frag(0, [1, 2, 3, 4, 5, 6, 7, 9], true)))).toBe('frag:overlap');
    expectClean(s);
  });

  it('refuses inconsistent lengths (frag:bad-length)', () => {
    const s = setup();
    expect(reasonOf(s.r.push(frag(0, bytes(12), true)))).toBe('frag:bad-length'); // not a multiple of 8
    expect(reasonOf(s.r.push(frag(8, [], true)))).toBe('frag:bad-length'); // empty non-last
    expect(s.r.push(frag(0, bytes(8), true))).toBeNull();
    expect(s.r.push(frag(16, bytes(4), false))).toBeNull(); // end = 20
    expect(reasonOf(s.r.push(frag(24, bytes(4), false)))).toBe('frag:bad-length'); // second, different end
    expectClean(s);
    expect(s.r.push(frag(16, bytes(4), false))).toBeNull();
    expect(reasonOf(s.r.push(frag(24, bytes(8), true)))).toBe('frag:bad-length'); // beyond the end
    expectClean(s);
    expect(s.r.push(frag(24, bytes(8), true))).toBeNull();
    expect(reasonOf(s.r.push(frag(16, bytes(4), false)))).toBe('frag:bad-length'); // end before held data
    expectClean(s);
  });

  it('accepts an empty last fragment that marks the end', () => {
    const s = setup();
    expect(s.r.push(frag(0, bytes(8), true))).toBeNull();
    expect(s.r.push(frag(8, [], false))).toEqual(bytes(8));
    expectClean(s);
  });

  it('refuses datagrams that would exceed 65535 bytes (frag:too-big, ping of death)', () => {
    const s = setup();
    expect(s.r.push(frag(0, bytes(8), true))).toBeNull();
    expect(reasonOf(s.r.push(frag(65512, bytes(8), false)))).toBe('frag:too-big'); // 65512 + 8 + 20 > 65535
    expectClean(s);
    expect(s.r.push(frag(65512, bytes(3), false))).toBeNull(); // exactly 65535 with the header
    expect(s.r.datagrams).toBe(1);
  });

  it('expires a datagram after timeoutMs from its first fragment, and tells why', () => {
    const s = setup({ timeoutMs: 30_000 });
    expect(s.r.push(frag(0, bytes(8), true, 1))).toBeNull();
    s.clock.advance(10_000);
    expect(s.r.push(frag(8, bytes(8), true, 1))).toBeNull(); // does not extend the deadline
    expect(s.r.push(frag(8, bytes(8), true, 2))).toBeNull();
    s.clock.advance(19_999); s.wheel.advance();
    expect(s.expired).toEqual([]);
    s.clock.advance(1); s.wheel.advance();
    expect(s.expired).toEqual(['frag:timeout id=1 first=true']);
    expect(s.r.datagrams).toBe(1);
    expect(s.r.bufferedBytes).toBe(8);
    s.clock.advance(10_000); s.wheel.advance();
    expect(s.expired).toEqual(['frag:timeout id=1 first=true', 'frag:timeout id=2 first=false']);
    expectClean(s);
    // A late fragment of an expired datagram starts over instead of completing it.
    expect(s.r.push(frag(16, [1], false, 1))).toBeNull();
  });

  it('refuses the newest datagram at maxDatagrams; older ones still complete', () => {
    const s = setup({ maxDatagrams: 2 });
    expect(s.r.push(frag(0, bytes(8), true, 1))).toBeNull();
    expect(s.r.push(frag(0, bytes(8), true, 2))).toBeNull();
    expect(reasonOf(s.r.push(frag(0, bytes(8), true, 3)))).toBe('frag:limit');
    expect(s.r.datagrams).toBe(2);
    expect(s.r.push(frag(8, [1], false, 1))).toBeInstanceOf(Uint8Array);
    expect(s.r.push(frag(0, bytes(8), true, 3))).toBeNull(); // room again
  });

  it('refuses fragments beyond maxBytes and drops their datagram; accounting stays exact', () => {
    const s = setup({ maxBytes: 40 });
    expect(s.r.push(frag(0, bytes(16), true, 1))).toBeNull();
    expect(s.r.push(frag(0, bytes(16), true, 2))).toBeNull();
    expect(s.r.bufferedBytes).toBe(32);
    expect(reasonOf(s.r.push(frag(16, bytes(16), true, 2)))).toBe('frag:limit');
    expect(s.r.bufferedBytes).toBe(16);
    expect(s.r.datagrams).toBe(1);
    expect(s.r.push(frag(16, bytes(8), false, 1))).toBeInstanceOf(Uint8Array); // 16 + 8 = 24 <= 40
    expectClean(s);
  });

  it('refuses fragments beyond maxFragmentsPerDatagram', () => {
    const s = setup({ maxFragmentsPerDatagram: 3 });
    for (let i = 0; i < 3; i++) expect(s.r.push(frag(i * 8, bytes(8), true))).toBeNull();
    expect(reasonOf(s.r.push(frag(24, bytes(8), true)))).toBe('frag:limit');
    expectClean(s);
  });

  it('clear() forgets everything and cancels every timer', () => {
    const s = setup();
    for (let id = 0; id < 5; id++) s.r.push(frag(0, bytes(8), true, id));
    expect(s.wheel.size).toBe(5);
    s.r.clear();
    expectClean(s);
    s.clock.advance(60_000); s.wheel.advance();
    expect(s.expired).toEqual([]);
  });

  it('never throws and never exceeds its limits under random fragments', () => {
    const arbFrag = fc.record({
      id: fc.nat({ max: 5 }), offset: fc.nat({ max: 200 }).map((n) => n * 8),
      len: fc.nat({ max: 64 }), more: fc.boolean(), seed: fc.nat({ max: 3 }),
    });
    fc.assert(fc.property(fc.array(fc.oneof(arbFrag, fc.nat({ max: 40_000 })), { maxLength: 100 }), (events) => {
      const s = setup({ maxBytes: 300, maxDatagrams: 3, maxFragmentsPerDatagram: 10 });
      for (const e of events) {
        if (typeof e === 'number') { s.clock.advance(e); s.wheel.advance(); continue; }
        s.r.push(frag(e.offset, bytes(e.len, e.seed), e.more, e.id));
        expect(s.r.bufferedBytes).toBeLessThanOrEqual(300);
        expect(s.r.datagrams).toBeLessThanOrEqual(3);
        expect(s.wheel.size).toBe(s.r.datagrams);
      }
      s.clock.advance(30_001); s.wheel.advance();
      expectClean(s);
    }), { numRuns: 300 });
  });
});

describe('UDP fragmented on output, reassembled on input', () => {
  it('round-trips a large datagram: checksum over the whole, emitted as IPv4 fragments', () => {
    fc.assert(fc.property(fc.integer({ min: 0, max: 20_000 }), fc.constantFrom(576, 1500, 9000), (len, mtu) => {
      const src = 0xc0a87f01; const dst = 0xc0a87f02;
      const payload = bytes(len, 3);
      const datagram = new Uint8Array(8 + len);
      emitUdp(datagram, 0, src, dst, 53, 40000, payload);
      const s = setup({ maxFragmentsPerDatagram: 2048 });
      let result: unknown = null;
      for (const piece of fragmentPlan(datagram.length, mtu)) {
        const packet = new Uint8Array(20 + piece.length);
        emitIpv4Header(packet, 0, {
          src, dst, protocol: IPPROTO_UDP, id: 0x4242, fragmentOffset: piece.offset, moreFragments: piece.more, payloadLength: piece.length,
        });
        packet.set(datagram.subarray(piece.offset, piece.offset + piece.length), 20);
        expect(packet.length).toBeLessThanOrEqual(mtu);
        const ip = parseIpv4(packet);
        if (ip instanceof ParseError) throw new Error(ip.reason);
        result = s.r.push(ip);
      }
      if (!(result instanceof Uint8Array)) throw new Error(String(result));
      const udp = parseUdp(result, src, dst);
      if (udp instanceof ParseError) throw new Error(udp.reason);
      expect(udp.payload).toEqual(payload);
    }), { numRuns: 30 });
  });
});
