import { describe, it, expect } from 'vitest';
import fc from 'fast-check';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, writeFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  pcapFileHeader, pcapRecordHeader, writePcapRecordHeader, readPcap, readPcapFile,
  PCAP_FILE_HEADER_LEN, PCAP_RECORD_HEADER_LEN,
} from '../../netstack/pcap.js';
import { emitEthernetHeader, ETHERTYPE_ARP, ETHERTYPE_IPV4 } from '../../netstack/ethernet.js';
import { emitArp, ARP_REQUEST } from '../../netstack/arp.js';
import { emitIpv4Header, IPPROTO_UDP } from '../../netstack/ipv4.js';
import { emitUdp } from '../../netstack/udp.js';
import { ipv4, MAC_BROADCAST } from '../../netstack/addr.js';

function concat(parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let off = 0;
  for (const p of parts) { out.set(p, off); off += p.length; }
  return out;
}

function fileOf(records: Array<{ tsMs: number; frame: Uint8Array }>): Uint8Array {
  const parts = [pcapFileHeader()];
  for (const r of records) parts.push(pcapRecordHeader(r.tsMs, r.frame.length, r.frame.length), r.frame);
  return concat(parts);
}

/** Re-encodes a file we wrote with another magic/byte order, to test the reader on what other tools write. */
function reencode(file: Uint8Array, littleEndian: boolean, nanos: boolean): Uint8Array {
  const src = readPcapFile(file);
  const parts: Uint8Array[] = [];
  const h = new Uint8Array(24);
  const hv = new DataView(h.buffer);
  hv.setUint32(0, nanos ? 0xa1b23c4d : 0xa1b2c3d4, littleEndian);
  hv.setUint16(4, 2, littleEndian); hv.setUint16(6, 4, littleEndian);
  hv.setUint32(16, src.snaplen, littleEndian); hv.setUint32(20, 1, littleEndian);
  parts.push(h);
  for (const r of src.records) {
    const rh = new Uint8Array(16);
    const v = new DataView(rh.buffer);
    const sec = Math.floor(r.tsMs / 1000);
    const msInSec = r.tsMs - sec * 1000;
    v.setUint32(0, sec, littleEndian);
    v.setUint32(4, Math.round(msInSec * (nanos ? 1_000_000 : 1000)), littleEndian);
    v.setUint32(8, r.frame.length, littleEndian); v.setUint32(12, r.originalLength, littleEndian);
    parts.push(rh, r.frame);
  }
  return concat(parts);
}

function sampleFrames(): Uint8Array[] {
  const arp = new Uint8Array(14 + 28);
  emitArp(arp, emitEthernetHeader(arp, 0, MAC_BROADCAST, 0x525400123456, ETHERTYPE_ARP), {
    op: ARP_REQUEST, senderMac: 0x525400123456, senderIp: ipv4(10, 0, 0, 1), targetMac: 0, targetIp: ipv4(10, 0, 0, 2),
  });
  const payload = new TextEncoder().encode('moat');
  const udp = new Uint8Array(14 + 20 + 8 + payload.length);
  let off = emitEthernetHeader(udp, 0, 0x525400000002, 0x525400123456, ETHERTYPE_IPV4);
  off = emitIpv4Header(udp, off, { src: ipv4(10, 0, 0, 1), dst: ipv4(10, 0, 0, 2), protocol: IPPROTO_UDP, id: 1, payloadLength: 8 + payload.length });
  emitUdp(udp, off, ipv4(10, 0, 0, 1), ipv4(10, 0, 0, 2), 40000, 7777, payload);
  return [arp, udp];
}

