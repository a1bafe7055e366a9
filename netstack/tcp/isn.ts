/**
 * Initial sequence numbers as RFC 6528 §3 asks: ISN = M + F(localip,
 * localport, remoteip, remoteport, secretkey), M a timer ticking every 4 µs,
 * F a keyed pseudorandom function of the four-tuple.
 *
 * The clock part makes the ISNs of successive incarnations of one four-tuple
 * increase, so that a peer still holding the old connection in TIME-WAIT
 * takes the new SYN (RFC 6191) and old duplicates fall outside the new
 * window; the keyed part keeps other four-tuples' numbers unguessable.
 *
 * F is HalfSipHash-2-4 (the 32-bit SipHash Linux uses as hsiphash) over the
 * three words of the four-tuple with a 64-bit key. netstack/ is pure (no
 * crypto module): the key comes from the injected random source, so a seeded
 * test replays exactly; the service passes a random source seeded from the
 * OS, and RFC 6528 only asks that the key be unknown to the attacker.
 */
import type { FourTuple } from '../api.js';

/** RFC 6528 §3: M ticks every 4 microseconds; the clock is in milliseconds. */
const M_TICKS_PER_MS = 250;

export class IsnGenerator {
  private readonly k0: number;
  private readonly k1: number;

  /** `random` returns uniform numbers in [0, 1): two draws make the key. */
  constructor(
    private readonly now: () => number,
    random: () => number,
  ) {
    this.k0 = Math.floor(random() * 0x100000000) >>> 0;
    this.k1 = Math.floor(random() * 0x100000000) >>> 0;
  }

  isn(t: FourTuple): number {
    const m = Math.floor(this.now() * M_TICKS_PER_MS);
    return (m + this.keyed(t)) >>> 0;
  }

  /** F(four-tuple, key): the part of the ISN an observer of other connections cannot predict. */
  keyed(t: FourTuple): number {
    const ports = ((t.srcPort << 16) | t.dstPort) >>> 0;
    if (typeof t.src === 'number') return halfSipHash24(this.k0, this.k1, t.src >>> 0, (t.dst as number) >>> 0, ports);
    // IPv6: the same function over all 36 bytes of the tuple (HalfSipHash takes any length; Linux hashes the whole tuple too).
    const words: number[] = [];
    for (const a of [t.src, t.dst as string]) for (let i = 0; i < 8; i += 2) words.push(((a.charCodeAt(i) << 16) | a.charCodeAt(i + 1)) >>> 0);
    words.push(ports);
    return halfSipHashWords(this.k0, this.k1, words);
  }
}

function rotl(x: number, b: number): number {
  return (x << b) | (x >>> (32 - b));
}

/** HalfSipHash-2-4 of three 32-bit words (12 bytes), 32-bit result. */
export function halfSipHash24(k0: number, k1: number, w0: number, w1: number, w2: number): number {
  return halfSipHashWords(k0, k1, [w0, w1, w2]);
}

/** HalfSipHash-2-4 of whole 32-bit words (little-endian message words as the reference reads them), 32-bit result. */
export function halfSipHashWords(k0: number, k1: number, words: readonly number[]): number {
  let v0 = k0 | 0;
  let v1 = k1 | 0;
  let v2 = (0x6c796765 ^ k0) | 0;
  let v3 = (0x74656462 ^ k1) | 0;
  const round = (): void => {
    v0 = (v0 + v1) | 0;
    v1 = rotl(v1, 5) ^ v0;
    v0 = rotl(v0, 16);
    v2 = (v2 + v3) | 0;
    v3 = rotl(v3, 8) ^ v2;
    v0 = (v0 + v3) | 0;
    v3 = rotl(v3, 7) ^ v0;
    v2 = (v2 + v1) | 0;
    v1 = rotl(v1, 13) ^ v2;
    v2 = rotl(v2, 16);
  };
  for (const m of [...words, ((words.length * 4) << 24) | 0]) {
    v3 ^= m;
    round();
    round();
    v0 ^= m;
  }
  v2 ^= 0xff;
  round();
  round();
  round();
  round();
  return (v1 ^ v3) >>> 0;
}
