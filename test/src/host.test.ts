/**
 * `moat host` over its control API, with the real stack and NAT: networks
 * created, listed, read and deleted; every bad field of a POST named; two
 * networks with different allowlists answering the same name differently;
 * a fault in one network leaving the other serving. Guests are byte streams
 * on each network's unix socket (QEMU stream framing).
 */
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { request } from 'node:http';
import { connect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { GUEST, GW_IP, HOST_ALIAS, udpFrame } from '../support/frames.js';
import { FrameDecoder } from '../../src/transport/frame-decoder.js';
import { startHost, type RunningHost } from '../../src/host.js';
import { host as embedHost, NetworkConfigError, NetworkExistsError } from '../../src/index.js';
import { decodeAnswer, dnsQuery, startTestUpstream, type TestUpstream } from './allowlist-upstream.js';
import { captureLogger, frameStream } from './shell-fakes.js';
import { EXIT_OK, EXIT_USAGE, runCli, type CliIo } from '../../src/cli.js';
import { defaultWorkers, HOST_FLAGS, MAX_WORKERS, parseHostArgs } from '../../src/host-config.js';
import { availableParallelism } from 'node:os';

const IO = { readFile: () => '', readResolvConf: () => undefined };

let dir: string;
let running: RunningHost;
let apiSock: string;
let upstream: TestUpstream;
let logLines: Record<string, unknown>[];

beforeEach(async () => {
  dir = mkdtempSync(join(tmpdir(), 'moat-host-'));
  apiSock = join(dir, 'api.sock');
  upstream = await startTestUpstream({ 'github.com': { a: ['192.0.2.10'] }, 'example.com': { a: ['192.0.2.40'] } });
  const { log, lines } = captureLogger('info');
  logLines = lines;
  running = await startHost({ apiSocket: apiSock, maxNetworks: 3, workers: 0, logLevel: 'info', logFormat: 'json' }, log, { configIo: IO });
});

afterEach(async () => {
  await running.close();
  await upstream.close();
  delete process.env['MOAT_TEST_FAULT'];
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
    if (body !== undefined) req.write(typeof body === 'string' ? body : JSON.stringify(body));
    req.end();
  });
}

function network(name: string, extra: Record<string, unknown> = {}): Record<string, unknown> {
  return { name, 'listen-qemu': `unix://${join(dir, `${name}.sock`)}`, 'dns-upstream': '127.0.0.1:9', ...extra };
}

/** A guest on a network's socket: sends frames, collects the frames it gets back. */
async function guest(name: string): Promise<{ sock: Socket; frames: Uint8Array[] }> {
  const sock: Socket = await new Promise((resolve, reject) => {
    const s = connect(join(dir, `${name}.sock`), () => resolve(s));
    s.once('error', reject);
  });
  const frames: Uint8Array[] = [];
  const decoder = new FrameDecoder();
  sock.on('data', (d: Buffer) => {
    for (const f of decoder.push(d)) frames.push(new Uint8Array(f));
  });
  return { sock, frames };
}

