/**
 * `moat proxy` exposure (issue 14, finding 8): a listener on a non-loopback
 * address needs --listen-public, and --auth-file makes both listeners ask
 * for a user and password (HTTP Proxy-Authorization: Basic, RFC 9110 11.7.1
 * / RFC 7617; SOCKS5 username/password, RFC 1929), with real curl clients
 * against servers on loopback. Credentials never appear in the logs, the
 * decision log or /stats.
 */
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import fc from 'fast-check';
import { readFileSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import { join } from 'node:path';
import { ConfigError, type ConfigIo } from '../../src/config.js';
import type { Logger } from '../../src/log.js';
import { AuthFailureLog, parseBasic, parseUserPass, ProxyCredentials } from '../../src/proxy/auth.js';
import { parseProxyArgs } from '../../src/proxy/config.js';
import { forwardedHeaders } from '../../src/proxy/http-proxy.js';
import { exposureWarnings } from '../../src/proxy/exposure.js';
import { startProxy, type RunningProxy } from '../../src/proxy/index.js';
import { run, startProxyWorld, type ProxyWorld } from './proxy-support.js';

const USER = 'alice-moat-user';
const PASSWORD = 'Zq9-moat-secret-7781';
let world: ProxyWorld;
let proxy: RunningProxy;
let decisionLog: string;
const logLines: string[] = [];

/** A logger that keeps every line it is given, fields and all, as JSON text. */
function capturingLogger(): Logger {
  const log: Logger = {
    debug: (msg, fields) => void logLines.push(JSON.stringify({ msg, ...fields })),
    info: (msg, fields) => void logLines.push(JSON.stringify({ msg, ...fields })),
    warn: (msg, fields) => void logLines.push(JSON.stringify({ msg, ...fields })),
    error: (msg, fields) => void logLines.push(JSON.stringify({ msg, ...fields })),
    child: () => log,
    enabled: () => true,
  } as Logger;
  return log;
}

beforeAll(async () => {
  world = await startProxyWorld(16);
  const authFile = join(world.dir, 'proxy-users');
  writeFileSync(authFile, `# moat proxy users\n\n${USER}:${PASSWORD}\nbob:other-password\n`, { mode: 0o600 });
  decisionLog = join(world.dir, 'decisions.jsonl');
  const parsed = parseProxyArgs([
    '--listen', '127.0.0.1:0',
    '--socks', '127.0.0.1:0',
    '--allow', 'secure.test',
    '--allow', 'plain.test',
    '--resolver', `127.0.0.1:${world.dns.port}`,
    '--admit-resolved', '127.66.16.0/24',
    '--decision-log', decisionLog,
    '--auth-file', authFile,
    '--log-level', 'debug',
  ]);
  if (parsed.kind !== 'config') throw new Error('expected a config');
  proxy = await startProxy(parsed.config, capturingLogger());
});

afterAll(async () => {
  await proxy?.close();
  await world?.close();
});

const curl = (args: string[]) =>
  run('curl', ['-sS', '--max-time', '10', ...args]).then(
    (r) => ({ code: 0, stdout: r.stdout, stderr: r.stderr }),
    (e: { code: number; stdout: string; stderr: string }) => ({ code: e.code, stdout: e.stdout, stderr: e.stderr }),
  );

describe('moat proxy --auth-file: HTTP Proxy-Authorization Basic, with curl', () => {
  it('curl -x http://user:pass@... reaches an allowed plain-HTTP host', async () => {
    const r = await curl(['-x', `http://${USER}:${PASSWORD}@${proxy.http}`, 'http://plain.test/auth']);
    expect(r.stderr).toBe('');
    expect(r.stdout).toMatch(/^hello from plain \/auth host=plain.test/);
  });

  it('curl -x http://user:pass@... tunnels to an allowed HTTPS host (CONNECT)', async () => {
    const r = await curl(['--cacert', world.certFile, '-x', `http://${USER}:${PASSWORD}@${proxy.http}`, 'https://secure.test/auth']);
    expect(r.stderr).toBe('');
    expect(r.stdout).toMatch(/^hello from secure \/auth host=secure.test/);
  });

  it('the Proxy-Authorization field is never forwarded upstream (hop-by-hop, RFC 9110 7.6.1)', () => {
    const token = `Basic ${Buffer.from(`${USER}:${PASSWORD}`).toString('base64')}`;
    const out = forwardedHeaders(['Proxy-Authorization', token, 'Accept', '*/*'], 'plain.test');
    expect(out.join('\n')).not.toContain(token);
  });

  it('no credentials: 407 with Proxy-Authenticate, and nothing reaches the server', async () => {
    const before = world.accepted.plain;
    const r = await curl(['-i', '-x', `http://${proxy.http}`, 'http://plain.test/none']);
    expect(r.stdout).toMatch(/^HTTP\/1\.1 407 /);
    expect(r.stdout).toMatch(/proxy-authenticate: Basic realm="moat proxy"/i);
    expect(world.accepted.plain).toBe(before);
  });

  it('a wrong password: 407 (absolute-form and CONNECT)', async () => {
    const before = { ...world.accepted };
    const r = await curl(['-i', '-x', `http://${USER}:wrong@${proxy.http}`, 'http://plain.test/wrong']);
    expect(r.stdout).toMatch(/^HTTP\/1\.1 407 /);
    const c = await curl(['--cacert', world.certFile, '-x', `http://${USER}:wrong@${proxy.http}`, 'https://secure.test/wrong']);
    expect(c.code).not.toBe(0);
    expect(c.stderr).toMatch(/407/);
    expect(world.accepted).toEqual(before);
  });

  it("another user's password does not pass for this user", async () => {
    const r = await curl(['-i', '-x', `http://${USER}:other-password@${proxy.http}`, 'http://plain.test/mixed']);
    expect(r.stdout).toMatch(/^HTTP\/1\.1 407 /);
  });
});

describe('moat proxy --auth-file: SOCKS5 username/password (RFC 1929), with curl', () => {
  it('curl --socks5-hostname user:pass@... reaches an allowed host', async () => {
    const r = await curl(['--socks5-hostname', `${USER}:${PASSWORD}@${proxy.socks}`, 'http://plain.test/socks-auth']);
    expect(r.stderr).toBe('');
    expect(r.stdout).toMatch(/^hello from plain \/socks-auth host=plain.test/);
  });

  it('curl --socks5-hostname with a wrong password fails, and nothing reaches the server', async () => {
    const before = world.accepted.plain;
    const r = await curl(['--socks5-hostname', `${USER}:wrong@${proxy.socks}`, 'http://plain.test/']);
    expect(r.code).toBe(97); // CURLE_PROXY
    expect(world.accepted.plain).toBe(before);
  });

  it('a client offering only "no authentication" gets 0xFF (no acceptable method)', async () => {
    const colon = proxy.socks!.lastIndexOf(':');
    const reply = await new Promise<number[]>((resolve, reject) => {
      const s = connect(Number(proxy.socks!.slice(colon + 1)), proxy.socks!.slice(0, colon));
      let got = Buffer.alloc(0);
      s.on('data', (c: Buffer) => (got = Buffer.concat([got, c])));
      s.on('close', () => resolve([...got]));
      s.once('error', reject);
      s.write(Uint8Array.from([5, 1, 0]));
    });
    expect(reply).toEqual([5, 0xff]);
  });

  it('greeting, credentials and request in one write are each answered in turn', async () => {
    const colon = proxy.socks!.lastIndexOf(':');
    const u = Buffer.from(USER);
    const pw = Buffer.from(PASSWORD);
    const name = Buffer.from('blocked.test');
    const reply = await new Promise<number[]>((resolve, reject) => {
      const s = connect(Number(proxy.socks!.slice(colon + 1)), proxy.socks!.slice(0, colon));
      let got = Buffer.alloc(0);
      s.on('data', (c: Buffer) => (got = Buffer.concat([got, c])));
      s.on('close', () => resolve([...got]));
      s.once('error', reject);
      s.write(Uint8Array.from([5, 1, 2, 1, u.length, ...u, pw.length, ...pw, 5, 1, 0, 3, name.length, ...name, 0, 80]));
    });
    // method 0x02; RFC 1929 success; then the request's refusal (0x02, not allowed by ruleset).
    expect(reply).toEqual([5, 2, 1, 0, 5, 2, 0, 1, 0, 0, 0, 0, 0, 0]);
  });

  it('curl --socks5-hostname without credentials fails', async () => {
    const r = await curl(['--socks5-hostname', proxy.socks!, 'http://plain.test/']);
    expect(r.code).toBe(97);
  });
});

describe('credentials never in logs, decision records or stats', () => {
  it('after good and bad attempts on both listeners, neither the password nor its Basic token appears anywhere', async () => {
    await curl(['-x', `http://${USER}:${PASSWORD}@${proxy.http}`, 'http://blocked.test/']); // a refusal is recorded
    await curl(['-x', `http://${USER}:${PASSWORD}x@${proxy.http}`, 'http://plain.test/']);
    await curl(['--socks5-hostname', `${USER}:${PASSWORD}y@${proxy.socks}`, 'http://plain.test/']);
    const secrets = [PASSWORD, Buffer.from(`${USER}:${PASSWORD}`).toString('base64'), USER];
    const texts = { log: logLines.join('\n'), decisions: readFileSync(decisionLog, 'utf8'), stats: JSON.stringify(proxy.stats()) };
    expect(texts.decisions).toContain('blocked.test'); // the records are there
    expect(texts.log).toMatch(/authentication failed/); // and failures are logged
    for (const [where, text] of Object.entries(texts)) for (const s of secrets) expect(text.includes(s), `${where} contains ${s}`).toBe(false);
    expect(proxy.stats().authFailures).toBeGreaterThanOrEqual(2);
  });
});

describe('exposure: a non-loopback listener needs --listen-public', () => {
  const io: ConfigIo = {
    readFile: (p) => {
      if (p === '/users') return 'u:p\n';
      if (p === '/bad') return '# c\nno-colon-here\n';
      if (p === '/colon-user') return ':p\n';
      if (p === '/empty') return '# nothing\n';
      if (p === '/dup') return 'u:p\nu:q\n';
      throw new Error('ENOENT: no such file');
    },
    readResolvConf: () => 'nameserver 192.0.2.53\n',
  };
  const parse = (args: string[]) => parseProxyArgs(['--allow', 'example.com', ...args], io);
  const error = (args: string[]) => {
    try {
      parse(args);
    } catch (e) {
      if (e instanceof ConfigError) return e.message;
      throw e;
    }
    return 'no error';
  };

  it('--listen 0.0.0.0:3128 without the flag refuses to start, naming --listen-public', () => {
    expect(error(['--listen', '0.0.0.0:3128'])).toMatch(/^--listen: 0\.0\.0\.0:3128 is not a loopback address.*--listen-public/);
    expect(error(['--listen', '[::]:3128'])).toMatch(/--listen-public/);
    expect(error(['--listen', '192.0.2.7:3128'])).toMatch(/--listen-public/);
  });

  it('--socks on a non-loopback address needs it too', () => {
    expect(error(['--socks', '0.0.0.0:1080'])).toMatch(/^--socks: .*--listen-public/);
  });

  it('loopback addresses need nothing; --listen-public allows the rest', () => {
    expect(error(['--listen', '127.0.0.2:3128', '--socks', '[::1]:1080'])).toBe('no error');
    expect(error(['--listen', 'localhost:3128'])).toBe('no error');
    expect(error(['--listen', '0.0.0.0:3128', '--socks', '0.0.0.0:1080', '--listen-public'])).toBe('no error');
  });

  it('--auth-file: errors name the flag and the line, never the secret', () => {
    expect(error(['--auth-file', '/missing'])).toMatch(/^--auth-file: cannot read \/missing/);
    expect(error(['--auth-file', '/bad'])).toMatch(/^--auth-file: \/bad line 2: expected USER:PASSWORD/);
    expect(error(['--auth-file', '/bad'])).not.toContain('no-colon-here');
    expect(error(['--auth-file', '/colon-user'])).toMatch(/line 1: the user name is empty/);
    expect(error(['--auth-file', '/empty'])).toMatch(/no USER:PASSWORD line/);
    expect(error(['--auth-file', '/dup'])).toMatch(/line 2: a user named on an earlier line/);
  });

  it('start-up warns when a listener is public without authentication, and only then', () => {
    const cfg = (args: string[]) => {
      const r = parse(args);
      if (r.kind !== 'config') throw new Error('expected config');
      return r.config;
    };
    expect(exposureWarnings(cfg(['--listen', '0.0.0.0:3128', '--listen-public']))).toEqual([
      expect.stringMatching(/0\.0\.0\.0:3128 .* without authentication/),
    ]);
    expect(exposureWarnings(cfg(['--listen', '0.0.0.0:3128', '--listen-public', '--auth-file', '/users']))).toEqual([]);
    expect(exposureWarnings(cfg(['--listen', '127.0.0.1:3128']))).toEqual([]);
  });
});

describe('credentials (src/proxy/auth.ts)', () => {
  const creds = ProxyCredentials.parse('u:p\nlong-user:with:colons in password\n', 'test');
  const b = (t: string) => Buffer.from(t, 'utf8');

  it('accepts exactly the pairs of the file (a password may hold colons, a user may not)', () => {
    expect(creds.size).toBe(2);
    expect(creds.check(b('u'), b('p'))).toBe(true);
    expect(creds.check(b('long-user'), b('with:colons in password'))).toBe(true);
    expect(creds.check(b('u'), b('p '))).toBe(false);
    expect(creds.check(b('u'), b(''))).toBe(false);
    expect(creds.check(b(''), b('p'))).toBe(false);
    expect(creds.check(b('long-user'), b('p'))).toBe(false);
    expect(creds.check(b('u:p'), b(''))).toBe(false);
    expect(creds.check(b('u'.repeat(256)), b('p'))).toBe(false);
  });

  it('parses Basic (RFC 7617) and nothing else', () => {
    const basic = (t: string) => `Basic ${Buffer.from(t).toString('base64')}`;
    expect(creds.checkProxyAuthorization(basic('u:p'))).toBe(true);
    expect(creds.checkProxyAuthorization(basic('u:p').replace('Basic', 'basic'))).toBe(true);
    expect(creds.checkProxyAuthorization(basic('long-user:with:colons in password'))).toBe(true);
    expect(creds.checkProxyAuthorization(undefined)).toBe(false);
    expect(creds.checkProxyAuthorization('Bearer abc')).toBe(false);
    expect(creds.checkProxyAuthorization(basic('up'))).toBe(false);
    expect(parseBasic('Basic !!!')).toBeNull();
  });

  it('RFC 1929 request parsing: need-more, version, lengths', () => {
    expect(parseUserPass(Uint8Array.from([1]))).toEqual({ kind: 'need-more' });
    expect(parseUserPass(Uint8Array.from([1, 1, 0x75]))).toEqual({ kind: 'need-more' });
    expect(parseUserPass(Uint8Array.from([5, 1, 0x75, 1, 0x70]))).toMatchObject({ kind: 'error' });
    const ok = parseUserPass(Uint8Array.from([1, 1, 0x75, 1, 0x70, 9]));
    expect(ok).toMatchObject({ kind: 'ok', used: 5 });
    if (ok.kind === 'ok') expect(creds.check(ok.user, ok.password)).toBe(true);
  });

  it('never throws on random input', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 600 }), fc.string({ maxLength: 600 }), (bytes, text) => {
        parseUserPass(bytes);
        creds.check(bytes, bytes);
        creds.checkProxyAuthorization(text);
        creds.checkProxyAuthorization(`Basic ${text}`);
      }),
    );
  });
});

