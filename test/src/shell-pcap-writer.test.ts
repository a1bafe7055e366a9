import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { readPcapFile } from '../../netstack/pcap.js';
import { PcapWriter, PCAP_SNAPLEN } from '../../src/pcap-writer.js';

let dir: string;
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'mv6-pcap-'));
});
afterEach(() => {
  rmSync(dir, { recursive: true, force: true });
});

/** A UDP/IPv4 Ethernet frame tcpdump can decode (checksums zero: tcpdump does not verify by default). */
function udpFrame(payloadLen: number, srcPort: number): Uint8Array {
  const f = new Uint8Array(14 + 20 + 8 + payloadLen);
  const v = new DataView(f.buffer);
  f.set([0x5a, 0x94, 0xef, 0xe4, 0x0c, 0xdd, 0x52, 0x54, 0x00, 0x12, 0x34, 0x56], 0);
  v.setUint16(12, 0x0800);
  v.setUint8(14, 0x45);
  v.setUint16(16, 20 + 8 + payloadLen);
  v.setUint8(22, 64);
  v.setUint8(23, 17);
  f.set([192, 168, 127, 2, 192, 168, 127, 1], 26);
  // IPv4 header checksum (RFC 1071), so that tcpdump prints no complaint.
  let sum = 0;
  for (let i = 14; i < 34; i += 2) sum += v.getUint16(i);
  while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16);
  v.setUint16(24, ~sum & 0xffff);
  v.setUint16(34, srcPort);
  v.setUint16(36, 53);
  v.setUint16(38, 8 + payloadLen);
  return f;
}

function hasTcpdump(): boolean {
  return spawnSync('tcpdump', ['--version'], { stdio: 'ignore' }).status === 0;
}

describe('PcapWriter', () => {
  it('writes a file that reads back frame for frame, in and out', async () => {
    const path = join(dir, 'cap.pcap');
    let t = 1_700_000_000_000.5;
    const w = await PcapWriter.open(path, undefined, { now: () => (t += 1.25) });
    const frames = [udpFrame(10, 1000), udpFrame(1400, 1001), udpFrame(0, 1002)];
    w.frameIn(frames[0]!);
    w.frameOut(frames[1]!);
    // The writer copies: changing the caller's buffer afterwards must not change the capture.
    const reused = udpFrame(0, 1002);
    w.frameIn(reused);
    reused.fill(0xee);
    await w.close();
    const file = readPcapFile(readFileSync(path));
    expect(file.linktype).toBe(1);
    expect(file.snaplen).toBe(PCAP_SNAPLEN);
    expect(file.records.map((r) => Array.from(r.frame))).toEqual(frames.map((f) => Array.from(f)));
    expect(file.records.map((r) => r.originalLength)).toEqual(frames.map((f) => f.length));
    expect(file.records[1]!.tsMs - file.records[0]!.tsMs).toBeCloseTo(1.25, 2);
    expect(w.stats).toMatchObject({ framesWritten: 3, framesDropped: 0, writeErrors: 0 });
  });

  it('drops (and counts) frames beyond its queue bound instead of growing', async () => {
    const path = join(dir, 'bounded.pcap');
    const w = await PcapWriter.open(path, undefined, { maxPendingBytes: 24 + 3 * (16 + 1442) });
    for (let i = 0; i < 10; i++) w.frameIn(udpFrame(1400, 2000 + i));
    expect(w.stats.framesWritten).toBe(3);
    expect(w.stats.framesDropped).toBe(7);
    await w.close();
    expect(readPcapFile(readFileSync(path)).records.map((r) => new DataView(r.frame.buffer, r.frame.byteOffset).getUint16(34))).toEqual([
      2000, 2001, 2002,
    ]);
  });

  it('reports an unopenable path naming the flag', async () => {
    await expect(PcapWriter.open(join(dir, 'no', 'such', 'dir.pcap'))).rejects.toThrow(/^--pcap: cannot open/);
  });

  it('is read by tcpdump -r (required in CI)', async (ctx) => {
    if (!hasTcpdump()) {
      if (process.env.CI) throw new Error('tcpdump is required in CI for this test');
      ctx.skip();
    }
    const path = join(dir, 'tcpdump.pcap');
    const w = await PcapWriter.open(path);
    for (let i = 0; i < 5; i++) w.frameIn(udpFrame(20 + i, 3000 + i));
    await w.close();
    const out = execFileSync('tcpdump', ['-r', path, '-n', '-tt'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
    const lines = out.trim().split('\n');
    expect(lines).toHaveLength(5);
    lines.forEach((line, i) => expect(line).toContain(`192.168.127.2.${3000 + i} > 192.168.127.1.53`));
  });
});
