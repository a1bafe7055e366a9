import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { limitNotifier, NotificationSender, type NotificationMessage } from '../../src/notification.js';
import { captureLogger } from './shell-fakes.js';

let dir: string;
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'moat-notify-'));
});
afterEach(() => {
  rmSync(dir, { recursive: true, force: true });
});

function listen(path: string, onConn: (c: Socket) => void): Promise<Server> {
  const server = createServer(onConn);
  return new Promise((r) => server.listen(path, () => r(server)));
}

function collector(path: string): Promise<{ server: Server; lines: string[]; connections: number[] }> {
  const lines: string[] = [];
  const connections: number[] = [];
  return listen(path, (c) => {
    connections.push(1);
    let buf = '';
    c.setEncoding('utf8');
    c.on('data', (d: string) => (buf += d));
    c.on('end', () => lines.push(buf));
  }).then((server) => ({ server, lines, connections }));
}

describe('--notification sender', () => {
  it('one connection per event, one JSON line each, in order (gvproxy sendToSocket)', async () => {
    const path = join(dir, 'n.sock');
    const c = await collector(path);
    const { log } = captureLogger('info');
    const s = new NotificationSender(path, log);
    s.send({ notification_type: 'ready' });
    s.send({ notification_type: 'connection_established', mac_address: '5a:94:ef:e4:0c:ee' });
    await s.flushed();
    await new Promise((r) => setTimeout(r, 50));
    expect(c.lines).toEqual(['{"notification_type":"ready"}\n', '{"notification_type":"connection_established","mac_address":"5a:94:ef:e4:0c:ee"}\n']);
    expect(c.connections.length).toBe(2);
    expect(s.stats).toMatchObject({ sent: 2, failed: 0, dropped: 0 });
    await s.close();
    c.server.close();
  });

  it('no listener: every failure counted, one log line for the run of failures, never a throw; recovers when one listens', async () => {
    const path = join(dir, 'absent.sock');
    const { log, lines } = captureLogger('info');
    const s = new NotificationSender(path, log);
    for (let i = 0; i < 5; i++) s.send({ notification_type: 'limit_hit', limit: 'tcpFlows' });
    await s.flushed();
    expect(s.stats).toMatchObject({ sent: 0, failed: 5 });
    expect(lines.filter((l) => String(l['msg']).startsWith('notification not delivered')).length).toBe(1);
    const c = await collector(path);
    s.send({ notification_type: 'ready' });
    await s.flushed();
    expect(s.stats.sent).toBe(1);
    expect(lines.some((l) => l['msg'] === 'notification socket reachable again')).toBe(true);
    await s.close();
    c.server.close();
  });

  it('a listener that never reads or closes costs at most the timeout per event', async () => {
    const path = join(dir, 'stuck.sock');
    const held: Socket[] = [];
    // Accepts and holds the connection; the sender ends its side and moves on once written.
    const server = await listen(path, (c) => held.push(c));
    const s = new NotificationSender(path, captureLogger('info').log, { timeoutMs: 200 });
    s.send({ notification_type: 'ready' });
    await s.flushed();
    expect(s.stats.sent + s.stats.failed).toBe(1);
    await s.close();
    for (const c of held) c.destroy();
    server.close();
  });

  it('the queue is bounded: past maxQueue events are dropped and counted, one log line per burst', async () => {
    const path = join(dir, 'slow.sock');
    const { log, lines } = captureLogger('info');
    const s = new NotificationSender(path, log, { maxQueue: 10 });
    // The first event is taken off the queue at once (its delivery is in flight); 10 more wait, the rest drop.
    for (let i = 0; i < 50; i++) s.send({ notification_type: 'limit_hit', limit: `l${i}` } as NotificationMessage);
    expect(s.stats.dropped).toBe(39);
    expect(lines.filter((l) => l['msg'] === 'notification queue full: event dropped').length).toBe(1);
    await s.flushed();
    expect(s.stats.failed).toBe(11);
    await s.close();
  });

  it('limit_hit at most once per interval per limit', () => {
    const sent: NotificationMessage[] = [];
    let t = 0;
    const notify = limitNotifier({ send: (m) => sent.push(m) }, 10_000, () => t);
    notify('tcpFlows');
    notify('tcpFlows');
    notify('udpFlows');
    t = 10_001;
    notify('tcpFlows');
    expect(sent).toEqual([
      { notification_type: 'limit_hit', limit: 'tcpFlows' },
      { notification_type: 'limit_hit', limit: 'udpFlows' },
      { notification_type: 'limit_hit', limit: 'tcpFlows' },
    ]);
  });
});
