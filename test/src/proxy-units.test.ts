import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { ConfigError, type ConfigIo } from '../../src/config.js';
import { runCli, EXIT_OK, EXIT_USAGE } from '../../src/cli.js';
import { parseProxyArgs, proxyHelp, DEFAULT_MAX_CONNECTIONS } from '../../src/proxy/config.js';
import { forwardedHeaders, parseAuthority } from '../../src/proxy/http-proxy.js';
import { parseGreeting, parseRequest, reply, REP } from '../../src/proxy/socks5.js';
import { classifyHost } from '../../src/proxy/targets.js';
import { parseUdpHeader, udpReplyHeader } from '../../src/proxy/socks5-udp.js';

const io = (files: Record<string, string> = {}): ConfigIo => ({
  readFile: (p) => {
    const f = files[p];
    if (f === undefined) throw new Error('ENOENT');
    return f;
  },
  readResolvConf: () => 'nameserver 192.0.2.53\n',
});

const cfg = (args: string[], files?: Record<string, string>) => {
  const r = parseProxyArgs(args, io(files));
  if (r.kind !== 'config') throw new Error('expected config');
  return r.config;
};

describe('moat proxy configuration', () => {
  it('defaults: listen 127.0.0.1:3128, no socks, resolv.conf resolvers, 10 s peek, 1024 connections', () => {
    const c = cfg(['--allow', 'github.com']);
    expect(c.listen).toEqual({ host: '127.0.0.1', port: 3128 });
    expect(c.socks).toBeUndefined();
    expect(c.allow.map((r) => r.text)).toEqual(['github.com']);
    expect(c.resolvers).toEqual([{ host: '192.0.2.53', port: 53 }]);
    expect(c.peekTimeoutMs).toBe(10_000);
    expect(c.maxConnections).toBe(DEFAULT_MAX_CONNECTIONS);
    expect(c.allowAll).toBe(false);
  });

  it('parses every flag', () => {
    const c = cfg([
      '--listen', '127.0.0.1:0', '--socks', '127.0.0.1:1080', '--allow', '*.example.org', '--allow', '10.0.0.0/8:5432',
      '--resolver', '127.0.0.1:5353', '--admit-resolved', '10.20.0.0/16', '--peek-timeout-ms', '500',
      '--decision-log', '/tmp/d.jsonl', '--api', 'unix:///tmp/a.sock', '--max-connections', '5', '--log-format', 'json', '--log-level', 'debug',
    ]);
    expect(c).toMatchObject({
      listen: { host: '127.0.0.1', port: 0 },
      socks: { host: '127.0.0.1', port: 1080 },
      resolvers: [{ host: '127.0.0.1', port: 5353 }],
      admitResolved: ['10.20.0.0/16'],
      peekTimeoutMs: 500,
      decisionLog: '/tmp/d.jsonl',
      apiSocket: '/tmp/a.sock',
      maxConnections: 5,
      logFormat: 'json',
      logLevel: 'debug',
    });
  });

  it('refuses to run without rules unless --allow-all', () => {
    expect(() => parseProxyArgs([], io())).toThrow(/--allow-all/);
    expect(cfg(['--allow-all']).allowAll).toBe(true);
    expect(() => parseProxyArgs(['--allow-all', '--allow', 'x.test'], io())).toThrow(ConfigError);
  });

  it.each([
    [['--allow', 'a.test', '--listen', 'localhost'], /--listen/],
    [['--allow', 'a.test', '--listen', 'proxy.example:3128'], /IP address/],
    [['--allow', 'a.test', '--socks', '127.0.0.1:3128'], /also the --listen/],
    [['--allow', 'a.test', '--admit-resolved', '10.0.0.1/8'], /--admit-resolved/],
    [['--allow', 'a.test', '--peek-timeout-ms', '5'], /--peek-timeout-ms/],
    [['--allow', 'a.test', '--max-connections', '0'], /--max-connections/],
    [['--allow', 'a.test', '--api', 'tcp://127.0.0.1:1'], /unix socket/],
    [['--allow', 'bad rule!'], /--allow/],
    [['--allow', 'a.test', '--listen-qemu', 'unix:///x'], /unknown flag/],
  ])('rejects %j', (args, message) => {
    expect(() => parseProxyArgs(args, io())).toThrow(message);
  });

  it('reads a config file with the proxy keys, and flags override it', () => {
    const files = { '/p.json': JSON.stringify({ listen: '127.0.0.1:8888', allow: ['a.test', 'b.test'], socks: '127.0.0.1:1081' }) };
    const c = cfg(['--config', '/p.json', '--allow', 'c.test'], files);
    expect(c.listen.port).toBe(8888);
    expect(c.socks?.port).toBe(1081);
    expect(c.allow.map((r) => r.text)).toEqual(['c.test']);
    expect(() => parseProxyArgs(['--config', '/q.json'], io({ '/q.json': '{"mtu": 9000}' }))).toThrow(/unknown key "mtu".*moat proxy --help/);
  });

  it('help names every flag; the CLI prints it and refuses a rule-less start with exit 2', async () => {
    const help = proxyHelp();
    for (const f of ['--listen', '--socks', '--allow', '--allow-all', '--resolver', '--admit-resolved', '--peek-timeout-ms', '--decision-log', '--api', '--max-connections']) {
      expect(help).toContain(f);
    }
    const out: string[] = [];
    const err: string[] = [];
    const cli = { stdout: { write: (s: string) => out.push(s) }, stderr: { write: (s: string) => err.push(s) }, config: io(), stopSignal: () => new Promise<string>(() => {}) };
    expect(await runCli(['proxy', '--help'], cli as never)).toBe(EXIT_OK);
    expect(out.join('')).toContain('Usage: moat proxy');
    expect(await runCli(['proxy'], cli as never)).toBe(EXIT_USAGE);
    expect(err.join('')).toMatch(/moat proxy: --allow/);
  });
});

