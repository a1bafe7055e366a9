/**
 * Ask mode under `moat host`: each network's /decisions routes under
 * /networks/{name}/, its own pending table; a network without ask mode
 * answers 409. The guest is a byte stream on the network's socket.
 */
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { mkdtempSync, rmSync } from 'node:fs';
import { request } from 'node:http';
import { connect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { GUEST, GW_IP, udpFrame } from '../support/frames.js';
import { startHost, type RunningHost } from '../../src/host.js';
import { dnsQuery, startTestUpstream, type TestUpstream } from './allowlist-upstream.js';
import { captureLogger, frameStream } from './shell-fakes.js';

let dir: string;
let running: RunningHost;
let apiSock: string;
let upstream: TestUpstream;

async function startWith(workers: number): Promise<void> {
  const { log } = captureLogger('info');
  // Worker threads load the built host-worker.js: with workers, the built host (npm run build) runs.
  const start: typeof startHost = workers === 0 ? startHost : ((await import(new URL('../../dist/src/host.js', import.meta.url).href)) as { startHost: typeof startHost }).startHost;
  running = await start({ apiSocket: apiSock, maxNetworks: 3, workers, logLevel: 'info', logFormat: 'json' }, log, { configIo: { readFile: () => '', readResolvConf: () => undefined } });
}

beforeEach(async () => {
  dir = mkdtempSync(join(tmpdir(), 'moat-host-ask-'));
  apiSock = join(dir, 'api.sock');
  upstream = await startTestUpstream({ 'github.com': { a: ['192.0.2.10'] }, 'new.test': { a: ['192.0.2.11'] } });
});

afterEach(async () => {
  await running.close();
  await upstream.close();
  rmSync(dir, { recursive: true, force: true });
});

function call(method: string, path: string, body?: unknown): Promise<{ status: number; body: any }> {
  return new Promise((resolve, reject) => {
    const req = request({ socketPath: apiSock, method, path }, (res) => {
      const parts: Buffer[] = [];
      res.on('data', (d: Buffer) => parts.push(d));
      res.on('end', () => {
        const text = Buffer.concat(parts).toString();
        resolve({ status: res.statusCode!, body: text === '' ? undefined : JSON.parse(text) });
      });
    });
    req.on('error', reject);
    if (body !== undefined) req.write(JSON.stringify(body));
    req.end();
  });
}

describe.each([0, 1])('moat host (--workers %i): ask mode per network', (workers) => {
  it('GET /networks/{name}/decisions/pending and POST /networks/{name}/decisions/{id}; a network without ask mode: 409', async () => {
    await startWith(workers);
    const net = (name: string, extra: Record<string, unknown>) => ({ name, 'listen-qemu': `unix://${join(dir, `${name}.sock`)}`, allow: ['github.com'], resolver: `127.0.0.1:${upstream.port}`, ...extra });
    expect((await call('POST', '/networks', net('a', { 'on-unlisted': 'ask' }))).status).toBe(201);
    expect((await call('POST', '/networks', net('b', {}))).status).toBe(201);
    const sock: Socket = await new Promise((resolve, reject) => {
      const s = connect(join(dir, 'a.sock'), () => resolve(s));
      s.once('error', reject);
    });
    sock.write(frameStream([udpFrame(GUEST, 40001, GW_IP, 53, dnsQuery('new.test', 'A', 1))]));
    let pending: { id: string; name: string; proto: string }[] = [];
    for (let i = 0; i < 100 && pending.length === 0; i++) {
      pending = (await call('GET', '/networks/a/decisions/pending')).body;
      if (pending.length === 0) await new Promise((r) => setTimeout(r, 20));
    }
    expect(pending).toMatchObject([{ name: 'new.test', proto: 'dns' }]);
    expect((await call('GET', '/networks/b/decisions/pending')).status).toBe(409);
    expect((await call('POST', `/networks/b/decisions/${pending[0]!.id}`, { verdict: 'deny' })).status).toBe(409);
    const answered = await call("POST", `/networks/a/decisions/${pending[0]!.id}`, { verdict: "deny" });
    expect(answered.body, JSON.stringify(answered)).toMatchObject({ name: 'new.test', verdict: 'deny', waiters: 1 });
    expect((await call('GET', '/networks/a/decisions/pending')).body).toEqual([]);
    // The event stream is served where the network lives on the API thread; across a worker thread it is 501 (poll pending).
    if (workers > 0) expect((await call('GET', '/networks/a/decisions/events')).status).toBe(501);
    sock.destroy();
  });
});
