/**
 * `moat proxy` with real clients (curl, openssl s_client, git) against
 * servers on loopback whose names come from a test DNS server. The proxy
 * runs in this process (startProxy), so the clients run asynchronously.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { existsSync, readFileSync } from 'node:fs';
import { request as httpRequest } from 'node:http';
import { connect } from 'node:net';
import { createSocket } from 'node:dgram';
import { join } from 'node:path';
import type { DecisionRecord } from '../../src/egress/decision-log.js';
import { NULL_LOGGER } from '../../src/log.js';
import { parseProxyArgs } from '../../src/proxy/config.js';
import { startProxy, type RunningProxy } from '../../src/proxy/index.js';
import { run, startProxyWorld, type ProxyWorld } from './proxy-support.js';

let world: ProxyWorld;
let proxy: RunningProxy;
const decisions: DecisionRecord[] = [];
const API = `/tmp/mz6p-api-${process.pid}.sock`;

beforeAll(async () => {
  world = await startProxyWorld(0);
  const parsed = parseProxyArgs([
    '--listen', '127.0.0.1:0',
    '--socks', '127.0.0.1:0',
    '--allow', 'secure.test',
    '--allow', 'plain.test',
    '--allow', 'echo.test:7000',
    '--resolver', `127.0.0.1:${world.dns.port}`,
    '--admit-resolved', '127.0.0.0/8',
    '--peek-timeout-ms', '1000',
    '--decision-log', join(world.dir, 'decisions.jsonl'),
    '--api', `unix://${API}`,
  ]);
  if (parsed.kind !== 'config') throw new Error('expected a config');
  proxy = await startProxy(parsed.config, NULL_LOGGER);
  proxy.onDecision((r) => decisions.push(r));
});

afterAll(async () => {
  await proxy?.close();
  await world?.close();
});

const curl = (args: string[]) => run('curl', ['-sS', '--max-time', '10', ...args]).then(
  (r) => ({ code: 0, stdout: r.stdout, stderr: r.stderr }),
  (e: { code: number; stdout: string; stderr: string }) => ({ code: e.code, stdout: e.stdout, stderr: e.stderr }),
);

describe('moat proxy: HTTP proxy with curl', () => {
  it('prints the environment lines to paste', () => {
    expect(proxy.envLines[0]).toBe(`export HTTPS_PROXY=http://${proxy.http} https_proxy=http://${proxy.http}`);
    expect(proxy.envLines[2]).toContain(`ALL_PROXY=socks5h://${proxy.socks}`);
  });

  it('CONNECT to an allowed HTTPS host works (SNI peeked and equal)', async () => {
    const r = await curl(['--cacert', world.certFile, '-x', `http://${proxy.http}`, 'https://secure.test/hello']);
    expect(r.stderr).toBe('');
    expect(r.stdout).toMatch(/^hello from secure \/hello host=secure.test/);
    expect(decisions.some((d) => d.decision === 'allowed' && d.name === 'secure.test' && d.reason === 'name-target')).toBe(true);
  });

  it('absolute-form HTTP to an allowed host works, Host from the target, hop-by-hop fields dropped, Via added', async () => {
    const r = await curl(['-x', `http://${proxy.http}`, '-H', 'Proxy-Connection: keep-alive', 'http://plain.test/a?b=1']);
    expect(r.stdout).toBe('hello from plain /a?b=1 host=plain.test via=1.1 moat pc=\n');
  });

  it('keep-alive: a second request on the same client connection to another host is decided again', async () => {
    const r = await curl(['-x', `http://${proxy.http}`, '-w', '|%{http_code}|%{num_connects}\\n', 'http://plain.test/one', 'http://blocked.test/two']);
    const lines = r.stdout.trim().split('\n');
    expect(lines[0]).toBe('hello from plain /one host=plain.test via=1.1 moat pc=');
    expect(lines[1]).toBe('|200|1');
    expect(r.stdout).toContain("Blocked by Moat's egress allowlist: host blocked.test is not allowed (reason: name-not-allowed");
    expect(lines.at(-1)).toBe('|403|0'); // reused the proxy connection, and refused
    expect(world.accepted.blocked).toBe(0);
  });

  it('a blocked plain-HTTP host gets 403 with x-moat-reason and x-moat-decision', async () => {
    const r = await curl(['-i', '-x', `http://${proxy.http}`, 'http://blocked.test/']);
    expect(r.stdout).toMatch(/^HTTP\/1\.1 403 Forbidden/);
    expect(r.stdout).toMatch(/x-moat-reason: name-not-allowed/i);
    const id = /x-moat-decision: (\S+)/i.exec(r.stdout)?.[1];
    expect(decisions.find((d) => d.id === id)?.decision).toBe('blocked');
    expect(world.accepted.blocked).toBe(0);
  });

  it('a blocked HTTPS host: the CONNECT gets 403 and curl fails', async () => {
    const r = await curl(['--cacert', world.certFile, '-x', `http://${proxy.http}`, 'https://blocked.test/']);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/403/);
    expect(world.accepted.blocked).toBe(0);
  });

  it('an allowed host on a port no rule covers is refused', async () => {
    const r = await curl(['-x', `http://${proxy.http}`, 'http://plain.test:8080/']);
    expect(r.stdout).toContain('reason: name-not-allowed');
  });

  it('an address target needs an IP rule (no domain fronting by literal)', async () => {
    const r = await curl(['-i', '-x', `http://${proxy.http}`, `http://${world.addr.plain}/`]);
    expect(r.stdout).toMatch(/403 Forbidden/);
    expect(r.stdout).toMatch(/x-moat-reason: (no-rule|rebinding)/);
  });

  it('CONNECT to an allowed host carrying another SNI is refused and reaches no server', async () => {
    const before = { ...world.accepted };
    const r = await run('openssl', ['s_client', '-proxy', proxy.http, '-connect', 'secure.test:443', '-servername', 'blocked.test', '-CAfile', world.certFile], {
      timeout: 10_000,
    }).then(
      (x) => ({ code: 0, out: x.stdout + x.stderr }),
      (e: { code: number; stdout: string; stderr: string }) => ({ code: e.code, out: `${e.stdout}${e.stderr}` }),
    );
    expect(r.code).not.toBe(0);
    expect(r.out).toMatch(/alert access denied|alert number 49/);
    expect(world.accepted.secure).toBe(before.secure);
    expect(world.accepted.blocked).toBe(before.blocked);
    expect(decisions.some((d) => d.reason === 'sni-mismatch' && d.name === 'blocked.test')).toBe(true);
  });

  it('a plain-HTTP Host inside a CONNECT tunnel must be the CONNECT host too', async () => {
    const before = world.accepted.plain;
    const r = await curl(['-i', '-p', '-x', `http://${proxy.http}`, '-H', 'Host: blocked.test', 'http://plain.test/']);
    expect(r.stdout).toMatch(/403 Forbidden/);
    expect(r.stdout).toMatch(/x-moat-reason: host-mismatch/);
    expect(world.accepted.plain).toBe(before);
  });

  it('git clone over HTTPS through the proxy', async () => {
    const dest = join(world.dir, 'clone');
    await run('git', ['-c', `http.proxy=http://${proxy.http}`, '-c', `http.sslCAInfo=${world.certFile}`, 'clone', '-q', 'https://secure.test/repo.git', dest], {
      env: { ...process.env, GIT_SSL_CAINFO: world.certFile, GIT_CONFIG_NOSYSTEM: '1', HOME: world.dir, GIT_TERMINAL_PROMPT: '0' },
      timeout: 30_000,
    });
    expect(existsSync(join(dest, 'README'))).toBe(true);
    expect(readFileSync(join(dest, 'README'), 'utf8')).toBe('cloned through moat proxy\n');
    expect(world.requests.some((r) => r.startsWith('secure /repo.git/git-upload-pack'))).toBe(true);
  });
});

describe('moat proxy: SOCKS5 with curl --socks5-hostname', () => {
  it('to an allowed HTTPS host', async () => {
    const r = await curl(['--cacert', world.certFile, '--socks5-hostname', proxy.socks!, 'https://secure.test/socks']);
    expect(r.stdout).toMatch(/^hello from secure \/socks host=secure.test/);
  });

  it('to an allowed HTTP host', async () => {
    const r = await curl(['--socks5-hostname', proxy.socks!, 'http://plain.test/socks']);
    expect(r.stdout).toMatch(/^hello from plain \/socks host=plain.test via= pc=/);
  });

  it('a blocked host gets a SOCKS failure (0x02, not allowed by ruleset)', async () => {
    const r = await curl(['--socks5-hostname', proxy.socks!, 'http://blocked.test/']);
    expect(r.code).toBe(97); // CURLE_PROXY
    expect(r.stderr).toMatch(/\(2\)|not allowed/i);
    expect(world.accepted.blocked).toBe(0);
  });

  it('socks5 (address resolved by the client) needs an IP rule', async () => {
    const r = await curl(['--socks5', proxy.socks!, '--resolve', `plain.test:80:${world.addr.plain}`, 'http://plain.test/']);
    expect(r.code).toBe(97);
  });

  it('SNI mismatch inside a SOCKS tunnel is refused', async () => {
    const before = world.accepted.secure;
    const r = await curl(['--cacert', world.certFile, '--socks5-hostname', proxy.socks!, '--connect-to', 'blocked.test:443:secure.test:443', 'https://blocked.test/']);
    expect(r.code).not.toBe(0);
    expect(world.accepted.secure).toBe(before);
  });
});

describe('moat proxy: PUT /allowlist', () => {
  it('a reload takes effect for new requests', async () => {
    const put = (body: unknown) =>
      new Promise<{ status: number; body: string }>((resolve, reject) => {
        const req = httpRequest({ socketPath: API, method: 'PUT', path: '/allowlist', headers: { 'content-type': 'application/json' } }, (res) => {
          let text = '';
          res.on('data', (c) => (text += c));
          res.on('end', () => resolve({ status: res.statusCode ?? 0, body: text }));
        });
        req.on('error', reject);
        req.end(JSON.stringify(body));
      });
    expect((await curl(['-x', `http://${proxy.http}`, 'http://blocked.test/r'])).stdout).toContain('name-not-allowed');
    const r = await put({ allow: ['secure.test', 'plain.test', 'blocked.test', 'echo.test:7000'] });
    expect(r.status).toBe(200);
    const after = await curl(['-x', `http://${proxy.http}`, 'http://blocked.test/r']);
    expect(after.stdout).toMatch(/^hello from blocked \/r/);
    const bad = await put({ allow: ['nxdomain.test'] });
    expect(bad.status).toBe(502);
    expect((await curl(['-x', `http://${proxy.http}`, 'http://blocked.test/r2'])).stdout).toMatch(/^hello from blocked/);
    expect((await put({ allow: ['secure.test', 'plain.test', 'echo.test:7000'] })).status).toBe(200);
    expect((await curl(['-x', `http://${proxy.http}`, 'http://blocked.test/r3'])).stdout).toContain('name-not-allowed');
  });
});

/** A raw SOCKS5 exchange: greeting, then `request`; resolves with the reply's REP byte. */
function socksReply(address: string, request: number[]): Promise<number> {
  const colon = address.lastIndexOf(':');
  return new Promise((resolve, reject) => {
    const s = connect(Number(address.slice(colon + 1)), address.slice(0, colon));
    let got = Buffer.alloc(0);
    s.on('data', (c: Buffer) => {
      got = Buffer.concat([got, c]);
      if (got.length >= 4) {
        s.destroy();
        resolve(got[3]!);
      }
    });
    s.once('error', reject);
    s.write(Uint8Array.from([5, 1, 0, ...request]));
  });
}

