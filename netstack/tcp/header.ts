/**
 * TCP wire format (RFC 9293 §3.1) and the options Linux uses: MSS (RFC 9293
 * §3.7.1), window scale and timestamps (RFC 7323), SACK-permitted and SACK
 * blocks (RFC 2018).
 *
 * `parseTcp` validates a segment (length, data offset, checksum over the IPv4 or IPv6
 * pseudo header, option lengths) and returns a `TcpRepr` whose payload is a
 * view into the input. `emitTcpHeader` writes a header in place in front of a
 * payload that the caller has already copied into the frame, so that the
 * payload is copied exactly once on output.
 *
 * Options are laid out the way Linux lays them out (net/ipv4/tcp_output.c,
 * tcp_options_write): SYN = MSS, SACK_PERM, TS, NOP, WS; data = NOP NOP TS,
 * NOP NOP SACK. Byte-identical layouts make captures diff cleanly against a
 * Linux peer and keep every option 4-byte aligned.
 */
import type { IpAddress } from '../addr.js';
import { sumBytes, sumPseudoHeaderAny, finishChecksum } from '../checksum.js';
import { ParseError } from '../errors.js';

export const TCP_FIN = 0x01, TCP_SYN = 0x02, TCP_RST = 0x04, TCP_PSH = 0x08, TCP_ACK = 0x10, TCP_URG = 0x20, TCP_ECE = 0x40, TCP_CWR = 0x80;
export const TCP_HEADER_LEN = 20;
/** Maximum header length: data offset is 4 bits of 32-bit words. */
export const TCP_MAX_HEADER_LEN = 60;
export const IP_PROTO_TCP = 6;

const OPT_EOL = 0, OPT_NOP = 1, OPT_MSS = 2, OPT_WS = 3, OPT_SACK_PERM = 4, OPT_SACK = 5, OPT_TS = 8;

export interface TcpOptions {
  mss: number | null;
  windowScale: number | null;
  sackPermitted: boolean;
  timestamp: { value: number; echo: number } | null;
  /** Flat [start0, end0, start1, end1, ...] (RFC 2018 §3). */
  sackBlocks: number[] | null;
}

export interface TcpRepr {
  srcPort: number;
  dstPort: number;
  seq: number;
  ack: number;
  flags: number;
  /** Raw header value, not scaled. */
  window: number;
  urgent: number;
  headerLength: number;
  options: TcpOptions;
  payload: Uint8Array;
}

export interface TcpSegmentFields {
  srcPort: number;
  dstPort: number;
  seq: number;
  ack: number;
  flags: number;
  /** Raw header value (already scaled down by the sender's shift), 0..65535. */
  window: number;
  options?: Partial<TcpOptions> | null;
}

const ERR_TRUNCATED = ParseError.of('tcp:truncated');
const ERR_BAD_OFFSET = ParseError.of('tcp:bad-offset');
const ERR_BAD_CHECKSUM = ParseError.of('tcp:bad-checksum');
const ERR_BAD_OPTION = ParseError.of('tcp:bad-option');

function u16(b: Uint8Array, o: number): number {
  return (b[o]! << 8) | b[o + 1]!;
}
function u32(b: Uint8Array, o: number): number {
  return ((b[o]! << 24) | (b[o + 1]! << 16) | (b[o + 2]! << 8) | b[o + 3]!) >>> 0;
}
function put16(b: Uint8Array, o: number, v: number): void {
  b[o] = (v >>> 8) & 0xff;
  b[o + 1] = v & 0xff;
}
function put32(b: Uint8Array, o: number, v: number): void {
  b[o] = v >>> 24;
  b[o + 1] = (v >>> 16) & 0xff;
  b[o + 2] = (v >>> 8) & 0xff;
  b[o + 3] = v & 0xff;
}

/**
 * Parses a TCP segment (the IPv4 payload, exactly its length). Never throws.
 * Unknown options are skipped by their length (RFC 9293 §3.1, MUST-68);
 * options with an impossible length are 'tcp:bad-option'.
 */