describe('AuthFailureLog', () => {
  it('counts every failure and logs the first of a burst per listener, then one summary per interval saying how many', () => {
    vi.useFakeTimers();
    try {
      const lines: Record<string, unknown>[] = [];
      const log = { info: (msg: string, fields?: Record<string, unknown>) => void lines.push({ msg, ...fields }) } as unknown as Logger;
      const counters = { authFailures: 0 };
      const f = new AuthFailureLog(counters, log, 10_000);
      for (let i = 0; i < 1000; i++) f.record('http', '127.0.0.1', true);
      expect(counters.authFailures).toBe(1000);
      expect(lines).toEqual([{ msg: 'proxy authentication failed', listener: 'http', client: '127.0.0.1', presented: true, refusedTotal: 1, quietForMs: 10_000 }]);
      vi.advanceTimersByTime(9_999);
      expect(lines).toHaveLength(1);
      vi.advanceTimersByTime(1);
      expect(lines[1]).toEqual({ msg: 'proxy authentication still failing: failures since the last line', listener: 'http', refused: 999, refusedTotal: 1000, intervalMs: 10_000 });
      f.record('socks', '127.0.0.2', false);
      expect(lines[2]).toMatchObject({ listener: 'socks', client: '127.0.0.2', presented: false });
      f.close();
    } finally {
      vi.useRealTimers();
    }
  });
});