describe('moat proxy: SOCKS5 edges', () => {
  it('BIND is refused with 0x07; IPv6 is decided by the rules (::1 has none: 0x02); unknown ATYP 0x08', async () => {
    expect(await socksReply(proxy.socks!, [5, 2, 0, 1, 127, 66, 0, 11, 0, 80])).toBe(7);
    expect(await socksReply(proxy.socks!, [5, 1, 0, 4, ...new Array(15).fill(0), 1, 0, 80])).toBe(2);
    expect(await socksReply(proxy.socks!, [5, 1, 0, 9, 0, 0, 0, 0, 0, 80])).toBe(8);
  });

  it('a name that does not resolve gets 0x04 (host unreachable), not a policy refusal', async () => {
    await proxy.allowlist.reload(['secure.test', 'plain.test', 'echo.test:7000', '*.nx.test'], false);
    try {
      const name = Buffer.from('gone.nx.test');
      expect(await socksReply(proxy.socks!, [5, 1, 0, 3, name.length, ...name, 0, 80])).toBe(4);
    } finally {
      await proxy.allowlist.reload(['secure.test', 'plain.test', 'echo.test:7000'], false);
    }
  });
});

describe('moat proxy: rebinding guard without --admit-resolved', () => {
  it('an allowed name resolving to loopback is refused (403 rebinding), and the server sees nothing', async () => {
    const parsed = parseProxyArgs(['--listen', '127.0.0.1:0', '--allow', 'plain.test', '--resolver', `127.0.0.1:${world.dns.port}`]);
    if (parsed.kind !== 'config') throw new Error('expected a config');
    const strict = await startProxy(parsed.config, NULL_LOGGER);
    try {
      const before = world.accepted.plain;
      const r = await curl(['-i', '-x', `http://${strict.http}`, 'http://plain.test/']);
      expect(r.stdout).toMatch(/403 Forbidden/);
      expect(r.stdout).toMatch(/x-moat-reason: rebinding/);
      expect(world.accepted.plain).toBe(before);
    } finally {
      await strict.close();
    }
  });
});

