/**
 * DHCP / BOOTP wire format (RFC 951, RFC 2131 §2-§3, RFC 2132, RFC 3396, RFC 3397).
 *
 * Only bytes in, meaning out and back: no decisions (those are in dhcp-server.ts).
 *
 *   parseDhcp(bytes)            -> DhcpMessage | ParseError   (never throws)
 *   dhcpEncodedLength(message)  -> bytes emitDhcp will write
 *   emitDhcp(message, buf, off) -> bytes written
 *   encodeDhcp(message)         -> a fresh Uint8Array (at least 300 bytes)
 *
 * Options are kept as an ordered list of { code, data }. Choices made here:
 *  - A code that appears several times is one option whose data is the
 *    concatenation (RFC 3396 §5 "long options"); emit splits data longer than
 *    255 bytes the same way. So a parsed message never holds a code twice.
 *  - Option overload (52, RFC 2132 §9.3) is SUPPORTED on parse: options found in
 *    `file` (value 1 or 3) and then `sname` (2 or 3) are appended after those of
 *    the options field, the RFC 3396 order. The 52 option itself is consumed
 *    (not listed). Emit never overloads: the options field just grows.
 *  - A missing End (255) is tolerated when the area simply runs out; an option
 *    whose length runs past the area is 'dhcp:option-truncated'.
 *  - `data` of parsed options are views into the input unless concatenated:
 *    copy what you keep beyond the input's life.
 */
import { readIPv4, readMac, writeIPv4, writeMac, type IPv4, type Mac } from './addr.js';
import { ParseError } from './errors.js';

export const DHCP_SERVER_PORT = 67;
export const DHCP_CLIENT_PORT = 68;

export const BOOTREQUEST = 1;
export const BOOTREPLY = 2;
export const HTYPE_ETHERNET = 1;

/** RFC 2131 §2 flags: the one defined bit asks for broadcast replies. */
export const FLAG_BROADCAST = 0x8000;

/** op(1) htype(1) hlen(1) hops(1) xid(4) secs(2) flags(2) 4×addr(16) chaddr(16) sname(64) file(128). */
export const BOOTP_FIXED_SIZE = 236;
const MAGIC_COOKIE = 0x63825363; // RFC 2131 §3: 99.130.83.99
const OPTIONS_OFFSET = BOOTP_FIXED_SIZE + 4;
/**
 * RFC 951 messages are 300 bytes (64-byte vendor area) and some BOOTP/DHCP
 * clients and relays drop anything shorter (RFC 1542 §2.1), so emit pads to it.
 */
export const BOOTP_MIN_SIZE = 300;

const OFF_CHADDR = 28;
const OFF_SNAME = 44;
const OFF_FILE = 108;
const SNAME_SIZE = 64;
const FILE_SIZE = 128;
const CHADDR_SIZE = 16;

/** Option codes used by Moat (RFC 2132 unless noted). */
export const Opt = {
  Pad: 0,
  SubnetMask: 1,
  Router: 3,
  DnsServers: 6,
  Hostname: 12,
  DomainName: 15,
  InterfaceMtu: 26,
  BroadcastAddress: 28,
  RequestedIp: 50,
  LeaseTime: 51,
  Overload: 52,
  MessageType: 53,
  ServerId: 54,
  ParameterRequestList: 55,
  Message: 56,
  MaxMessageSize: 57,
  RenewalTime: 58,
  RebindingTime: 59,
  VendorClass: 60,
  ClientId: 61,
  DomainSearch: 119, // RFC 3397
  End: 255,
} as const;

/** DHCP message types, option 53 (RFC 2132 §9.6). */
export const MsgType = {
  Discover: 1,
  Offer: 2,
  Request: 3,
  Decline: 4,
  Ack: 5,
  Nak: 6,
  Release: 7,
  Inform: 8,
} as const;

export interface DhcpOption {
  readonly code: number;
  readonly data: Uint8Array;
}

/** A BOOTP message with DHCP options, parsed or to be emitted. */
export interface DhcpMessage {
  op: number;
  htype: number;
  hlen: number;
  hops: number;
  xid: number;
  secs: number;
  flags: number;
  ciaddr: IPv4;
  yiaddr: IPv4;
  siaddr: IPv4;
  giaddr: IPv4;
  /** The raw 16-byte chaddr field (hlen bytes are meaningful). */
  chaddr: Uint8Array;
  /** 64-byte sname field; emitted as zeros when empty. Raw bytes even when overloaded. */
  sname: Uint8Array;
  /** 128-byte file field; emitted as zeros when empty. Raw bytes even when overloaded. */
  file: Uint8Array;
  options: DhcpOption[];
}