describe('CONNECT authority', () => {
  it.each([
    ['example.com:443', { host: 'example.com', port: 443 }],
    ['1.2.3.4:80', { host: '1.2.3.4', port: 80 }],
    ['[::1]:443', { host: '[::1]', port: 443 }],
    ['example.com', null],
    ['example.com:0', null],
    ['example.com:65536', null],
    [':443', null],
    ['::1:443', null],
    ['example.com:44x', null],
  ])('%s', (text, want) => expect(parseAuthority(text)).toEqual(want));

  it('classifies target hosts', () => {
    expect(classifyHost('Example.COM')).toEqual({ kind: 'name', name: 'Example.COM' });
    expect(classifyHost('10.1.2.3')).toEqual({ kind: 'ipv4', address: '10.1.2.3' });
    expect(classifyHost('[::1]')).toEqual({ kind: 'ipv6', address: '::1' });
  });
});

describe('forwarded headers (RFC 9110 7.6.1)', () => {
  it('drops hop-by-hop fields and those Connection names, sets Host from the target, appends Via', () => {
    const raw = ['Host', 'evil.test', 'Connection', 'keep-alive, X-Secret', 'Proxy-Connection', 'keep-alive', 'Keep-Alive', 'timeout=5', 'X-Secret', '1', 'TE', 'trailers', 'Proxy-Authorization', 'Basic x', 'Accept', '*/*', 'Via', '1.0 other'];
    expect(forwardedHeaders(raw, 'plain.test:8080')).toEqual(['Host', 'plain.test:8080', 'Accept', '*/*', 'Via', '1.0 other, 1.1 moat']);
  });

  it('for responses keeps Host-less order and adds Via', () => {
    expect(forwardedHeaders(['Content-Length', '3', 'Transfer-Encoding', 'chunked', 'Upgrade', 'h2c'], null)).toEqual(['Content-Length', '3', 'Via', '1.1 moat']);
  });
});