describe('moat proxy: reload with drop', () => {
  it('closes the open tunnels the new rules refuse, and keeps the others', async () => {
    const open = (target: string) =>
      new Promise<import('node:net').Socket>((resolve, reject) => {
        const colon = proxy.http.lastIndexOf(':');
        const s = connect(Number(proxy.http.slice(colon + 1)), proxy.http.slice(0, colon));
        s.once('data', (c: Buffer) => (c.toString().startsWith('HTTP/1.1 200') ? resolve(s) : reject(new Error(c.toString()))));
        s.once('error', reject);
        s.write(`CONNECT ${target} HTTP/1.1\r\n\r\n`);
      });
    const echo = (s: import('node:net').Socket, text: string) =>
      new Promise<string>((resolve) => {
        s.once('data', (c: Buffer) => resolve(c.toString()));
        s.write(text);
      });
    const a = await open('echo.test:7000');
    expect(await echo(a, 'one')).toBe('one');
    const closed = new Promise<void>((resolve) => a.once('close', () => resolve()));
    const result = await proxy.allowlist.reload(['secure.test', 'plain.test'], true);
    expect(result.dropped).toBeGreaterThanOrEqual(1);
    await closed;
    expect(proxy.stats().tunnels.open).toBe(0);
    await proxy.allowlist.reload(['secure.test', 'plain.test', 'echo.test:7000'], false);
  });

  it('closes the pooled upstream connections of absolute-form requests to hosts the new rules refuse, counts them and records each', async () => {
    // curl's absolute-form request leaves a pooled upstream connection to plain.test (earlier tests may have left more).
    const r = await curl(['-x', `http://${proxy.http}`, 'http://plain.test/pooled']);
    expect(r.stdout).toMatch(/^hello from plain \/pooled/);
    const before = decisions.length;
    const result = await proxy.allowlist.reload(['secure.test', 'echo.test:7000'], true);
    expect(result.dropped).toBeGreaterThanOrEqual(1);
    const records = decisions.slice(before).filter((d) => /allowlist changed while open/.test(d.detail ?? ''));
    expect(records).toHaveLength(result.dropped);
    for (const d of records) expect(d).toMatchObject({ decision: 'blocked', reason: 'name-not-allowed', name: 'plain.test', via: 'target' });
    // A second drop has nothing left to close.
    expect((await proxy.allowlist.reload(['secure.test', 'echo.test:7000'], true)).dropped).toBe(0);
    await proxy.allowlist.reload(['secure.test', 'plain.test', 'echo.test:7000'], false);
  });
});

