import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { mkdtempSync, rmSync } from 'node:fs';
import { request } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ApiServer, MAX_BODY_BYTES } from '../../src/api-server.js';
import { captureLogger, FakeForwards } from './shell-fakes.js';

let dir: string;
let socketPath: string;
let forwards: FakeForwards;
let api: ApiServer;
let guestConnected = false;

beforeEach(async () => {
  dir = mkdtempSync(join(tmpdir(), 'mv6-api-'));
  socketPath = join(dir, 'api.sock');
  forwards = new FakeForwards();
  const { log } = captureLogger();
  api = new ApiServer(
    {
      forwards,
      leases: () => [{ ip: '192.168.127.2', mac: '52:54:00:12:34:56' }],
      stats: () => ({ frames: { in: 3, out: 4 }, drops: { 'ipv4:bad-checksum': 1 } }),
      guestConnected: () => guestConnected,
    },
    log,
  );
  await api.listen(socketPath);
});

afterEach(async () => {
  await api.close();
  rmSync(dir, { recursive: true, force: true });
});

interface Reply {
  status: number;
  body: unknown;
  headers: Record<string, string | string[] | undefined>;
}

function call(method: string, path: string, body?: string | Buffer, headers: Record<string, string> = {}): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const req = request({ socketPath, method, path, headers }, (res) => {
      const parts: Buffer[] = [];
      res.on('data', (d: Buffer) => parts.push(d));
      res.on('end', () => {
        const text = Buffer.concat(parts).toString();
        resolve({ status: res.statusCode!, body: text === '' ? undefined : JSON.parse(text), headers: res.headers });
      });
    });
    req.on('error', reject);
    if (body !== undefined) req.write(body);
    req.end();
  });
}

describe('ApiServer: gvproxy paths', () => {
  it('exposes, lists and unexposes forwards', async () => {
    const spec = { local: '127.0.0.1:8080', remote: '192.168.127.2:80', protocol: 'tcp' };
    expect(await call('POST', '/services/forwarder/expose', JSON.stringify(spec))).toMatchObject({ status: 200, body: spec });
    // protocol defaults to tcp, as in gvproxy
    const r = await call('POST', '/services/forwarder/expose', JSON.stringify({ local: ':5353', remote: '192.168.127.2:53' }));
    expect(r.status).toBe(200);
    expect((await call('GET', '/services/forwarder/all')).body).toEqual([
      spec,
      { local: ':5353', remote: '192.168.127.2:53', protocol: 'tcp' },
    ]);
    expect((await call('POST', '/services/forwarder/unexpose', JSON.stringify({ local: '127.0.0.1:8080', protocol: 'tcp' }))).status).toBe(200);
    expect(forwards.list()).toEqual([{ local: ':5353', remote: '192.168.127.2:53', protocol: 'tcp' }]);
  });

  it('answers leases as an IP -> MAC map, stats and healthz', async () => {
    expect(await call('GET', '/services/dhcp/leases')).toMatchObject({ status: 200, body: { '192.168.127.2': '52:54:00:12:34:56' } });
    const stats = await call('GET', '/stats');
    expect(stats).toMatchObject({ status: 200, body: { frames: { in: 3, out: 4 }, drops: { 'ipv4:bad-checksum': 1 } } });
    expect(stats.headers['content-type']).toBe('application/json');
    expect((await call('GET', '/healthz')).body).toEqual({ status: 'ok', guestConnected: false });
    guestConnected = true;
    expect((await call('GET', '/healthz')).body).toEqual({ status: 'ok', guestConnected: true });
    expect((await call('GET', '/healthz?verbose=1')).status).toBe(200);
  });
});