/** chaddr as a MAC when it is one (htype 1, hlen 6), else null. */
export function clientMacOf(msg: DhcpMessage): Mac | null {
  if (msg.htype !== HTYPE_ETHERNET || msg.hlen !== 6 || msg.chaddr.length < 6) return null;
  return readMac(msg.chaddr, 0);
}

/** A 16-byte chaddr field holding `mac` (htype 1, hlen 6). */
export function chaddrFromMac(mac: Mac): Uint8Array {
  const chaddr = new Uint8Array(CHADDR_SIZE);
  writeMac(chaddr, 0, mac);
  return chaddr;
}

export function isBroadcastFlag(msg: DhcpMessage): boolean {
  return (msg.flags & FLAG_BROADCAST) !== 0;
}

// ---------------------------------------------------------------- parsing

export function parseDhcp(bytes: Uint8Array): DhcpMessage | ParseError {
  if (bytes.length < OPTIONS_OFFSET) return ParseError.of('dhcp:truncated');
  const op = bytes[0]!;
  if (op !== BOOTREQUEST && op !== BOOTREPLY) return ParseError.of('dhcp:bad-op');
  const hlen = bytes[2]!;
  if (hlen > CHADDR_SIZE) return ParseError.of('dhcp:bad-hlen');
  // Without the cookie this is plain BOOTP (RFC 951 vendor area): not served.
  if (readIPv4(bytes, BOOTP_FIXED_SIZE) !== MAGIC_COOKIE) return ParseError.of('dhcp:bad-magic-cookie');

  const options: DhcpOption[] = [];
  const main = readOptionArea(bytes.subarray(OPTIONS_OFFSET), options, true);
  if (main instanceof ParseError) return main;
  if (main !== 0) {
    // RFC 2132 §9.3 / RFC 3396 §5: file first, then sname.
    if (main & 1) {
      const r = readOptionArea(bytes.subarray(OFF_FILE, OFF_FILE + FILE_SIZE), options, false);
      if (r instanceof ParseError) return r;
    }
    if (main & 2) {
      const r = readOptionArea(bytes.subarray(OFF_SNAME, OFF_SNAME + SNAME_SIZE), options, false);
      if (r instanceof ParseError) return r;
    }
  }

  return {
    op,
    htype: bytes[1]!,
    hlen,
    hops: bytes[3]!,
    xid: readU32(bytes, 4),
    secs: readU16(bytes, 8),
    flags: readU16(bytes, 10),
    ciaddr: readIPv4(bytes, 12),
    yiaddr: readIPv4(bytes, 16),
    siaddr: readIPv4(bytes, 20),
    giaddr: readIPv4(bytes, 24),
    chaddr: bytes.subarray(OFF_CHADDR, OFF_CHADDR + CHADDR_SIZE),
    sname: bytes.subarray(OFF_SNAME, OFF_SNAME + SNAME_SIZE),
    file: bytes.subarray(OFF_FILE, OFF_FILE + FILE_SIZE),
    options,
  };
}

/**
 * Reads one option area into `out`, concatenating repeated codes (RFC 3396).
 * Returns the overload value seen (0 if none) or a ParseError.
 */
function readOptionArea(area: Uint8Array, out: DhcpOption[], overloadAllowed: boolean): number | ParseError {
  let overload = 0;
  let i = 0;
  while (i < area.length) {
    const code = area[i]!;
    if (code === Opt.End) break;
    if (code === Opt.Pad) {
      i++;
      continue;
    }
    if (i + 1 >= area.length) return ParseError.of('dhcp:option-truncated');
    const len = area[i + 1]!;
    const start = i + 2;
    if (start + len > area.length) return ParseError.of('dhcp:option-truncated');
    const data = area.subarray(start, start + len);
    i = start + len;
    if (code === Opt.Overload) {
      // Only meaningful in the options field, once, with value 1..3.
      if (!overloadAllowed || len !== 1 || data[0]! < 1 || data[0]! > 3 || overload !== 0) {
        return ParseError.of('dhcp:bad-overload');
      }
      overload = data[0]!;
      continue;
    }
    appendOption(out, code, data);
  }
  return overload;
}

function appendOption(out: DhcpOption[], code: number, data: Uint8Array): void {
  for (let k = 0; k < out.length; k++) {
    const prev = out[k]!;
    if (prev.code === code) {
      const joined = new Uint8Array(prev.data.length + data.length);
      joined.set(prev.data, 0);
      joined.set(data, prev.data.length);
      out[k] = { code, data: joined };
      return;
    }
  }
  out.push({ code, data });
}

// ---------------------------------------------------------------- option access