describe('moat proxy: SOCKS5 UDP ASSOCIATE', () => {
  it('relays datagrams to an address an IP rule allows, and drops the rest', async () => {
    // Two UDP echo servers: one allowed by an IP rule, one not.
    const echoes = await Promise.all(
      ['127.66.0.15', '127.66.0.16'].map(
        (address) =>
          new Promise<{ seen: number; close(): void }>((resolve) => {
            const u = createSocket('udp4');
            const state = { seen: 0, close: () => u.close() };
            u.on('message', (m, from) => {
              state.seen++;
              u.send(m, from.port, from.address);
            });
            u.bind(7001, address, () => resolve(state));
          }),
      ),
    );
    const parsed = parseProxyArgs(['--listen', '127.0.0.1:0', '--socks', '127.0.0.1:0', '--allow', '127.66.0.15:7001', '--resolver', `127.0.0.1:${world.dns.port}`]);
    if (parsed.kind !== 'config') throw new Error('expected a config');
    const p = await startProxy(parsed.config, NULL_LOGGER);
    const colon = p.socks!.lastIndexOf(':');
    const control = connect(Number(p.socks!.slice(colon + 1)), '127.0.0.1');
    const client = createSocket('udp4');
    try {
      const bound = await new Promise<{ address: string; port: number }>((resolve, reject) => {
        let got = Buffer.alloc(0);
        control.on('data', (c: Buffer) => {
          got = Buffer.concat([got, c]);
          if (got.length >= 12) {
            if (got[3] !== 0) reject(new Error(`UDP ASSOCIATE reply ${got[3]}`));
            resolve({ address: `${got[6]}.${got[7]}.${got[8]}.${got[9]}`, port: got.readUInt16BE(10) });
          }
        });
        control.once('error', reject);
        control.write(Uint8Array.from([5, 1, 0, 5, 3, 0, 1, 0, 0, 0, 0, 0, 0]));
      });
      expect(bound.address).toBe('127.0.0.1');
      await new Promise<void>((r) => client.bind(0, '127.0.0.1', () => r()));
      const replies: Buffer[] = [];
      client.on('message', (m) => replies.push(m));
      const send = (to: number[], port: number, text: string) =>
        client.send(Buffer.concat([Buffer.from([0, 0, 0, 1, ...to, port >> 8, port & 0xff]), Buffer.from(text)]), bound.port, bound.address);
      send([127, 66, 0, 15], 7001, 'allowed');
      send([127, 66, 0, 16], 7001, 'refused');
      const name = Buffer.from('echo.test');
      client.send(Buffer.concat([Buffer.from([0, 0, 0, 3, name.length, ...name, 0x1b, 0x59]), Buffer.from('by-name')]), bound.port, bound.address);
      await new Promise((r) => setTimeout(r, 300));
      expect(replies.length).toBe(1);
      expect([...replies[0]!.subarray(0, 10)]).toEqual([0, 0, 0, 1, 127, 66, 0, 15, 0x1b, 0x59]);
      expect(replies[0]!.subarray(10).toString()).toBe('allowed');
      expect(echoes[0]!.seen).toBe(1);
      expect(echoes[1]!.seen).toBe(0);
      const s = p.stats();
      expect(s.udpAssociations).toBe(1);
      expect(s.udpOut).toBe(1);
      expect(s.udpIn).toBe(1);
      expect(s.udpDropped).toBe(2);
    } finally {
      control.destroy();
      client.close();
      for (const e of echoes) e.close();
      await p.close();
    }
  });
});

