/**
 * `moat gvproxy` end to end inside one process: gvproxy's command line (as
 * podman machine builds it, plus -listen and -notification) through
 * runGvproxy, a guest speaking QEMU stream framing on -listen-qemu, and the
 * API's answers compared with gvproxy's own (test/fixtures/gvproxy/, derived
 * from gvisor-tap-vsock's Go types; see its README for the source files).
 */
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { request } from 'node:http';
import { connect, createServer, type AddressInfo, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chaddrFromMac, encodeDhcp, MsgType, Opt, type DhcpMessage } from '../../netstack/dhcp.js';
import type { CliIo } from '../../src/cli.js';
import { runGvproxy } from '../../src/gvproxy/run.js';
import { GUEST_MAC, udpFrame } from '../support/frames.js';
import { frameStream } from './shell-fakes.js';

const FIXTURES = join(process.cwd(), 'test/fixtures/gvproxy');
const fixture = (name: string): unknown => JSON.parse(readFileSync(join(FIXTURES, name), 'utf8'));

let dir: string;
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'moat-gvproxy-'));
});
afterEach(() => {
  rmSync(dir, { recursive: true, force: true });
});

function dhcp(type: number, extra: { code: number; data: Uint8Array }[] = []): Uint8Array {
  const m: DhcpMessage = {
    op: 1, htype: 1, hlen: 6, hops: 0, xid: 7, secs: 0, flags: 0, ciaddr: 0, yiaddr: 0, siaddr: 0, giaddr: 0,
    chaddr: chaddrFromMac(GUEST_MAC), sname: new Uint8Array(64), file: new Uint8Array(128),
    options: [{ code: Opt.MessageType, data: new Uint8Array([type]) }, ...extra],
  };
  return udpFrame(0, 68, 0xffffffff, 67, encodeDhcp(m), 0xffffffffffff);
}

function http(socketPath: string, method: string, path: string, body?: string): Promise<{ status: number; text: string }> {
  return new Promise((resolve, reject) => {
    const req = request({ socketPath, path, method }, (res) => {
      const parts: Buffer[] = [];
      res.on('data', (d: Buffer) => parts.push(d));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, text: Buffer.concat(parts).toString() }));
    });
    req.on('error', reject);
    req.end(body);
  });
}