describe('pcap format (pcap-savefile(5))', () => {
  it('writes the classic little-endian microsecond file header', () => {
    expect([...pcapFileHeader()]).toEqual([
      0xd4, 0xc3, 0xb2, 0xa1, 2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0, 0, 1, 0, 0, 0,
    ]);
    expect([...pcapFileHeader(262144, 101).subarray(16)]).toEqual([0, 0, 4, 0, 101, 0, 0, 0]);
  });

  it('splits milliseconds into seconds and microseconds', () => {
    const v = new DataView(pcapRecordHeader(1234567.8915, 60, 1514).buffer);
    expect([v.getUint32(0, true), v.getUint32(4, true), v.getUint32(8, true), v.getUint32(12, true)]).toEqual([1234, 567891, 60, 1514]);
    const buf = new Uint8Array(20);
    expect(writePcapRecordHeader(buf, 4, 999.9999, 1, 1)).toBe(20);
    const w = new DataView(buf.buffer);
    expect([w.getUint32(4, true), w.getUint32(8, true)]).toEqual([0, 999999]);
  });

  it('reads back what it writes, in every byte order and time resolution', () => {
    fc.assert(fc.property(
      fc.array(fc.record({ tsMs: fc.integer({ min: 0, max: 4e12 }).map((n) => n / 1000), frame: fc.uint8Array({ maxLength: 80 }) }), { maxLength: 10 }),
      (records) => {
        const file = fileOf(records);
        const back = readPcap(file);
        expect(back.map((r) => [...r.frame])).toEqual(records.map((r) => [...r.frame]));
        back.forEach((r, i) => expect(Math.abs(r.tsMs - records[i]!.tsMs)).toBeLessThan(0.001 + 1e-6));
        for (const [le, ns] of [[true, true], [false, false], [false, true]] as const) {
          const other = readPcap(reencode(file, le, ns));
          expect(other.map((r) => [...r.frame])).toEqual(records.map((r) => [...r.frame]));
          other.forEach((r, i) => expect(Math.abs(r.tsMs - back[i]!.tsMs)).toBeLessThan(0.001));
        }
      },
    ));
  });

  it('throws on a bad magic and on truncated records (files, not traffic)', () => {
    const file = fileOf([{ tsMs: 1, frame: new Uint8Array(30) }]);
    expect(() => readPcap(file.subarray(0, 10))).toThrow(/shorter/);
    const bad = file.slice(); bad[0] = 0x0a;
    expect(() => readPcap(bad)).toThrow(/magic/);
    expect(() => readPcap(file.subarray(0, PCAP_FILE_HEADER_LEN + 8))).toThrow(/truncated/);
    expect(() => readPcap(file.subarray(0, file.length - 1))).toThrow(/truncated/);
    expect(readPcap(file.subarray(0, PCAP_FILE_HEADER_LEN))).toEqual([]);
    expect(PCAP_RECORD_HEADER_LEN).toBe(16);
  });

  it('tcpdump -r reads a file made from these headers', (ctx) => {
    let tcpdumpPresent = true;
    try { execFileSync('tcpdump', ['--version'], { stdio: 'pipe' }); } catch { tcpdumpPresent = false; }
    if (!tcpdumpPresent) {
      if (process.env.CI) throw new Error('tcpdump is required in CI for this test (apt-get install tcpdump)');
      ctx.skip('tcpdump not installed on this machine');
    }
    const dir = mkdtempSync(join(tmpdir(), 'mw1-pcap-'));
    try {
      const path = join(dir, 'out.pcap');
      const [arp, udp] = sampleFrames();
      writeFileSync(path, fileOf([{ tsMs: 1_700_000_000_000.5, frame: arp! }, { tsMs: 1_700_000_000_250, frame: udp! }]));
      const out = execFileSync('tcpdump', ['-r', path, '-nn', '-tt', '-vv'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
      const lines = out.trim().split('\n').filter((l) => /^\d/.test(l));
      expect(lines).toHaveLength(2);
      expect(lines[0]).toMatch(/^1700000000\.000500 ARP, .*Request who-has 10\.0\.0\.2 tell 10\.0\.0\.1/);
      expect(lines[1]).toMatch(/^1700000000\.250000 IP /);
      expect(out).toMatch(/10\.0\.0\.1\.40000 > 10\.0\.0\.2\.7777: \[udp sum ok\] UDP, length 4/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