describe('SOCKS5 parsing (RFC 1928)', () => {
  it('greeting: needs more, offers no-auth or not, wrong version', () => {
    expect(parseGreeting(Uint8Array.from([5]))).toEqual({ kind: 'need-more' });
    expect(parseGreeting(Uint8Array.from([5, 2, 0x02]))).toEqual({ kind: 'need-more' });
    expect(parseGreeting(Uint8Array.from([5, 2, 0x02, 0x00]))).toEqual({ kind: 'ok', used: 4, noAuth: true, userPass: true });
    expect(parseGreeting(Uint8Array.from([5, 1, 0x02]))).toEqual({ kind: 'ok', used: 3, noAuth: false, userPass: true });
    expect(parseGreeting(Uint8Array.from([5, 1, 0x00]))).toEqual({ kind: 'ok', used: 3, noAuth: true, userPass: false });
    expect(parseGreeting(Uint8Array.from([4, 1, 0]))).toMatchObject({ kind: 'error' });
  });

  it('requests: domain, IPv4, IPv6, unknown ATYP', () => {
    const name = Buffer.from('secure.test');
    const domain = Uint8Array.from([5, 1, 0, 3, name.length, ...name, 0x01, 0xbb, 0xff]);
    expect(parseRequest(domain)).toEqual({ kind: 'ok', used: domain.length - 1, cmd: 1, address: { atyp: 'domain', host: 'secure.test' }, port: 443 });
    expect(parseRequest(domain.subarray(0, 8))).toEqual({ kind: 'need-more' });
    expect(parseRequest(Uint8Array.from([5, 3, 0, 1, 10, 0, 0, 1, 0, 53]))).toEqual({ kind: 'ok', used: 10, cmd: 3, address: { atyp: 'ipv4', host: '10.0.0.1' }, port: 53 });
    const v6 = Uint8Array.from([5, 1, 0, 4, ...new Array(15).fill(0), 1, 0, 80]);
    expect(parseRequest(v6)).toMatchObject({ kind: 'ok', address: { atyp: 'ipv6', host: '0:0:0:0:0:0:0:1' }, port: 80 });
    expect(parseRequest(Uint8Array.from([5, 1, 0, 9, 1, 2]))).toMatchObject({ kind: 'ok', address: null });
    expect(parseRequest(Uint8Array.from([5, 1, 0, 3, 0, 0, 80]))).toMatchObject({ kind: 'error' });
  });

  it('never throws on random bytes, fed whole', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 600 }), (b) => {
        parseGreeting(b);
        parseRequest(b);
      }),
    );
  });

  it('replies carry the code and a zero IPv4 bound address', () => {
    expect([...reply(REP.notAllowed)]).toEqual([5, 2, 0, 1, 0, 0, 0, 0, 0, 0]);
    expect(REP.commandNotSupported).toBe(7);
  });
});

describe('SOCKS5 UDP header (RFC 1928 7)', () => {
  it('parses IPv4, domain and IPv6 headers; rejects short or non-zero RSV', () => {
    expect(parseUdpHeader(Uint8Array.from([0, 0, 0, 1, 10, 0, 0, 1, 0, 53, 0xaa]))).toEqual({ kind: 'ok', frag: 0, atyp: 1, address: '10.0.0.1', port: 53, dataOffset: 10 });
    expect(parseUdpHeader(Uint8Array.from([0, 0, 2, 3, 1, 0x61, 0, 80]))).toEqual({ kind: 'ok', frag: 2, atyp: 3, address: null, port: 80, dataOffset: 8 });
    expect(parseUdpHeader(Uint8Array.from([0, 0, 0, 4, ...new Array(16).fill(0), 0, 80]))).toMatchObject({ kind: 'ok', atyp: 4, address: null, port: 80 });
    expect(parseUdpHeader(Uint8Array.from([0, 0, 0, 1, 10, 0]))).toEqual({ kind: 'bad' });
    expect(parseUdpHeader(Uint8Array.from([1, 0, 0, 1, 10, 0, 0, 1, 0, 53]))).toEqual({ kind: 'bad' });
    expect(parseUdpHeader(Uint8Array.from([0, 0, 0, 7, 10, 0, 0, 1, 0, 53]))).toEqual({ kind: 'bad' });
  });

  it('a reply header names the source', () => {
    expect([...udpReplyHeader('192.0.2.7', 4433)]).toEqual([0, 0, 0, 1, 192, 0, 2, 7, 0x11, 0x51]);
  });

  it('never throws, and an ok header never points past the datagram', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 300 }), (b) => {
        const h = parseUdpHeader(b);
        return h.kind === 'bad' || h.dataOffset <= b.length;
      }),
    );
  });
});