describe('moat proxy: a port a rule names (echo.test:7000)', () => {
  const openTunnel = (target: string) =>
    new Promise<import('node:net').Socket>((resolve, reject) => {
      const colon = proxy.http.lastIndexOf(':');
      const s = connect(Number(proxy.http.slice(colon + 1)), proxy.http.slice(0, colon));
      s.once('data', (c: Buffer) => (c.toString().startsWith('HTTP/1.1 200') ? resolve(s) : reject(new Error(c.toString()))));
      s.once('error', reject);
      s.write(`CONNECT ${target} HTTP/1.1\r\n\r\n`);
    });

  it('TLS there must still carry the requested name', async () => {
    const before = world.accepted.echo;
    const r = await run('openssl', ['s_client', '-proxy', proxy.http, '-connect', 'echo.test:7000', '-servername', 'blocked.test'], { timeout: 10_000 }).then(
      (x) => x.stdout + x.stderr,
      (e: { stdout: string; stderr: string }) => `${e.stdout}${e.stderr}`,
    );
    expect(r).toMatch(/alert access denied|alert number 49/);
    expect(world.accepted.echo).toBe(before);
  });

  it('a client that waits for the server to speak first is dialed after the grace period', async () => {
    const before = world.accepted.echo;
    const s = await openTunnel('echo.test:7000');
    const started = Date.now();
    while (world.accepted.echo === before && Date.now() - started < 3000) await new Promise((r) => setTimeout(r, 50));
    expect(world.accepted.echo).toBe(before + 1);
    expect(Date.now() - started).toBeGreaterThanOrEqual(900);
    const echoed = await new Promise<string>((resolve) => {
      s.once('data', (c: Buffer) => resolve(c.toString()));
      s.write('late');
    });
    expect(echoed).toBe('late');
    s.destroy();
  });
});

