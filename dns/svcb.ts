/**
 * SVCB and HTTPS record data (RFC 9460 section 2.2), the wire format only:
 * dns-packet 5.6 does not know types 64/65 and hands their RDATA over raw.
 *
 *   SvcPriority (u16) | TargetName (uncompressed domain name) |
 *   SvcParams: key (u16), length (u16), value; keys strictly increasing
 *
 * parseSvcb validates and never throws (a malformed record is an error
 * value); emitSvcb writes what parseSvcb read, so parse(emit(r)) is r and
 * emit(parse(b)) is b for every b that parses. Values are views of the input.
 */

export const SVC_KEY = Object.freeze({
  mandatory: 0,
  alpn: 1,
  noDefaultAlpn: 2,
  port: 3,
  ipv4hint: 4,
  ech: 5,
  ipv6hint: 6,
});

export interface SvcParam {
  readonly key: number;
  readonly value: Uint8Array;
}

export interface SvcbRecord {
  /** 0 is AliasMode, anything else ServiceMode (RFC 9460 2.4). */
  readonly priority: number;
  /** TargetName's labels as raw bytes; [] is the root ("."). */
  readonly target: readonly Uint8Array[];
  readonly params: readonly SvcParam[];
}

export class SvcbError {
  constructor(readonly reason: string) {}
}

const MAX_NAME_WIRE = 255;

export function parseSvcb(rdata: Uint8Array): SvcbRecord | SvcbError {
  if (rdata.length < 3) return new SvcbError('shorter than priority and target');
  const view = new DataView(rdata.buffer, rdata.byteOffset, rdata.byteLength);
  const priority = view.getUint16(0);
  const target: Uint8Array[] = [];
  let off = 2;
  for (;;) {
    if (off >= rdata.length) return new SvcbError('target name runs past the end');
    const len = rdata[off]!;
    if (len === 0) {
      off++;
      break;
    }
    if (len > 63) return new SvcbError('target name is compressed or has a label over 63 octets'); // RFC 9460 2.2: no compression
    if (off + 1 + len > rdata.length) return new SvcbError('target label runs past the end');
    target.push(rdata.subarray(off + 1, off + 1 + len));
    off += 1 + len;
    if (off - 2 + 1 > MAX_NAME_WIRE) return new SvcbError('target name over 255 octets');
  }
  const params: SvcParam[] = [];
  let previous = -1;
  while (off < rdata.length) {
    if (off + 4 > rdata.length) return new SvcbError('SvcParam header runs past the end');
    const key = view.getUint16(off);
    const len = view.getUint16(off + 2);
    if (key <= previous) return new SvcbError('SvcParamKeys are not strictly increasing');
    if (off + 4 + len > rdata.length) return new SvcbError(`SvcParam ${key} runs past the end`);
    params.push({ key, value: rdata.subarray(off + 4, off + 4 + len) });
    previous = key;
    off += 4 + len;
  }
  return { priority, target, params };
}

export function emitSvcb(r: SvcbRecord): Uint8Array {
  let size = 2 + 1;
  for (const l of r.target) size += 1 + l.length;
  for (const p of r.params) size += 4 + p.value.length;
  const out = new Uint8Array(size);
  const view = new DataView(out.buffer);
  view.setUint16(0, r.priority);
  let off = 2;
  for (const l of r.target) {
    out[off] = l.length;
    out.set(l, off + 1);
    off += 1 + l.length;
  }
  out[off++] = 0;
  for (const p of r.params) {
    view.setUint16(off, p.key);
    view.setUint16(off + 2, p.value.length);
    out.set(p.value, off + 4);
    off += 4 + p.value.length;
  }
  return out;
}

/** TargetName as lower-case text without the trailing dot; '' for the root. */
export function targetText(r: SvcbRecord): string {
  return r.target.map((l) => String.fromCharCode(...l).toLowerCase()).join('.');
}
