/**
 * The API thread's side of `moat host --workers`: names, placement and a
 * worker's death, against stand-in workers (a small script speaking the
 * worker messages; the real worker is covered end to end by
 * test/e2e/host.test.ts with --workers 2). A stand-in exits when it is sent a
 * request for a network named "die".
 */
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { Readable } from 'node:stream';
import type { IncomingMessage } from 'node:http';
import { dispatch } from '../../src/api-server.js';
import { WorkerPool } from '../../src/host-workers.js';
import { captureLogger } from './shell-fakes.js';

const STAND_IN = `
import { parentPort, workerData } from 'node:worker_threads';
const networks = new Map();
parentPort.on('message', (m) => {
  const reply = (status, body) => parentPort.postMessage({ id: m.id, status, body });
  if (m.op === 'list') return reply(200, [...networks.values()]);
  if (m.op === 'close') return reply(200, null);
  const body = m.body.length ? JSON.parse(Buffer.from(m.body).toString()) : undefined;
  if (m.method === 'POST' && m.url === '/networks') {
    const s = { name: body.name, state: 'running', listen: [], guestConnected: false };
    networks.set(body.name, s);
    return reply(201, s);
  }
  const name = m.url.split('/')[2];
  if (name === 'die') process.exit(3);
  if (m.method === 'DELETE') { networks.delete(name); return reply(200, { name, removed: true }); }
  return reply(200, { ...networks.get(name), seenBy: workerData.index });
});
parentPort.postMessage({ id: 0, status: 200, body: 'ready' });
`;

const IO = { readFile: () => '', readResolvConf: () => undefined };
let dir: string;
let pool: WorkerPool;

beforeEach(async () => {
  dir = mkdtempSync(join(tmpdir(), 'moat-workers-'));
  const script = join(dir, 'stand-in.mjs');
  writeFileSync(script, STAND_IN);
  pool = await WorkerPool.start(captureLogger('info').log, {
    workers: 2,
    maxNetworks: 3,
    logLevel: 'info',
    logFormat: 'json',
    configIo: IO,
    workerUrl: pathToFileURL(script),
  });
});

afterEach(async () => {
  await pool.close();
  rmSync(dir, { recursive: true, force: true });
});

function call(method: string, url: string, body?: unknown): Promise<{ status: number; body: any }> {
  const bytes = body === undefined ? [] : [Buffer.from(JSON.stringify(body))];
  const req = Readable.from(bytes) as unknown as IncomingMessage;
  Object.assign(req, { method, url, headers: {} });
  return dispatch(pool, req, captureLogger('info').log);
}

const net = (name: string) => ({ name, 'listen-qemu': `unix:///tmp/${name}.sock` });

describe('WorkerPool', () => {
  it('places networks on the worker holding the fewest, keeps names unique and bounded, routes each request to its worker', async () => {
    expect((await call('POST', '/networks', net('a'))).body).toMatchObject({ name: 'a', worker: 0 });
    expect((await call('POST', '/networks', net('b'))).body).toMatchObject({ name: 'b', worker: 1 });
    expect((await call('POST', '/networks', net('a'))).status).toBe(409);
    expect((await call('POST', '/networks', { name: 'x y' })).status).toBe(400);
    expect((await call('POST', '/networks', net('c'))).body).toMatchObject({ worker: 0 });
    expect((await call('POST', '/networks', net('d'))).status).toBe(503);
    expect((await call('GET', '/networks/b/stats')).body).toMatchObject({ name: 'b', seenBy: 1 });
    expect((await call('GET', '/networks/nope')).status).toBe(404);
    expect((await call('GET', '/networks')).body.map((n: { name: string; worker: number }) => [n.name, n.worker])).toEqual([
      ['a', 0],
      ['b', 1],
      ['c', 0],
    ]);
    expect((await call('DELETE', '/networks/a')).status).toBe(200);
    expect((await call('GET', '/networks/a')).status).toBe(404);
  });

  it("a worker that dies takes only its networks: they are listed failed with why until deleted, the other worker serves on", async () => {
    await call('POST', '/networks', net('die')); // worker 0
    await call('POST', '/networks', net('other')); // worker 1
    await call('POST', '/networks', net('sibling')); // worker 0 (fewest: 1 each, the first)
    const r = await call('GET', '/networks/die/stats');
    expect(r.status).toBe(503);
    const list = (await call('GET', '/networks')).body as { name: string; state: string; failure?: string }[];
    expect(list.map((n) => [n.name, n.state])).toEqual([
      ['die', 'failed'],
      ['other', 'running'],
      ['sibling', 'failed'],
    ]);
    expect(list[0]!.failure).toContain('worker 0');
    expect((await call('GET', '/networks/other/stats')).body).toMatchObject({ name: 'other', seenBy: 1 });
    // New networks go to the live worker; deleting a failed one frees its name.
    expect((await call('POST', '/networks', net('new'))).status).toBe(503); // 3 names held: die, other, sibling
    expect((await call('DELETE', '/networks/die')).status).toBe(200);
    expect((await call('POST', '/networks', net('new'))).body).toMatchObject({ worker: 1 });
  });
});