describe('moat proxy --allow-all', () => {
  it('runs without rules, says so in the ready line, and still guards rebinding and link-local', async () => {
    const lines: { msg: string; fields: Record<string, unknown> }[] = [];
    const log = {
      debug: () => {},
      info: (msg: string, fields?: Record<string, unknown>) => lines.push({ msg, fields: fields ?? {} }),
      warn: (msg: string, fields?: Record<string, unknown>) => lines.push({ msg, fields: fields ?? {} }),
      error: () => {},
      child: () => log,
      enabled: () => true,
    };
    const parsed = parseProxyArgs(['--listen', '127.0.0.1:0', '--allow-all', '--resolver', `127.0.0.1:${world.dns.port}`, '--admit-resolved', `${world.addr.plain}/32`]);
    if (parsed.kind !== 'config') throw new Error('expected a config');
    const p = await startProxy(parsed.config, log);
    try {
      expect(String(lines.find((l) => l.msg === 'moat proxy ready')?.fields['warning'])).toMatch(/NO ALLOWLIST/);
      expect((await curl(['-x', `http://${p.http}`, 'http://plain.test/any'])).stdout).toMatch(/^hello from plain \/any/);
      // secure.test resolves to loopback outside the admitted /32: refused as rebinding even without rules.
      expect((await curl(['-i', '-x', `http://${p.http}`, 'http://secure.test/'])).stdout).toMatch(/x-moat-reason: rebinding/);
      expect((await curl(['-i', '-x', `http://${p.http}`, 'http://169.254.169.254/'])).stdout).toMatch(/x-moat-reason: link-local/);
    } finally {
      await p.close();
    }
  });
});
