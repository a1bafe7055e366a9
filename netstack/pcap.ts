/**
 * The classic libpcap file format (pcap-savefile(5)), as bytes only: the
 * caller writes them wherever it likes (`--pcap` in the service, test links).
 *
 * Writing: one file header, then per frame a 16-byte record header followed
 * by the frame. We write little-endian with the microsecond magic, which
 * every reader (tcpdump, Wireshark) accepts.
 * Reading: both byte orders, microsecond and nanosecond magics. Unlike the
 * wire parsers, readPcap throws on a malformed file: it reads files a person
 * or test produced, not traffic, and a broken fixture must be loud.
 */

export const PCAP_FILE_HEADER_LEN = 24;
export const PCAP_RECORD_HEADER_LEN = 16;
export const LINKTYPE_ETHERNET = 1;
const MAGIC_MICROS = 0xa1b2c3d4;
const MAGIC_NANOS = 0xa1b23c4d;

/** The 24-byte file header: magic, version 2.4, thiszone 0, sigfigs 0, snaplen, link type. */
export function pcapFileHeader(snaplen = 65535, linktype = LINKTYPE_ETHERNET): Uint8Array {
  const out = new Uint8Array(PCAP_FILE_HEADER_LEN);
  const v = new DataView(out.buffer);
  v.setUint32(0, MAGIC_MICROS, true);
  v.setUint16(4, 2, true);
  v.setUint16(6, 4, true);
  v.setInt32(8, 0, true);
  v.setUint32(12, 0, true);
  v.setUint32(16, snaplen, true);
  v.setUint32(20, linktype, true);
  return out;
}

/** A 16-byte record header for a frame seen at `tsMs` (milliseconds, fractions kept to the microsecond). */
export function pcapRecordHeader(tsMs: number, capturedLength: number, originalLength: number): Uint8Array {
  const out = new Uint8Array(PCAP_RECORD_HEADER_LEN);
  writePcapRecordHeader(out, 0, tsMs, capturedLength, originalLength);
  return out;
}

/** The same, written into `buf` at `off` (no allocation); returns off + 16. */
export function writePcapRecordHeader(buf: Uint8Array, off: number, tsMs: number, capturedLength: number, originalLength: number): number {
  const t = Math.max(0, tsMs);
  const seconds = Math.floor(t / 1000);
  const micros = Math.min(999_999, Math.floor((t - seconds * 1000) * 1000));
  const v = new DataView(buf.buffer, buf.byteOffset + off, PCAP_RECORD_HEADER_LEN);
  v.setUint32(0, seconds >>> 0, true);
  v.setUint32(4, micros, true);
  v.setUint32(8, capturedLength, true);
  v.setUint32(12, originalLength, true);
  return off + PCAP_RECORD_HEADER_LEN;
}

export interface PcapRecord {
  /** Capture time in milliseconds (fractional). */
  tsMs: number;
  /** The captured bytes (a view into the input). */
  frame: Uint8Array;
  /** Length of the frame on the wire (may exceed frame.length if the snaplen cut it). */
  originalLength: number;
}

export interface PcapFile {
  linktype: number;
  snaplen: number;
  records: PcapRecord[];
}

/** Parses a whole classic pcap file. Throws Error on a bad magic or a truncated record. */
export function readPcapFile(bytes: Uint8Array): PcapFile {
  if (bytes.length < PCAP_FILE_HEADER_LEN) throw new Error('pcap: shorter than the file header');
  const v = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let little: boolean;
  let fractionPerMs: number;
  const magicLE = v.getUint32(0, true);
  const magicBE = v.getUint32(0, false);
  if (magicLE === MAGIC_MICROS || magicLE === MAGIC_NANOS) {
    little = true;
    fractionPerMs = magicLE === MAGIC_NANOS ? 1_000_000 : 1000;
  } else if (magicBE === MAGIC_MICROS || magicBE === MAGIC_NANOS) {
    little = false;
    fractionPerMs = magicBE === MAGIC_NANOS ? 1_000_000 : 1000;
  } else {
    throw new Error(`pcap: unknown magic 0x${magicBE.toString(16)} (pcapng is not supported)`);
  }
  const snaplen = v.getUint32(16, little);
  const linktype = v.getUint32(20, little) & 0x0fffffff; // high bits: FCS info (pcap-linktype(7))
  const records: PcapRecord[] = [];
  let off = PCAP_FILE_HEADER_LEN;
  while (off < bytes.length) {
    if (off + PCAP_RECORD_HEADER_LEN > bytes.length) throw new Error(`pcap: truncated record header at ${off}`);
    const seconds = v.getUint32(off, little);
    const fraction = v.getUint32(off + 4, little);
    const capturedLength = v.getUint32(off + 8, little);
    const originalLength = v.getUint32(off + 12, little);
    off += PCAP_RECORD_HEADER_LEN;
    if (off + capturedLength > bytes.length) throw new Error(`pcap: truncated record at ${off}`);
    records.push({
      tsMs: seconds * 1000 + fraction / fractionPerMs,
      frame: bytes.subarray(off, off + capturedLength),
      originalLength,
    });
    off += capturedLength;
  }
  return { linktype, snaplen, records };
}

/** The records of a classic pcap file, for tests and tools. Throws like readPcapFile. */
export function readPcap(bytes: Uint8Array): Array<{ tsMs: number; frame: Uint8Array }> {
  return readPcapFile(bytes).records;
}
