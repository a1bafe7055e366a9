import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { readPcapFile } from '../../netstack/pcap.js';
import { parseServeArgs } from '../../src/config.js';
import { FrameDecoder } from '../../src/transport/frame-decoder.js';
import { serve } from '../../src/serve.js';
import { captureLogger, frameStream, waitFor } from './shell-fakes.js';

let dir: string;
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'mv6-real-'));
});
afterEach(() => {
  rmSync(dir, { recursive: true, force: true });
});

describe('serve() with the real stack and NAT', () => {
  it('answers a real DHCPDISCOVER (udhcpc capture) with an offer, captured by --pcap', async () => {
    const discover = readPcapFile(readFileSync(join(process.cwd(), 'test/fixtures/dhcp/udhcpc-discover.pcap'))).records[0]!.frame;
    const sock = join(dir, 'q.sock');
    const pcap = join(dir, 'cap.pcap');
    const r = parseServeArgs(['--listen-qemu', `unix://${sock}`, '--pcap', pcap, '--dns-upstream', '127.0.0.1:5399'], {
      readFile: () => '',
      readResolvConf: () => undefined,
    });
    if (r.kind !== 'config') throw new Error('config expected');
    const { log } = captureLogger('info');
    const running = await serve(r.config, log);
    try {
      const guest: Socket = await new Promise((resolve) => {
        const s = connect(sock, () => resolve(s));
      });
      const decoder = new FrameDecoder();
      const replies: Uint8Array[] = [];
      guest.on('data', (d: Buffer) => {
        for (const f of decoder.push(d)) replies.push(new Uint8Array(f));
      });
      guest.write(frameStream([discover]));
      await waitFor(() => replies.length >= 1);
      const offer = replies[0]!;
      // From the gateway's MAC, IPv4/UDP 67 -> 68, yiaddr 192.168.127.2, DHCP message type 2 (OFFER).
      expect(Array.from(offer.subarray(6, 12))).toEqual([0x5a, 0x94, 0xef, 0xe4, 0x0c, 0xdd]);
      const v = new DataView(offer.buffer, offer.byteOffset);
      expect(v.getUint16(12)).toBe(0x0800);
      expect(offer[23]).toBe(17);
      expect([v.getUint16(34), v.getUint16(36)]).toEqual([67, 68]);
      const bootp = 14 + 20 + 8;
      expect(Array.from(offer.subarray(bootp + 16, bootp + 20))).toEqual([192, 168, 127, 2]);
      const stats = running.stats() as { frames: { in: number; out: number } };
      expect(stats.frames.in).toBe(1);
      expect(stats.frames.out).toBeGreaterThanOrEqual(1);
      guest.destroy();
    } finally {
      await running.close();
    }
    const captured = readPcapFile(readFileSync(pcap)).records;
    expect(captured.length).toBeGreaterThanOrEqual(2);
    expect(Buffer.from(captured[0]!.frame).equals(Buffer.from(discover))).toBe(true);
  });
});