async function until(cond: () => boolean | Promise<boolean>, timeoutMs = 5000): Promise<void> {
  const start = Date.now();
  while (!(await cond())) {
    if (Date.now() - start > timeoutMs) throw new Error('until: timed out');
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** The guest asks the gateway for `name` (A) and gets the addresses of the answer. */
async function lookup(g: { sock: Socket; frames: Uint8Array[] }, name: string, id: number): Promise<string[]> {
  g.sock.write(frameStream([udpFrame(GUEST, 40000 + id, GW_IP, 53, dnsQuery(name, 'A', id))]));
  let answer: ReturnType<typeof decodeAnswer> | undefined;
  await until(() => {
    for (const f of g.frames) {
      // Ethernet 14 + IPv4 20 (no options from the gateway) + UDP 8.
      if (f.length < 42 || f[23] !== 17 || ((f[34]! << 8) | f[35]!) !== 53) continue;
      const a = decodeAnswer(f.subarray(42));
      if (a.id === id) answer = a;
    }
    return answer !== undefined;
  });
  return answer!.addresses;
}

describe('moat host: networks over the control API', () => {
  it('creates, lists, reads and deletes networks; each has its own serve API under /networks/{name}/', async () => {
    // The control socket is owner-only: it creates listeners and writes files.
    expect(statSync(apiSock).mode & 0o777).toBe(0o600);
    const a = await call('POST', '/networks', network('a'));
    expect(a.status).toBe(201);
    expect(a.body).toMatchObject({ name: 'a', state: 'running', listen: [`unix://${join(dir, 'a.sock')}`], guestConnected: false });
    expect((await call('POST', '/networks', network('b', { mtu: 9000 }))).status).toBe(201);

    const list = await call('GET', '/networks');
    expect(list.body.map((n: { name: string }) => n.name)).toEqual(['a', 'b']);
    const b = await call('GET', '/networks/b');
    expect(b.status).toBe(200);
    expect(b.body).toMatchObject({ name: 'b', state: 'running', config: expect.objectContaining({ mtu: 9000 }) });

    expect((await call('GET', '/networks/a/stats')).body).toMatchObject({ frames: { in: 0, out: 0 } });
    expect((await call('GET', '/networks/a/services/dhcp/leases')).body).toEqual({});
    expect((await call('GET', '/networks/a/services/forwarder/all')).body).toEqual([]);
    expect((await call('GET', '/networks/a/healthz')).body).toEqual({ status: 'ok', guestConnected: false });
    expect((await call('GET', '/networks/nope/stats')).status).toBe(404);
    expect((await call('GET', '/networks/nope')).status).toBe(404);

    const del = await call('DELETE', '/networks/a');
    expect(del).toEqual({ status: 200, body: { name: 'a', removed: true } });
    expect((await call('GET', '/networks/a')).status).toBe(404);
    expect(existsSync(join(dir, 'a.sock'))).toBe(false); // its socket is freed
    expect((await call('DELETE', '/networks/a')).status).toBe(404);
    // The name is free again, and so is the socket path.
    expect((await call('POST', '/networks', network('a'))).status).toBe(201);
  });

  it('answers 409 for a name in use and 503 beyond --max-networks', async () => {
    // Two requests for one name at once: the name is taken while the first starts, so exactly one wins.
    const racing = await Promise.all([call('POST', '/networks', network('a')), call('POST', '/networks', { ...network('a'), 'listen-qemu': `unix://${join(dir, 'a2.sock')}` })]);
    expect(racing.map((r) => r.status).sort()).toEqual([201, 409]);
    const again = await call('POST', '/networks', { ...network('a'), 'listen-qemu': `unix://${join(dir, 'other.sock')}` });
    expect(again.status).toBe(409);
    expect(again.body.error).toContain('"a"');
    expect((await call('POST', '/networks', network('b'))).status).toBe(201);
    expect((await call('POST', '/networks', network('c'))).status).toBe(201);
    const full = await call('POST', '/networks', network('d'));
    expect(full.status).toBe(503);
    expect(full.body.error).toContain('--max-networks');
  });

  it('answers 400 naming every bad field of a POST body at once', async () => {
    const bad = await call('POST', '/networks', {
      name: 'no spaces please',
      mtu: 'big',
      subnet: '10.0.0.0/33',
      allow: ['*.'],
      bogus: 1,
      api: 'unix:///tmp/x.sock',
      tapFd: 3,
    });
    expect(bad.status).toBe(400);
    const fields = (bad.body.errors as { field: string; error: string }[]).map((e) => e.field).sort();
    expect(fields).toEqual(['allow', 'api', 'bogus', 'listen-qemu', 'mtu', 'name', 'subnet', 'tapFd']);
    for (const field of fields) expect(bad.body.error).toContain(`${field}:`);

    // A value valid only with another setting is not reported by mistake: only the bad mtu is.
    const one = await call('POST', '/networks', network('n', { subnet: '10.9.0.0/24', forward: ['127.0.0.1:2222=10.9.0.2:22'], mtu: 70000 }));
    expect(one.status).toBe(400);
    expect(one.body.errors.map((e: { field: string }) => e.field)).toEqual(['mtu']);

    expect((await call('POST', '/networks', '[1,2]')).body.errors).toEqual([{ field: 'body', error: expect.any(String) }]);
    expect((await call('POST', '/networks', 'not json')).status).toBe(400);
    expect((await call('GET', '/networks')).body).toEqual([]); // nothing was created
  });

  it('gives each network its own allowlist: a name allowed for one is sinkholed for the other', async () => {
    const resolver = `127.0.0.1:${upstream.port}`;
    const decisionFile = join(dir, 'a-decisions.jsonl');
    expect((await call('POST', '/networks', network('a', { allow: ['github.com'], resolver, 'decision-log': decisionFile }))).status).toBe(201);
    expect((await call('POST', '/networks', network('b', { allow: ['example.com'], resolver }))).status).toBe(201);
    const seen: { network?: string; dst: string }[] = [];
    running.networks.get('b')!.decisions!.subscribe((r) => seen.push(r));
    const ga = await guest('a');
    const gb = await guest('b');
    try {
      expect(await lookup(ga, 'github.com', 1)).toEqual(['192.0.2.10']);
      expect(await lookup(gb, 'github.com', 2)).toEqual(['0.0.0.0']);
      expect(await lookup(gb, 'example.com', 3)).toEqual(['192.0.2.40']);
      expect(await lookup(ga, 'example.com', 4)).toEqual(['0.0.0.0']);
      // Each network's counters are its own.
      const sa = (await call('GET', '/networks/a/stats')).body;
      const sb = (await call('GET', '/networks/b/stats')).body;
      expect(sa.frames.in).toBe(2);
      expect(sb.frames.in).toBe(2);
      // Log lines and decision records name their network.
      expect(logLines.some((l) => l['network'] === 'b' && l['msg'] === 'network ready')).toBe(true);
      expect(seen.map((r) => [r.network, r.dst])).toEqual([
        ['b', 'github.com'],
        ['b', 'example.com'],
      ]);
      await until(() => existsSync(decisionFile) && readFileSync(decisionFile, 'utf8').split('\n').filter(Boolean).length === 2);
      const records = readFileSync(decisionFile, 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l) as { network: string; dst: string });
      expect(records.map((r) => [r.network, r.dst])).toEqual([
        ['a', 'github.com'],
        ['a', 'example.com'],
      ]);
    } finally {
      ga.sock.destroy();
      gb.sock.destroy();
    }
  });

  it("one guest filling its flow table leaves another network's table empty and open", async () => {
    expect((await call('POST', '/networks', network('a', { 'max-udp-flows': 2 }))).status).toBe(201);
    expect((await call('POST', '/networks', network('b', { 'max-udp-flows': 2 }))).status).toBe(201);
    const ga = await guest('a');
    const gb = await guest('b');
    try {
      // Guest a: five UDP flows to the host alias (127.0.0.1, discard port numbers nobody listens on); two fit.
      ga.sock.write(frameStream([1, 2, 3, 4, 5].map((n) => udpFrame(GUEST, 41000 + n, HOST_ALIAS, 9, Buffer.from('x')))));
      await until(async () => (await call('GET', '/networks/a/stats')).body.limits.udpFlows.refused === 3);
      gb.sock.write(frameStream([udpFrame(GUEST, 42000, HOST_ALIAS, 9, Buffer.from('y'))]));
      await until(async () => (await call('GET', '/networks/b/stats')).body.limits.udpFlows.current === 1);
      const b = (await call('GET', '/networks/b/stats')).body.limits.udpFlows;
      expect(b).toMatchObject({ max: 2, current: 1, refused: 0 });
      expect((await call('GET', '/networks/a/stats')).body.limits.udpFlows).toMatchObject({ max: 2, current: 2, refused: 3 });
    } finally {
      ga.sock.destroy();
      gb.sock.destroy();
    }
  });

  it('a fault inside one network closes that network only, says why, and the other keeps serving', async () => {
    process.env['MOAT_TEST_FAULT'] = 'MOAT-INJECT-FAULT';
    const resolver = `127.0.0.1:${upstream.port}`;
    expect((await call('POST', '/networks', network('a', { allow: ['github.com'], resolver }))).status).toBe(201);
    expect((await call('POST', '/networks', network('b', { allow: ['github.com'], resolver }))).status).toBe(201);
    const ga = await guest('a');
    const gb = await guest('b');
    try {
      ga.sock.write(frameStream([udpFrame(GUEST, 9, GW_IP, 9, Buffer.from('xxMOAT-INJECT-FAULTxx'))]));
      await until(async () => (await call('GET', '/networks/a')).body.state === 'failed');
      const a = (await call('GET', '/networks/a')).body;
      expect(a.failure).toContain('injected fault');
      expect(logLines.some((l) => l['level'] === 'error' && l['network'] === 'a' && String(l['msg']).includes('fault'))).toBe(true);
      // Its guest socket is closed; the other network still answers.
      expect(existsSync(join(dir, 'a.sock'))).toBe(false);
      expect(await lookup(gb, 'github.com', 7)).toEqual(['192.0.2.10']);
      expect((await call('GET', '/networks/b')).body.state).toBe('running');
      // A failed network stays listed until deleted, and deleting it frees the name.
      expect((await call('DELETE', '/networks/a')).status).toBe(200);
      expect((await call('GET', '/networks')).body.map((n: { name: string }) => n.name)).toEqual(['b']);
    } finally {
      ga.sock.destroy();
      gb.sock.destroy();
    }
  });
});

describe('host() in-process', () => {
  it('adds and removes networks; bad settings reject with every field named; a name in use is refused', async () => {
    const h = await embedHost({}, { configIo: IO });
    try {
      const n = await h.addNetwork({ name: 'x', listenQemu: `unix://${join(dir, 'x.sock')}`, dnsUpstream: '127.0.0.1:9' });
      expect(n.name).toBe('x');
      expect(n.state).toBe('running');
      expect(n.leases()).toEqual([]);
      expect(h.networks().map((s) => s.name)).toEqual(['x']);
      await expect(h.addNetwork({ name: 'x', listenQemu: `unix://${join(dir, 'y.sock')}` })).rejects.toBeInstanceOf(NetworkExistsError);
      const err = await h.addNetwork({ name: 'y', mtu: 1, listenQemu: 'ftp://x' }).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(NetworkConfigError);
      expect((err as NetworkConfigError).errors.map((e) => e.field).sort()).toEqual(['listenQemu', 'mtu']);
      expect(await h.removeNetwork('x')).toBe(true);
      expect(await h.removeNetwork('x')).toBe(false);
      expect(existsSync(join(dir, 'x.sock'))).toBe(false);
    } finally {
      await h.close();
    }
  });
});

describe('moat host on the command line', () => {
  function fakeIo(stop: Promise<string> = new Promise(() => {})): CliIo & { out: string[]; err: string[] } {
    const out: string[] = [];
    const err: string[] = [];
    return {
      out,
      err,
      stdout: { write: (s: string) => out.push(s) },
      stderr: { write: (s: string) => err.push(s) },
      config: IO,
      stopSignal: () => stop,
    };
  }

  it('--help names every flag and the API paths; no --api or a bad flag exits 2 naming it', async () => {
    const io = fakeIo();
    expect(await runCli(['host', '--help'], io)).toBe(EXIT_OK);
    for (const f of HOST_FLAGS) expect(io.out.join('')).toContain(`--${f.name}`);
    expect(io.out.join('')).toContain('DELETE /networks/{name}');
    const none = fakeIo();
    expect(await runCli(['host'], none)).toBe(EXIT_USAGE);
    expect(none.err.join('')).toContain('--api');
    const bad = fakeIo();
    expect(await runCli(['host', '--api', `unix://${join(dir, 'h.sock')}`, '--max-networks', '0'], bad)).toBe(EXIT_USAGE);
    expect(bad.err.join('')).toContain('--max-networks');
    const workers = fakeIo();
    expect(await runCli(['host', '--api', `unix://${join(dir, 'h.sock')}`, '--workers', '65'], workers)).toBe(EXIT_USAGE);
    expect(workers.err.join('')).toContain('--workers');
  });

  it('without --workers, one worker per core (none on a 1-core machine); --workers 0 keeps networks on the API thread; host() in-process never uses workers', async () => {
    expect(defaultWorkers(1)).toBe(0);
    expect(defaultWorkers(2)).toBe(2);
    expect(defaultWorkers(8)).toBe(8);
    expect(defaultWorkers(1000)).toBe(MAX_WORKERS);
    const parsed = (args: string[]) => {
      const p = parseHostArgs(['--api', `unix://${join(dir, 'h.sock')}`, ...args], IO);
      if (p.kind !== 'config') throw new Error('help');
      return p.config.workers;
    };
    expect(parsed([])).toBe(defaultWorkers(availableParallelism()));
    expect(parsed(['--workers', '0'])).toBe(0);
    expect(parsed(['--workers=3'])).toBe(3);
    const io = fakeIo();
    expect(await runCli(['host', '--help'], io)).toBe(EXIT_OK);
    expect(io.out.join('')).toContain('Default: the number of cores');
    // The library keeps its networks on the caller's thread whatever the core count.
    const h = await embedHost({ maxNetworks: 1 }, { configIo: IO });
    try {
      expect((await h.addNetwork({ name: 'inproc', ...network('inproc') } as never)).name).toBe('inproc');
    } finally {
      await h.close();
    }
  });

  // The two tests below run the CLI in this process with fake I/O, so they keep the networks on this thread.
  it('gives each network a log budget of its own: a flood in one does not silence another', async () => {
    let stop!: (s: string) => void;
    const io = fakeIo(new Promise((r) => (stop = r)));
    const sock = join(dir, 'cli-log.sock');
    const done = runCli(['host', '--api', `unix://${sock}`, '--workers', '0', '--log-format', 'json'], io);
    await until(() => existsSync(sock));
    const saved = apiSock;
    apiSock = sock;
    try {
      // IP rules need no resolver. Network a may write 2 lines and then 1 a second; b has the defaults.
      expect((await call('POST', '/networks', network('a', { allow: ['192.0.2.1'], resolver: '127.0.0.1:9', 'log-line-burst': 2, 'log-lines-per-sec': 1 }))).status).toBe(201);
      expect((await call('POST', '/networks', network('b', { allow: ['192.0.2.1'], resolver: '127.0.0.1:9' }))).status).toBe(201);
      // Each refused reload logs one warning in its network.
      for (let i = 0; i < 10; i++) expect((await call('PUT', '/networks/a/allowlist', { allow: ['*.'] })).status).toBe(400);
      expect((await call('PUT', '/networks/b/allowlist', { allow: ['*.'] })).status).toBe(400);
    } finally {
      apiSock = saved;
    }
    stop('SIGTERM');
    expect(await done).toBe(EXIT_OK);
    const lines = io.err
      .join('')
      .split('\n')
      .filter((l) => l.startsWith('{'))
      .map((l) => JSON.parse(l) as Record<string, unknown>);
    const refused = (net: string) => lines.filter((l) => l['network'] === net && l['msg'] === 'allowlist reload refused; the running allowlist is unchanged').length;
    expect(refused('a')).toBeLessThan(10); // a's own budget held its flood back
    expect(refused('b')).toBe(1); // and b's line still came out
  });

  it('runs until SIGTERM with its API up, then closes every network', async () => {
    let stop!: (s: string) => void;
    const io = fakeIo(new Promise((r) => (stop = r)));
    const sock = join(dir, 'cli.sock');
    const done = runCli(['host', '--api', `unix://${sock}`, '--workers', '0', '--log-level', 'error'], io);
    await until(() => existsSync(sock));
    const saved = apiSock;
    apiSock = sock;
    try {
      expect((await call('POST', '/networks', network('c1'))).status).toBe(201);
    } finally {
      apiSock = saved;
    }
    stop('SIGTERM');
    expect(await done).toBe(EXIT_OK);
    expect(existsSync(join(dir, 'c1.sock'))).toBe(false);
    expect(existsSync(sock)).toBe(false);
  });
});
