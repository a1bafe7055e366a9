/**
 * `moat serve --notification`: the events a service sends besides the guest's
 * own (those are in gvproxy-api.test.ts): ready, allowlist_reloaded (PUT
 * /allowlist), limit_hit (an API body over --api-max-body-bytes). And the
 * flag's validation.
 */
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { mkdtempSync, rmSync } from 'node:fs';
import { request } from 'node:http';
import { createServer, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ConfigError, parseServeArgs } from '../../src/config.js';
import { serve } from '../../src/serve.js';
import { captureLogger } from './shell-fakes.js';

const IO = { readFile: () => '', readResolvConf: () => 'nameserver 127.0.0.1\n' };

let dir: string;
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'moat-notify-serve-'));
});
afterEach(() => {
  rmSync(dir, { recursive: true, force: true });
});

function put(socketPath: string, path: string, body: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const req = request({ socketPath, path, method: 'PUT' }, (res) => {
      res.resume();
      res.on('end', () => resolve(res.statusCode ?? 0));
    });
    req.on('error', reject);
    req.end(body);
  });
}

async function until(cond: () => boolean, what: string): Promise<void> {
  const start = Date.now();
  while (!cond()) {
    if (Date.now() - start > 5000) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

describe('moat serve --notification', () => {
  it('validates the flag: unix:///PATH only', () => {
    const base = ['--listen-qemu', 'unix:///tmp/q.sock'];
    const r = parseServeArgs([...base, '--notification', 'unix:///run/ev.sock'], IO);
    expect(r.kind === 'config' && r.config.notification).toBe('/run/ev.sock');
    expect(() => parseServeArgs([...base, '--notification', 'tcp://127.0.0.1:9'], IO)).toThrow(ConfigError);
    expect(() => parseServeArgs([...base, '--notification', 'tcp://127.0.0.1:9'], IO)).toThrow(/^--notification: must be a unix:\/\/\/PATH address/);
    expect(() => parseServeArgs([...base, '--notification', 'unix://relative'], IO)).toThrow(/^--notification: a unix socket needs an absolute path/);
  });

  it('sends ready, allowlist_reloaded on PUT /allowlist, and limit_hit when a limit refuses', async () => {
    const events: Record<string, unknown>[] = [];
    const listener: Server = createServer((c) => {
      let buf = '';
      c.setEncoding('utf8');
      c.on('data', (d: string) => (buf += d));
      c.on('end', () => events.push(JSON.parse(buf) as Record<string, unknown>));
    });
    await new Promise<void>((r) => listener.listen(join(dir, 'ev.sock'), () => r()));
    const api = join(dir, 'api.sock');
    const r = parseServeArgs(
      [
        '--listen-qemu', `unix://${join(dir, 'q.sock')}`,
        '--api', `unix://${api}`,
        '--notification', `unix://${join(dir, 'ev.sock')}`,
        // IP rules: nothing to resolve.
        '--allow', '192.168.127.254:9',
        '--api-max-body-bytes', '1024',
      ],
      IO,
    );
    if (r.kind !== 'config') throw new Error('config expected');
    const running = await serve(r.config, captureLogger('info').log);
    try {
      await until(() => events.length >= 1, 'ready');
      expect(events[0]).toEqual({ notification_type: 'ready' });
      expect(await put(api, '/allowlist', JSON.stringify({ allow: ['192.168.127.254:10', '192.168.127.254:11'] }))).toBe(200);
      await until(() => events.length >= 2, 'allowlist_reloaded');
      expect(events[1]).toEqual({ notification_type: 'allowlist_reloaded', rules: 2, dropped: 0 });
      expect(await put(api, '/allowlist', 'x'.repeat(4096))).toBe(413);
      await until(() => events.length >= 3, 'limit_hit');
      expect(events[2]).toEqual({ notification_type: 'limit_hit', limit: 'apiBody' });
      expect((running.stats() as { notifications: { sent: number } }).notifications.sent).toBe(3);
    } finally {
      await running.close();
      listener.close();
    }
  });
});
