import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseServeArgs } from '../../src/config.js';
import { serve } from '../../src/serve.js';
import { GUEST, GW_IP, udpFrame } from '../support/frames.js';
import { captureLogger, frameStream } from './shell-fakes.js';

let dir: string;
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'moat-fault-'));
});
afterEach(() => {
  delete process.env['MOAT_TEST_FAULT'];
  rmSync(dir, { recursive: true, force: true });
});

describe('a fault inside the network under moat serve', () => {
  it('closes the network, logs why and ends the run through linkLost instead of throwing out of the socket callback', async () => {
    process.env['MOAT_TEST_FAULT'] = 'MOAT-UNIT-FAULT';
    const sock = join(dir, 'q.sock');
    const r = parseServeArgs(['--listen-qemu', `unix://${sock}`, '--dns-upstream', '127.0.0.1:9'], { readFile: () => '', readResolvConf: () => undefined });
    if (r.kind !== 'config') throw new Error('config expected');
    const { log, lines } = captureLogger('info');
    const running = await serve(r.config, log);
    try {
      const guest: Socket = await new Promise((resolve) => {
        const s = connect(sock, () => resolve(s));
      });
      guest.on('error', () => {});
      guest.write(frameStream([udpFrame(GUEST, 9, GW_IP, 9, Buffer.from('..MOAT-UNIT-FAULT..'))]));
      expect(await running.linkLost).toBe('fault: injected fault (MOAT_TEST_FAULT)');
      expect(lines.some((l) => l['level'] === 'error' && l['msg'] === 'network fault: closing this network')).toBe(true);
      // The network closed itself: its socket is gone.
      expect(existsSync(sock)).toBe(false);
      guest.destroy();
    } finally {
      await running.close();
    }
  });
});