export function findOption(msg: DhcpMessage, code: number): Uint8Array | undefined {
  for (const o of msg.options) if (o.code === code) return o.data;
  return undefined;
}

/** Option 53 value, or null when absent or malformed (plain BOOTP). */
export function messageTypeOf(msg: DhcpMessage): number | null {
  const d = findOption(msg, Opt.MessageType);
  return d !== undefined && d.length === 1 ? d[0]! : null;
}

/** A 4-byte address option (50, 54), or undefined when absent or not 4 bytes long. */
export function ipOption(msg: DhcpMessage, code: number): IPv4 | undefined {
  const d = findOption(msg, code);
  return d !== undefined && d.length === 4 ? readIPv4(d, 0) : undefined;
}

export function u16Option(msg: DhcpMessage, code: number): number | undefined {
  const d = findOption(msg, code);
  return d !== undefined && d.length === 2 ? readU16(d, 0) : undefined;
}

export function u32Option(msg: DhcpMessage, code: number): number | undefined {
  const d = findOption(msg, code);
  return d !== undefined && d.length === 4 ? readU32(d, 0) : undefined;
}

/** An option's bytes as text (latin1, one char per byte); for hostnames and logs. */
export function textOption(msg: DhcpMessage, code: number): string | undefined {
  const d = findOption(msg, code);
  return d === undefined ? undefined : latin1(d);
}

// ---------------------------------------------------------------- option builders

export function ipListOption(code: number, ips: readonly IPv4[]): DhcpOption {
  const data = new Uint8Array(ips.length * 4);
  ips.forEach((ip, k) => writeIPv4(data, k * 4, ip));
  return { code, data };
}

export function u8Option(code: number, value: number): DhcpOption {
  return { code, data: Uint8Array.of(value & 0xff) };
}

export function u16OptionOf(code: number, value: number): DhcpOption {
  return { code, data: Uint8Array.of((value >>> 8) & 0xff, value & 0xff) };
}

export function u32OptionOf(code: number, value: number): DhcpOption {
  const data = new Uint8Array(4);
  writeIPv4(data, 0, value >>> 0);
  return { code, data };
}

/** ASCII text (callers validate: domain names are checked by validateDomainName). */
export function textOptionOf(code: number, text: string): DhcpOption {
  const data = new Uint8Array(text.length);
  for (let k = 0; k < text.length; k++) data[k] = text.charCodeAt(k) & 0xff;
  return { code, data };
}

// ---------------------------------------------------------------- emitting

/** Bytes emitDhcp writes: fixed part, cookie, options (split per RFC 3396), End, padded to 300. */
export function dhcpEncodedLength(msg: DhcpMessage): number {
  let n = OPTIONS_OFFSET;
  for (const o of msg.options) n += optionWireLength(o);
  n += 1; // End
  return Math.max(n, BOOTP_MIN_SIZE);
}

function optionWireLength(o: DhcpOption): number {
  // A zero-length option still takes one code+len pair; longer ones are cut into ≤255-byte pieces.
  const pieces = Math.max(1, Math.ceil(o.data.length / 255));
  return pieces * 2 + o.data.length;
}

/**
 * Writes `msg` at buf[offset..]; returns the bytes written (dhcpEncodedLength).
 * Pad/End codes in msg.options are skipped (they are framing, not options);
 * the caller provides room (a RangeError from a short buffer is a bug, not input).
 */
export function emitDhcp(msg: DhcpMessage, buf: Uint8Array, offset = 0): number {
  const total = dhcpEncodedLength(msg);
  if (buf.length - offset < total) throw new RangeError('emitDhcp: buffer too small');
  const out = buf.subarray(offset, offset + total);
  out.fill(0);
  out[0] = msg.op;
  out[1] = msg.htype;
  out[2] = msg.hlen;
  out[3] = msg.hops;
  writeU32(out, 4, msg.xid);
  writeU16(out, 8, msg.secs);
  writeU16(out, 10, msg.flags);
  writeIPv4(out, 12, msg.ciaddr);
  writeIPv4(out, 16, msg.yiaddr);
  writeIPv4(out, 20, msg.siaddr);
  writeIPv4(out, 24, msg.giaddr);
  out.set(msg.chaddr.subarray(0, CHADDR_SIZE), OFF_CHADDR);
  out.set(msg.sname.subarray(0, SNAME_SIZE), OFF_SNAME);
  out.set(msg.file.subarray(0, FILE_SIZE), OFF_FILE);
  writeU32(out, BOOTP_FIXED_SIZE, MAGIC_COOKIE);
  let i = OPTIONS_OFFSET;
  for (const o of msg.options) {
    if (o.code === Opt.Pad || o.code === Opt.End) continue;
    let pos = 0;
    do {
      const len = Math.min(255, o.data.length - pos);
      out[i++] = o.code;
      out[i++] = len;
      out.set(o.data.subarray(pos, pos + len), i);
      i += len;
      pos += len;
    } while (pos < o.data.length);
  }
  out[i] = Opt.End;
  // The rest is already zero: Pad up to BOOTP_MIN_SIZE.
  return total;
}

