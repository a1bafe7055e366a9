import { describe, expect, it } from 'vitest';
import { createHash } from 'node:crypto';
import type { TcpSocket } from '../../netstack/api.js';
import { GUEST_IP6, HOST_ALIAS6, Link, LINK_IPV6 } from '../support/link.js';

const sha = (chunks: Uint8Array[]) => createHash('sha256').update(Buffer.concat(chunks)).digest('hex');

function bytes(n: number, seed: number): Uint8Array {
  const b = new Uint8Array(n);
  let x = seed;
  for (let i = 0; i < n; i++) { x = (x * 1103515245 + 12345) >>> 0; b[i] = x >>> 24; }
  return b;
}

describe('TCP over IPv6 between two stacks (the one TCP implementation)', () => {
  for (const faults of [undefined, { drop: 0.02, duplicate: 0.01, reorder: 0.05, delayMs: 1, jitterMs: 2 }]) {
    it(`carries bytes both ways with a half-close, sha256 intact${faults ? ' on a lossy link' : ''}; MSS is MTU - 60`, () => {
      const up = bytes(2 * 1024 * 1024 + 5, 1);
      const down = bytes(1024 * 1024 + 3, 2);
      const gotUp: Uint8Array[] = [];
      const gotDown: Uint8Array[] = [];
      let moatSock: TcpSocket | undefined;
      let mss = 0;
      let upEnded = false;
      let downEnded = false;
      const link = new Link({
        seed: 7,
        ...(faults ? { faults } : {}),
        moatConfig: LINK_IPV6.moat,
        guestConfig: LINK_IPV6.guest,
        moatEvents: {
          onTcpSyn: (p) => {
            mss = p.syn.mss;
            expect(p.syn.src).toBe(GUEST_IP6);
            let off = 0;
            const pump = () => { while (off < down.length) { const n = moatSock!.write(down.subarray(off)); off += n; if (n === 0) return; } moatSock!.end(); };
            moatSock = p.accept({ onData: (d) => gotUp.push(d.slice()), onEnd: () => { upEnded = true; pump(); }, onDrain: pump, onClose: () => {} });
          },
          onUdp: () => {},
        },
        guestEvents: { onTcpSyn: (p) => p.refuse(), onUdp: () => {} },
      });
      let off = 0;
      let guest: TcpSocket | undefined;
      const pump = () => { while (off < up.length) { const n = guest!.write(up.subarray(off)); off += n; if (n === 0) return; } guest!.end(); };
      guest = link.guest.connectTcp(
        { from: GUEST_IP6, fromPort: 40000, to: HOST_ALIAS6, toPort: 5201 },
        { onData: (d) => gotDown.push(d.slice()), onEnd: () => { downEnded = true; }, onDrain: pump, onClose: () => {}, onConnect: pump },
      );
      expect(link.run(() => upEnded && downEnded, 600_000)).toBe(true);
      expect(sha(gotUp)).toBe(sha([up]));
      expect(sha(gotDown)).toBe(sha([down]));
      // The guest stack announces its own MSS over IPv6: 1500 - 60.
      expect(mss).toBe(1440);
    });
  }
});