describe('ApiServer: errors', () => {
  const bad: [string, string | undefined, RegExp][] = [
    ['not json', '{local', /not valid JSON/],
    ['empty body', undefined, /body is empty/],
    ['array', '[]', /expected a JSON object/],
    ['missing remote', '{"local":"127.0.0.1:1"}', /"remote" must be a string/],
    ['bad protocol', '{"local":"127.0.0.1:1","remote":"192.168.127.2:1","protocol":"sctp"}', /"protocol" must be "tcp" or "udp", got "sctp"/],
    ['bad port', '{"local":"127.0.0.1:99999","remote":"192.168.127.2:1"}', /"local": port must be an integer 1..65535, got "99999"/],
    ['remote not IPv4', '{"local":"127.0.0.1:1","remote":"guest:1"}', /"remote": the guest address must be an IP address/],
    ['unknown field', '{"local":"127.0.0.1:1","remote":"192.168.127.2:1","extra":1}', /unknown field "extra"/],
  ];
  for (const [name, body, re] of bad) {
    it(`400 for expose with ${name}`, async () => {
      const r = await call('POST', '/services/forwarder/expose', body);
      expect(r.status).toBe(400);
      expect((r.body as { error: string }).error).toMatch(re);
      expect(forwards.list()).toEqual([]);
    });
  }

  it('400 for unexpose without local', async () => {
    const r = await call('POST', '/services/forwarder/unexpose', '{"protocol":"tcp"}');
    expect(r.status).toBe(400);
    expect((r.body as { error: string }).error).toMatch(/"local" must be a string/);
  });

  it('404 for unknown paths and for unexposing a forward that does not exist', async () => {
    const r = await call('GET', '/services/nope');
    expect(r).toMatchObject({ status: 404, body: { error: 'no such path: /services/nope' } });
    const u = await call('POST', '/services/forwarder/unexpose', '{"local":"127.0.0.1:9","protocol":"udp"}');
    expect(u.status).toBe(404);
    expect((u.body as { error: string }).error).toMatch(/127.0.0.1:9/);
  });

  it('405 with Allow for a wrong method', async () => {
    const r = await call('GET', '/services/forwarder/expose');
    expect(r.status).toBe(405);
    expect(r.headers.allow).toBe('POST');
    expect((await call('DELETE', '/stats')).status).toBe(405);
  });

  it('409 for a duplicate forward and for an address in use', async () => {
    const spec = '{"local":"127.0.0.1:8080","remote":"192.168.127.2:80"}';
    expect((await call('POST', '/services/forwarder/expose', spec)).status).toBe(200);
    expect((await call('POST', '/services/forwarder/expose', spec)).status).toBe(409);
    forwards.failNext = Object.assign(new Error('listen EADDRINUSE: address already in use 127.0.0.1:9000'), { code: 'EADDRINUSE' });
    const r = await call('POST', '/services/forwarder/expose', '{"local":"127.0.0.1:9000","remote":"192.168.127.2:80"}');
    expect(r.status).toBe(409);
    expect((r.body as { error: string }).error).toMatch(/address in use/);
  });

  it('500 for an unexpected failure, with the message', async () => {
    forwards.failNext = new Error('disk on fire');
    const r = await call('POST', '/services/forwarder/expose', '{"local":"127.0.0.1:9000","remote":"192.168.127.2:80"}');
    expect(r).toMatchObject({ status: 500, body: { error: 'internal error: disk on fire' } });
  });

  it('413 for a body over the bound, declared or streamed', async () => {
    const big = Buffer.alloc(MAX_BODY_BYTES + 1, 0x20);
    const declared = await call('POST', '/services/forwarder/expose', big);
    expect(declared.status).toBe(413);
    // Chunked (no Content-Length): the bound is enforced while reading.
    const streamed = await call('POST', '/services/forwarder/expose', big, { 'Transfer-Encoding': 'chunked' });
    expect(streamed.status).toBe(413);
    expect((streamed.body as { error: string }).error).toMatch(/exceeds 65536 bytes/);
    // A body at the bound is read (and refused only for its content).
    const atBound = Buffer.alloc(MAX_BODY_BYTES, 0x20);
    expect((await call('POST', '/services/forwarder/expose', atBound)).status).toBe(400);
  });
});

describe('/allowlist', () => {
  it('answers 409 naming --allow when no allowlist runs', async () => {
    const r = await call('GET', '/allowlist');
    expect(r.status).toBe(409);
    expect((r.body as { error: string }).error).toContain('--allow');
  });

  it('PUT reloads through the control; invalid rules are 400, failed resolution 502, and drop is passed on', async () => {
    const { RuleSetError, parseRule, RuleError } = await import('../../dns/rules.js');
    const { PreresolveError } = await import('../../dns/preresolve.js');
    const calls: { rules: readonly string[]; drop: boolean }[] = [];
    let rules = ['a.test'];
    const path = join(dir, 'api2.sock');
    const { log } = captureLogger();
    const api2 = new ApiServer(
      {
        forwards,
        leases: () => [],
        stats: () => ({}),
        guestConnected: () => true,
        allowlist: {
          rules: () => rules,
          zones: () => rules.map((r) => `${r}.`),
          reload: async (next, drop) => {
            calls.push({ rules: next, drop });
            const bad = next.map((t) => parseRule(t)).filter((x) => x instanceof RuleError);
            if (bad.length > 0) throw new RuleSetError(bad as InstanceType<typeof RuleError>[]);
            if (next.includes('down.test')) throw new PreresolveError([{ host: 'down.test', reason: 'SERVFAIL' }]);
            rules = [...next];
            return { rules, zones: rules.map((r) => `${r}.`), dropped: drop ? 2 : 0 };
          },
        },
      },
      log,
    );
    await api2.listen(path);
    try {
      const put = (p: string, body: string): Promise<Reply> =>
        new Promise((resolve, reject) => {
          const req = request({ socketPath: path, method: 'PUT', path: p, headers: { 'content-type': 'application/json' } }, (res) => {
            const parts: Buffer[] = [];
            res.on('data', (d: Buffer) => parts.push(d));
            res.on('end', () => resolve({ status: res.statusCode!, body: JSON.parse(Buffer.concat(parts).toString()), headers: res.headers }));
          });
          req.on('error', reject);
          req.end(body);
        });
      const ok = await put('/allowlist?drop=1', JSON.stringify({ allow: ['b.test', '*.c.test'] }));
      expect(ok.status).toBe(200);
      expect(ok.body).toMatchObject({ ok: true, allow: ['b.test', '*.c.test'], dropped: 2 });
      expect(calls.at(-1)).toEqual({ rules: ['b.test', '*.c.test'], drop: true });

      const bad = await put('/allowlist', JSON.stringify({ allow: ['b.test', 'no such'] }));
      expect(bad.status).toBe(400);
      expect((bad.body as { error: string }).error).toContain('no such');
      const down = await put('/allowlist', JSON.stringify({ allow: ['down.test'] }));
      expect(down.status).toBe(502);
      expect((down.body as { error: string }).error).toContain('down.test');
      const shape = await put('/allowlist', JSON.stringify({ rules: ['x.test'] }));
      expect(shape.status).toBe(400);
      expect(rules).toEqual(['b.test', '*.c.test']); // unchanged by the failures
    } finally {
      await api2.close();
    }
  });
});