export function parseTcp(segment: Uint8Array, srcIp: IpAddress, dstIp: IpAddress, checksumOk = false): TcpRepr | ParseError {
  const len = segment.length;
  if (len < TCP_HEADER_LEN) return ERR_TRUNCATED;
  const headerLength = (segment[12]! >>> 4) * 4;
  if (headerLength < TCP_HEADER_LEN) return ERR_BAD_OFFSET;
  if (headerLength > len) return ERR_TRUNCATED;
  // checksumOk: the link vouched for it (receive offload, netstack/rx-marks.ts).
  if (!checksumOk && finishChecksum(sumBytes(segment, 0, len, sumPseudoHeaderAny(srcIp, dstIp, IP_PROTO_TCP, len))) !== 0) return ERR_BAD_CHECKSUM;

  const options: TcpOptions = { mss: null, windowScale: null, sackPermitted: false, timestamp: null, sackBlocks: null };
  let i = TCP_HEADER_LEN;
  while (i < headerLength) {
    const kind = segment[i]!;
    if (kind === OPT_EOL) break;
    if (kind === OPT_NOP) {
      i++;
      continue;
    }
    if (i + 1 >= headerLength) return ERR_BAD_OPTION;
    const olen = segment[i + 1]!;
    if (olen < 2 || i + olen > headerLength) return ERR_BAD_OPTION;
    switch (kind) {
      case OPT_MSS:
        if (olen !== 4) return ERR_BAD_OPTION;
        options.mss = u16(segment, i + 2);
        break;
      case OPT_WS:
        if (olen !== 3) return ERR_BAD_OPTION;
        options.windowScale = segment[i + 2]!;
        break;
      case OPT_SACK_PERM:
        if (olen !== 2) return ERR_BAD_OPTION;
        options.sackPermitted = true;
        break;
      case OPT_SACK: {
        if (olen < 10 || (olen - 2) % 8 !== 0) return ERR_BAD_OPTION;
        const blocks: number[] = [];
        for (let j = i + 2; j < i + olen; j += 4) blocks.push(u32(segment, j));
        options.sackBlocks = blocks;
        break;
      }
      case OPT_TS:
        if (olen !== 10) return ERR_BAD_OPTION;
        options.timestamp = { value: u32(segment, i + 2), echo: u32(segment, i + 6) };
        break;
      default:
        break; // unknown option: skipped by its length
    }
    i += olen;
  }

  return {
    srcPort: u16(segment, 0),
    dstPort: u16(segment, 2),
    seq: u32(segment, 4),
    ack: u32(segment, 8),
    flags: segment[13]!,
    window: u16(segment, 14),
    urgent: u16(segment, 18),
    headerLength,
    options,
    payload: segment.subarray(headerLength),
  };
}

/** How many SACK blocks fit beside the other options (40 bytes of option space). */
export function maxSackBlocks(hasTimestamp: boolean): number {
  return hasTimestamp ? 3 : 4;
}

/** Bytes of every option except SACK blocks. */
function baseOptionsLength(o: Partial<TcpOptions>): number {
  let n = 0;
  if (o.mss != null) n += 4;
  if (o.timestamp != null) n += 12; // NOP NOP TS, or SACK_PERM TS
  else if (o.sackPermitted === true) n += 4; // NOP NOP SACK_PERM
  if (o.windowScale != null) n += 4; // NOP WS
  return n;
}

/** SACK blocks that fit in the 40 bytes of option space left by the others (RFC 2018 §3). */
function sackBlocksThatFit(o: Partial<TcpOptions>, base: number): number {
  const sb = o.sackBlocks;
  if (sb == null || sb.length < 2) return 0;
  const room = Math.floor((TCP_MAX_HEADER_LEN - TCP_HEADER_LEN - base - 4) / 8);
  return Math.max(0, Math.min(sb.length >>> 1, maxSackBlocks(o.timestamp != null), room));
}

