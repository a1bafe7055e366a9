import { describe, it, expect } from 'vitest';
import { TcpConnection } from '../../netstack/tcp/connection.js';
import { Network, Recorder, MIRROR, SMALL_CONFIG } from './tcp-harness.js';

describe('smoke', () => {
  it('handshake and transfer over a clean link', () => {
    const net = new Network({ drop: 0, duplicate: 0, reorder: 0, delayMs: 1, jitterMs: 0 }, 1);
    const ra = new Recorder();
    const rb = new Recorder();
    net.listener = { config: SMALL_CONFIG, handlers: ra };
    net.b = TcpConnection.connect(net.hostB, SMALL_CONFIG, MIRROR, rb);
    expect(net.run(() => rb.connected && net.a?.state === 'ESTABLISHED', 10_000)).toBe(true);
    const data = new Uint8Array(200_000).map((_, i) => (i * 7) & 0xff);
    let off = 0;
    const pump = () => { while (off < data.length) { const n = net.b.write(data.subarray(off)); off += n; if (n === 0) break; } if (off === data.length) net.b.end(); };
    rb.onDrain = () => { rb.drains++; pump(); };
    pump();
    expect(net.run(() => ra.ended, 100_000)).toBe(true);
    expect(ra.data()).toEqual(data);
    net.a!.end();
    expect(net.run(() => ra.closed !== null && rb.closed !== null, 200_000)).toBe(true);
    expect([ra.closed, rb.closed]).toEqual(['closed', 'closed']);
  });
});