export function encodeDhcp(msg: DhcpMessage): Uint8Array {
  const buf = new Uint8Array(dhcpEncodedLength(msg));
  emitDhcp(msg, buf, 0);
  return buf;
}

// ---------------------------------------------------------------- domain search (RFC 3397)

const LABEL = /^[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?$/;

/** True for an ASCII host/domain name of 1..253 chars with RFC 1035-sized labels (a trailing dot is allowed). */
export function isValidDomainName(name: string): boolean {
  const n = name.endsWith('.') ? name.slice(0, -1) : name;
  if (n.length === 0 || n.length > 253) return false;
  return n.split('.').every((l) => LABEL.test(l));
}

/**
 * Option 119 data: the names as RFC 1035 §3.1 wire names, with §4.1.4
 * compression pointers to earlier suffixes (RFC 3397 §2: offsets count from
 * the start of the option data). Names must pass isValidDomainName.
 */
export function encodeDomainSearch(names: readonly string[]): Uint8Array {
  const bytes: number[] = [];
  const suffixAt = new Map<string, number>(); // lowercase suffix -> offset of its first label
  for (const name of names) {
    const labels = (name.endsWith('.') ? name.slice(0, -1) : name).split('.');
    let k = 0;
    for (; k < labels.length; k++) {
      const suffix = labels.slice(k).join('.').toLowerCase();
      const at = suffixAt.get(suffix);
      if (at !== undefined) {
        bytes.push(0xc0 | (at >>> 8), at & 0xff);
        break;
      }
      if (bytes.length <= 0x3fff) suffixAt.set(suffix, bytes.length);
      const label = labels[k]!;
      bytes.push(label.length);
      for (let c = 0; c < label.length; c++) bytes.push(label.charCodeAt(c));
    }
    if (k === labels.length) bytes.push(0);
  }
  return Uint8Array.from(bytes);
}

/**
 * Decodes option 119 data. Pointers must go strictly backwards (which also
 * bounds the work: no loops), names ≤ 255 bytes. Used by tests and logs.
 */
export function decodeDomainSearch(data: Uint8Array): string[] | ParseError {
  const names: string[] = [];
  let i = 0;
  while (i < data.length) {
    const labels: string[] = [];
    let p = i;
    let jumped = false;
    let wireLength = 0;
    for (;;) {
      if (p >= data.length) return ParseError.of('dhcp:search-truncated');
      const len = data[p]!;
      if (len === 0) {
        if (!jumped) i = p + 1;
        break;
      }
      if ((len & 0xc0) === 0xc0) {
        if (p + 1 >= data.length) return ParseError.of('dhcp:search-truncated');
        const target = ((len & 0x3f) << 8) | data[p + 1]!;
        if (target >= p) return ParseError.of('dhcp:search-bad-pointer');
        if (!jumped) i = p + 2;
        jumped = true;
        p = target;
        continue;
      }
      if ((len & 0xc0) !== 0) return ParseError.of('dhcp:search-bad-label');
      if (p + 1 + len > data.length) return ParseError.of('dhcp:search-truncated');
      wireLength += len + 1;
      if (wireLength > 255) return ParseError.of('dhcp:search-name-too-long');
      labels.push(latin1(data.subarray(p + 1, p + 1 + len)));
      p += 1 + len;
    }
    names.push(labels.join('.'));
  }
  return names;
}

// ---------------------------------------------------------------- small helpers

/** Bytes as one char each; a loop, not String.fromCharCode(...bytes), so that long input cannot overflow the call stack. */
function latin1(bytes: Uint8Array): string {
  let s = '';
  for (let k = 0; k < bytes.length; k++) s += String.fromCharCode(bytes[k]!);
  return s;
}

function readU16(b: Uint8Array, o: number): number {
  return (b[o]! << 8) | b[o + 1]!;
}
function readU32(b: Uint8Array, o: number): number {
  return readIPv4(b, o);
}
function writeU16(b: Uint8Array, o: number, v: number): void {
  b[o] = (v >>> 8) & 0xff;
  b[o + 1] = v & 0xff;
}
function writeU32(b: Uint8Array, o: number, v: number): void {
  writeIPv4(b, o, v >>> 0);
}