function optionsLength(o: Partial<TcpOptions> | null | undefined): number {
  if (o == null) return 0;
  const base = baseOptionsLength(o);
  const blocks = sackBlocksThatFit(o, base);
  return base + (blocks > 0 ? 4 + 8 * blocks : 0);
}

/** 20 + options, padded to a multiple of 4 (Linux's layouts need no padding). */
export function tcpHeaderLength(f: TcpSegmentFields): number {
  return TCP_HEADER_LEN + optionsLength(f.options);
}

/**
 * Writes the header and options at `off` and the checksum over header,
 * options and the `payloadLength` bytes already placed right after the header.
 * partialChecksum: write only the folded pseudo-header sum instead, for a link
 * that completes it (checksum offload, StackConfig.tcp.checksumOffload).
 * Returns off + header length.
 */
export function emitTcpHeader(
  buf: Uint8Array,
  off: number,
  f: TcpSegmentFields,
  srcIp: IpAddress,
  dstIp: IpAddress,
  payloadLength: number,
  partialChecksum = false,
): number {
  put16(buf, off, f.srcPort);
  put16(buf, off + 2, f.dstPort);
  put32(buf, off + 4, f.seq >>> 0);
  put32(buf, off + 8, f.ack >>> 0);
  buf[off + 13] = f.flags & 0xff;
  put16(buf, off + 14, f.window);
  put16(buf, off + 16, 0); // checksum, filled below
  put16(buf, off + 18, 0); // urgent pointer: never sent

  let p = off + TCP_HEADER_LEN;
  const o = f.options;
  if (o != null) {
    const ts = o.timestamp;
    if (o.mss != null) {
      buf[p] = OPT_MSS; buf[p + 1] = 4; put16(buf, p + 2, o.mss);
      p += 4;
    }
    if (ts != null) {
      if (o.sackPermitted === true) {
        buf[p] = OPT_SACK_PERM; buf[p + 1] = 2;
      } else {
        buf[p] = OPT_NOP; buf[p + 1] = OPT_NOP;
      }
      buf[p + 2] = OPT_TS; buf[p + 3] = 10;
      put32(buf, p + 4, ts.value >>> 0);
      put32(buf, p + 8, ts.echo >>> 0);
      p += 12;
    }
    if (o.windowScale != null) {
      buf[p] = OPT_NOP; buf[p + 1] = OPT_WS; buf[p + 2] = 3; buf[p + 3] = o.windowScale;
      p += 4;
    }
    if (ts == null && o.sackPermitted === true) {
      buf[p] = OPT_NOP; buf[p + 1] = OPT_NOP; buf[p + 2] = OPT_SACK_PERM; buf[p + 3] = 2;
      p += 4;
    }
    const sb = o.sackBlocks;
    const blocks = sackBlocksThatFit(o, p - off - TCP_HEADER_LEN);
    if (sb != null && blocks > 0) {
      buf[p] = OPT_NOP; buf[p + 1] = OPT_NOP; buf[p + 2] = OPT_SACK; buf[p + 3] = 2 + 8 * blocks;
      p += 4;
      for (let b = 0; b < blocks * 2; b++) {
        put32(buf, p, sb[b]! >>> 0);
        p += 4;
      }
    }
  }
  const headerLength = p - off;
  buf[off + 12] = (headerLength >>> 2) << 4;
  const total = headerLength + payloadLength;
  const pseudo = sumPseudoHeaderAny(srcIp, dstIp, IP_PROTO_TCP, total);
  // Partial: what the completer adds the segment's own sum to (Linux: ~tcp_v4_check(len, saddr, daddr, 0)).
  put16(buf, off + 16, partialChecksum ? ~finishChecksum(pseudo) & 0xffff : finishChecksum(sumBytes(buf, off, total, pseudo)));
  return p;
}