async function until(cond: () => boolean | Promise<boolean>, what: string, timeoutMs = 5000): Promise<void> {
  const start = Date.now();
  while (!(await cond())) {
    if (Date.now() - start > timeoutMs) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

async function freePort(): Promise<number> {
  const s = createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', () => r()));
  const port = (s.address() as AddressInfo).port;
  await new Promise((r) => s.close(r));
  return port;
}

/** A --notification listener: every JSON line any connection sends. */
async function notificationListener(path: string): Promise<{ server: Server; messages: Record<string, unknown>[] }> {
  const messages: Record<string, unknown>[] = [];
  const server = createServer((c) => {
    let buf = '';
    c.setEncoding('utf8');
    c.on('data', (d: string) => (buf += d));
    c.on('end', () => {
      for (const line of buf.split('\n')) if (line !== '') messages.push(JSON.parse(line) as Record<string, unknown>);
    });
  });
  await new Promise<void>((r) => server.listen(path, () => r()));
  return { server, messages };
}

function cliIo(stop: Promise<string>): { io: CliIo; stderr: string[] } {
  const stderr: string[] = [];
  return {
    stderr,
    io: {
      stdout: { write: () => true },
      stderr: { write: (s: string) => stderr.push(s) },
      config: { readFile: () => '', readResolvConf: () => 'nameserver 127.0.0.1\n' },
      stopSignal: () => stop,
    },
  };
}

describe('moat gvproxy with podman machine\'s command line', () => {
  it('writes the pid file, serves gvproxy\'s API paths in gvproxy\'s shapes, notifies ready/connected, cleans up', async () => {
    const sshPort = await freePort();
    const key = join(dir, 'id_ed25519');
    writeFileSync(key, 'not a real key\n');
    const p = (n: string): string => join(dir, n);
    const events = await notificationListener(p('events.sock'));
    // pkg/machine/shim/networking.go + qemu StartNetworking (podman 5), then -listen and -notification.
    const argv = [
      '-mtu', '1500',
      '-ssh-port', String(sshPort),
      '-listen-qemu', `unix://${p('gvproxy.sock')}`,
      '-forward-sock', p('podman.sock'),
      '-forward-dest', '/run/podman/podman.sock',
      '-forward-user', 'root',
      '-forward-identity', key,
      '-pid-file', p('gvproxy.pid'),
      '-log-file', p('gvproxy.log'),
      '-listen', `unix://${p('api.sock')}`,
      '--notification', `unix://${p('events.sock')}`,
    ];
    let stop!: (s: string) => void;
    const { io } = cliIo(new Promise((r) => (stop = r)));
    // A fake ssh that fails at once: the forward keeps retrying and the network is unaffected.
    const done = runGvproxy(argv, io, { pid: 424242, ssh: { command: '/bin/false', minBackoffMs: 50, maxBackoffMs: 200 } });
    const api = p('api.sock');
    let guest: Socket | undefined;
    try {
      await until(() => existsSync(api) && existsSync(p('gvproxy.sock')), 'the API and guest sockets');
      expect(readFileSync(p('gvproxy.pid'), 'utf8')).toBe('424242');

      // /services/dns/all: gvproxy's two default zones, byte for byte as Go encodes them.
      const all = await http(api, 'GET', '/services/dns/all');
      expect(all.status).toBe(200);
      expect(JSON.parse(all.text)).toEqual(fixture('dns-all-default.json'));
      expect(all.text).toBe(JSON.stringify(fixture('dns-all-default.json')));
      // /services/dns/add with the body gvproxy's client sends: 200, no body; then listed as gvproxy lists it.
      const add = await http(api, 'POST', '/services/dns/add', readFileSync(join(FIXTURES, 'dns-add-request.json'), 'utf8'));
      expect(add).toEqual({ status: 200, text: '' });
      expect(JSON.parse((await http(api, 'GET', '/services/dns/all')).text)).toEqual(fixture('dns-all-after-add.json'));

      // /services/forwarder/all: the -ssh-port forward, in gvproxy's shape.
      const fwd = JSON.parse((await http(api, 'GET', '/services/forwarder/all')).text) as unknown;
      const expectedFwd = (fixture('forwarder-all-default.json') as { local: string }[]).map((f) => ({ ...f, local: `127.0.0.1:${sshPort}` }));
      expect(fwd).toEqual(expectedFwd);

      // A guest connects and takes a lease: /leases and /services/dhcp/leases agree, IP -> MAC.
      guest = await new Promise<Socket>((resolve) => {
        const s = connect(p('gvproxy.sock'), () => resolve(s));
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
      const want = { '192.168.127.2': '02:aa:bb:cc:dd:ee' };
      await until(async () => (await http(api, 'GET', '/leases')).text === JSON.stringify(want), '/leases');
      expect(JSON.parse((await http(api, 'GET', '/services/dhcp/leases')).text)).toEqual(want);
      // Same shape as gvproxy's: an object of IP -> MAC strings.
      const shape = fixture('leases-shape.json') as Record<string, string>;
      for (const [ip, mac] of Object.entries(want)) {
        expect(typeof ip).toBe(typeof Object.keys(shape)[0]);
        expect(mac).toMatch(/^([0-9a-f]{2}:){5}[0-9a-f]{2}$/);
      }

      // /stats carries gvproxy's byte counters (numbers; guest bytes in = BytesReceived).
      const stats = JSON.parse((await http(api, 'GET', '/stats')).text) as Record<string, unknown>;
      for (const k of Object.keys(fixture('stats-keys.json') as object)) expect(typeof stats[k]).toBe('number');
      expect(stats['BytesReceived']).toBeGreaterThan(0);

      // Notifications: ready, then the guest's MAC on its first frame.
      await until(() => events.messages.length >= 2, 'ready and connection_established');
      const [ready, established] = fixture('notifications.json') as Record<string, unknown>[];
      expect(events.messages[0]).toEqual(ready);
      expect(Object.keys(events.messages[1]!).sort()).toEqual(Object.keys(established!).sort());
      expect(events.messages[1]).toEqual({ notification_type: 'connection_established', mac_address: '02:aa:bb:cc:dd:ee' });
      guest.destroy();
      await until(() => events.messages.length >= 3, 'connection_closed');
      expect(events.messages[2]).toEqual({ notification_type: 'connection_closed', mac_address: '02:aa:bb:cc:dd:ee' });
    } finally {
      guest?.destroy();
      stop('SIGTERM');
      expect(await done).toBe(0);
      events.server.close();
    }
    // Removed on exit; the log went to -log-file.
    expect(existsSync(p('gvproxy.pid'))).toBe(false);
    const logText = readFileSync(p('gvproxy.log'), 'utf8');
    expect(logText).toContain('moat ready');
    expect(logText).toContain('moat stopped');
  });
});
