import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { mkdtempSync, rmSync } from 'node:fs';
import { request } from 'node:http';
import { connect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chaddrFromMac, encodeDhcp, MsgType, Opt, type DhcpMessage } from '../../netstack/dhcp.js';
import { parseServeArgs } from '../../src/config.js';
import { serve } from '../../src/serve.js';
import { GUEST_MAC, udpFrame } from '../support/frames.js';
import { captureLogger, frameStream } from './shell-fakes.js';

let dir: string;
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'moat-leases-'));
});
afterEach(() => {
  rmSync(dir, { recursive: true, force: true });
});

function dhcp(type: number, extra: { code: number; data: Uint8Array }[] = []): Uint8Array {
  const m: DhcpMessage = {
    op: 1, htype: 1, hlen: 6, hops: 0, xid: 42, secs: 0, flags: 0, ciaddr: 0, yiaddr: 0, siaddr: 0, giaddr: 0,
    chaddr: chaddrFromMac(GUEST_MAC), sname: new Uint8Array(64), file: new Uint8Array(128),
    options: [{ code: Opt.MessageType, data: new Uint8Array([type]) }, ...extra],
  };
  return udpFrame(0, 68, 0xffffffff, 67, encodeDhcp(m), 0xffffffffffff);
}

/** Polls an async condition (generous bound: a sanity limit, not a timing assertion). */
async function until(cond: () => Promise<boolean>, timeoutMs = 5000): Promise<void> {
  const start = Date.now();
  while (!(await cond())) {
    if (Date.now() - start > timeoutMs) throw new Error('until: timed out');
    await new Promise((r) => setTimeout(r, 10));
  }
}

export function getJson(socketPath: string, path: string): Promise<unknown> {
  return new Promise((resolve, reject) => {
    const req = request({ socketPath, path }, (res) => {
      const parts: Buffer[] = [];
      res.on('data', (d: Buffer) => parts.push(d));
      res.on('end', () => resolve(JSON.parse(Buffer.concat(parts).toString())));
    });
    req.on('error', reject);
    req.end();
  });
}

describe('DHCP leases outlive the guest connection', () => {
  it('/services/dhcp/leases still lists the lease after the guest disconnects (gvproxy keeps them)', async () => {
    const sock = join(dir, 'q.sock');
    const apiSock = join(dir, 'api.sock');
    const r = parseServeArgs(['--listen-qemu', `unix://${sock}`, '--api', `unix://${apiSock}`, '--dns-upstream', '127.0.0.1:5399'], {
      readFile: () => '',
      readResolvConf: () => undefined,
    });
    if (r.kind !== 'config') throw new Error('config expected');
    const running = await serve(r.config, captureLogger('info').log);
    try {
      const guest: Socket = await new Promise((resolve) => {
        const s = connect(sock, () => resolve(s));
      });
      guest.on('data', () => {});
      guest.write(frameStream([dhcp(MsgType.Discover)]));
      guest.write(
        frameStream([
          dhcp(MsgType.Request, [
            { code: Opt.RequestedIp, data: new Uint8Array([192, 168, 127, 2]) },
            { code: Opt.ServerId, data: new Uint8Array([192, 168, 127, 1]) },
          ]),
        ]),
      );
      const expected = { '192.168.127.2': '02:aa:bb:cc:dd:ee' };
      await until(async () => JSON.stringify(await getJson(apiSock, '/services/dhcp/leases')) === JSON.stringify(expected));
      guest.destroy();
      await until(async () => ((await getJson(apiSock, '/healthz')) as { guestConnected: boolean }).guestConnected === false);
      expect(await getJson(apiSock, '/services/dhcp/leases')).toEqual(expected);
    } finally {
      await running.close();
    }
  });
});
