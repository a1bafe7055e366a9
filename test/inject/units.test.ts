import { afterEach, describe, expect, it } from 'vitest';
import { chmodSync, mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { inspect } from 'node:util';
import { X509Certificate } from 'node:crypto';
import { Readable } from 'node:stream';
import { parseServeArgs, type ConfigIo } from '../../src/config.js';
import { parseProxyArgs } from '../../src/proxy/config.js';
import { CaError, defaultStateDir, loadOrCreateCa } from '../../src/inject/ca.js';
import { LeafCertificates } from '../../src/inject/certs.js';
import { applyRules } from '../../src/inject/interceptor.js';
import { ValueMask } from '../../src/inject/mask.js';
import { sameAuthority, targetAllowed } from '../../src/inject/authority.js';
import { makeSecret, rule, VALUE } from './support.js';

const dirs: string[] = [];
const tmp = (): string => {
  const d = mkdtempSync(join(tmpdir(), 'moat-inject-unit-'));
  dirs.push(d);
  return d;
};
afterEach(() => {
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

const io = (env: Record<string, string> = {}, files: Record<string, string> = {}): ConfigIo => ({
  readFile: (p) => {
    const f = files[p];
    if (f === undefined) throw Object.assign(new Error('no such file'), { code: 'ENOENT' });
    return f;
  },
  readResolvConf: () => 'nameserver 127.0.0.53\n',
  readEnv: (n) => env[n],
});

const serve = (args: string[], i: ConfigIo) => parseServeArgs(['--listen-qemu', 'unix:///tmp/x.sock', '--resolver', '127.0.0.1', ...args], i);

describe('secrets and rules', () => {
  it('a Secret prints as its placeholder everywhere (JSON, inspect, String, template)', () => {
    const s = makeSecret();
    const shown = [JSON.stringify({ s }), inspect(s), String(s), `${s}`, inspect({ deep: { s } })].join(' ');
    expect(shown).not.toContain(VALUE);
    expect(shown).toContain('moat-secret-api');
    expect(s.reveal()).toBe(VALUE);
  });

  it('the placeholder is replaced where it appears in the header; an absent header is set from the template; other headers untouched', () => {
    const s = makeSecret();
    const r = rule('api.test Authorization: Bearer ${api}', [s]);
    const a: [string, string][] = [['Authorization', 'Bearer moat-secret-api'], ['X-Other', 'moat-secret-api']];
    expect(applyRules([r], a)).toEqual(['api']);
    expect(a).toEqual([['Authorization', `Bearer ${VALUE}`], ['X-Other', 'moat-secret-api']]);
    const b: [string, string][] = [];
    applyRules([r], b);
    expect(b).toEqual([['authorization', `Bearer ${VALUE}`]]);
    const c: [string, string][] = [['authorization', 'Basic Zm9v']];
    expect(applyRules([r], c)).toEqual([]); // the client's own value stays (nothing to inject)
    expect(c[0]![1]).toBe('Basic Zm9v');
  });

  it('flag errors name the flag and never hold the value', () => {
    const cases: [string[], Record<string, string>, RegExp][] = [
      [['--allow', 'api.test', '--secret', 'api=env:NOPE', '--inject', 'api.test A: ${api}'], {}, /^--secret: .*"NOPE" is not set/],
      [['--allow', 'api.test', '--secret', 'api=env:K', '--inject', 'api.test A: ${nope}'], { K: VALUE }, /^--inject: .*names no --secret/],
      [['--allow', 'api.test', '--secret', 'api=env:K', '--inject', '*.test A: ${api}'], { K: VALUE }, /^--inject: .*exact/],
      [['--allow', 'api.test', '--secret', 'api=env:K', '--inject', 'api.test Host: ${api}'], { K: VALUE }, /^--inject: .*host header/],
      [['--allow', 'api.test', '--secret', 'api=env:K'], { K: VALUE }, /^--secret: .*used by no --inject/],
      [['--secret', 'api=env:K', '--inject', 'api.test A: ${api}'], { K: VALUE }, /^--inject: needs --allow/],
      [['--allow', 'api.test', '--secret', 'api=env:K', '--inject', 'api.test A: ${api}'], { K: `${VALUE}\r\nX-Evil: 1` }, /^--secret: .*control character/],
      [['--allow', 'api.test', '--secret', 'api=env:K', '--inject', 'api.test A: ${api}', '--upstream-ca', '/nope.pem'], { K: VALUE }, /^--upstream-ca: cannot read/],
    ];
    for (const [args, env, re] of cases) {
      let msg = '';
      try {
        serve(args, io(env));
      } catch (e) {
        msg = (e as Error).message;
      }
      expect(msg, args.join(' ')).toMatch(re);
      expect(msg).not.toContain(VALUE);
    }
  });

  it('--secret/--inject parse for serve (config file too) and proxy; the config object never shows the value', () => {
    const file = JSON.stringify({ allow: ['api.test'], secret: ['api=file:/k'], inject: ['api.test:8443 X-Key: ${api}'], 'state-dir': '/tmp/st' });
    const r = serve(['--config', '/c.json'], io({}, { '/c.json': file, '/k': `${VALUE}\n` }));
    expect(r.kind).toBe('config');
    const inject = r.kind === 'config' ? r.config.inject! : undefined;
    expect(inject?.rules.for('api.test', 8443).map((x) => x.header)).toEqual(['x-key']);
    expect(inject?.stateDir).toBe('/tmp/st');
    expect(JSON.stringify(r)).not.toContain(VALUE);
    expect(inspect(r, { depth: 10 })).not.toContain(VALUE);
    const p = parseProxyArgs(['--allow', 'api.test', '--resolver', '127.0.0.1', '--secret', 'api=env:K', '--inject', 'api.test Authorization: Bearer ${api}'], io({ K: VALUE }));
    expect(p.kind === 'config' && p.config.inject?.rules.size).toBe(1);
  });

  it('Host / :authority checks: same name (any case, trailing dot), same port or none; anything else refused', () => {
    expect(sameAuthority('API.test.', 'api.test', 443)).toBe(true);
    expect(sameAuthority('api.test:443', 'api.test', 443)).toBe(true);
    expect(sameAuthority('api.test:8443', 'api.test', 443)).toBe(false);
    expect(sameAuthority('other.test', 'api.test', 443)).toBe(false);
    expect(sameAuthority('user@api.test', 'api.test', 443)).toBe(false);
    expect(sameAuthority(undefined, 'api.test', 443)).toBe(false);
    expect(targetAllowed('/x', 'GET', 'api.test', 443)).toBe(true);
    expect(targetAllowed('https://other.test/x', 'GET', 'api.test', 443)).toBe(false);
    expect(targetAllowed('api.test:443', 'CONNECT', 'api.test', 443)).toBe(false);
  });
});

describe('CA and leaf certificates', () => {
  it('creates the CA with a 0600 key in a 0700 directory, and loads the same one next time', () => {
    const d = join(tmp(), 'state');
    const a = loadOrCreateCa(d);
    expect(statSync(join(d, 'ca.key')).mode & 0o777).toBe(0o600);
    expect(statSync(d).mode & 0o777).toBe(0o700);
    const b = loadOrCreateCa(d);
    expect(b.certPem).toBe(a.certPem);
    const x = new X509Certificate(a.certPem);
    expect(x.ca).toBe(true);
    expect(x.publicKey.asymmetricKeyDetails?.namedCurve).toBe('prime256v1');
  });

  it('refuses a CA key others can read, naming the file', () => {
    const d = join(tmp(), 'state');
    loadOrCreateCa(d);
    chmodSync(join(d, 'ca.key'), 0o644);
    expect(() => loadOrCreateCa(d)).toThrow(CaError);
    expect(() => loadOrCreateCa(d)).toThrow(/ca\.key: mode 644/);
  });

  it('refuses a key that is not the certificate\'s', () => {
    const d1 = join(tmp(), 'a');
    const d2 = join(tmp(), 'b');
    loadOrCreateCa(d1);
    const other = loadOrCreateCa(d2);
    writeFileSync(join(d1, 'ca.pem'), other.certPem);
    expect(() => loadOrCreateCa(d1)).toThrow(/not the key of ca\.pem/);
  });

  it('default state directory: /var/lib/moat for root, else XDG_STATE_HOME or ~/.local/state', () => {
    expect(defaultStateDir({}, 0)).toBe('/var/lib/moat');
    expect(defaultStateDir({ XDG_STATE_HOME: '/x/state' }, 1000)).toBe('/x/state/moat');
    expect(defaultStateDir({}, 1000)).toMatch(/\.local\/state\/moat$/);
  });

  it('leaves are issued for the host by the CA, cached, and bounded: 200 names keep at most maxLeaves, least recently used out first', () => {
    const ca = loadOrCreateCa(join(tmp(), 'ca'));
    const leaves = new LeafCertificates(ca, 16);
    const first = leaves.contextFor('api.test');
    expect(leaves.contextFor('api.test')).toBe(first);
    for (let i = 0; i < 200; i++) {
      leaves.contextFor(`h${i}.test`);
      leaves.contextFor('api.test'); // kept warm: never evicted
    }
    expect(leaves.size).toBe(16);
    expect(leaves.issued).toBe(201);
    expect(leaves.contextFor('api.test')).toBe(first);
    leaves.contextFor('h0.test'); // evicted long ago: issued again
    expect(leaves.issued).toBe(202);
  }, 60_000);
});

describe('response mask', () => {
  it('masks the value in header text and in a body split at every byte, same length', async () => {
    const m = new ValueMask([VALUE]);
    expect(m.text(`Bearer ${VALUE}, again ${VALUE}`)).toBe(`Bearer ${'*'.repeat(VALUE.length)}, again ${'*'.repeat(VALUE.length)}`);
    const body = `{"echo":"Bearer ${VALUE}","x":"${VALUE}${VALUE}"}`;
    const chunks = [...Buffer.from(body)].map((b) => Buffer.from([b]));
    const out: Buffer[] = [];
    await new Promise<void>((resolve, reject) => {
      const s = Readable.from(chunks).pipe(m.stream());
      s.on('data', (c: Buffer) => out.push(c));
      s.on('end', resolve);
      s.on('error', reject);
    });
    const text = Buffer.concat(out).toString();
    expect(text.length).toBe(body.length);
    expect(text).not.toContain(VALUE);
    expect(text).toBe(body.split(VALUE).join('*'.repeat(VALUE.length)));
  });
});
