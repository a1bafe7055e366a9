import { formatIpv4 } from '../../../sni/ranges.js';
import { formatIpv6 } from '../../../sni/ranges6.js';

export const PUBLIC4 = 0x08080808; // 8.8.8.8

/** Every IPv6 form that carries IPv4 `v` (see sni/ranges6.ts embeddedIpv4). */
export function embeddedForms(v: number, other: number = PUBLIC4, low80 = 0n, teredoMid = 0n): { form: string; address: bigint }[] {
  const V = BigInt(v >>> 0);
  const O = BigInt(other >>> 0);
  const forms = [
    { form: 'ipv4-mapped', address: (0xffffn << 32n) | V },
    { form: 'ipv4-translated', address: (0xffffn << 48n) | V },
    { form: 'nat64', address: (0x64ff9bn << 96n) | V },
    { form: 'nat64-local', address: (0x64ff9b0001n << 80n) | V },
    { form: '6to4', address: (0x2002n << 112n) | (V << 80n) | (low80 & ((1n << 80n) - 1n)) },
    { form: 'teredo-server', address: (0x20010000n << 96n) | (V << 64n) | ((teredoMid & 0xffffffffn) << 32n) | (~O & 0xffffffffn) },
    { form: 'teredo-client', address: (0x20010000n << 96n) | (O << 64n) | ((teredoMid & 0xffffffffn) << 32n) | (~V & 0xffffffffn) },
  ];
  // ::0.0.0.0 and ::0.0.0.1 are IPv6's own :: and ::1 (tested separately).
  if (v >>> 0 > 1) forms.push({ form: 'ipv4-compatible', address: V });
  return forms;
}

/** Spellings a client might send for one address: canonical, uncompressed, upper case, leading zeros, dotted tail. */
export function spellings(a: bigint): string[] {
  const groups = Array.from({ length: 8 }, (_, i) => Number((a >> BigInt(112 - 16 * i)) & 0xffffn));
  const full = groups.map((g) => g.toString(16).padStart(4, '0')).join(':');
  const tail = formatIpv4(Number(a & 0xffffffffn));
  return [formatIpv6(a), full, full.toUpperCase(), groups.map((g) => g.toString(16)).join(':'), `${groups.slice(0, 6).map((g) => g.toString(16).padStart(4, '0')).join(':')}:${tail}`];
}

