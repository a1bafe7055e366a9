import { describe, expect, it } from 'vitest';
import { parsePeriod, parseRate, parseSize } from '../../src/traffic/units.js';
import { parseBudgetSpec, parseTrafficFlags } from '../../src/traffic/flags.js';
import { parseRules } from '../../dns/rules.js';
import { ConfigError, parseServeArgs } from '../../src/config.js';
import { parseProxyArgs } from '../../src/proxy/config.js';

describe('rate grammar', () => {
  it.each([
    ['50Mbit', 6_250_000],
    ['50Mbit/s', 6_250_000],
    ['100kbit', 12_500],
    ['1Gbit', 125_000_000],
    ['8Mibit', 1024 * 1024],
    ['10MiB/s', 10 * 1024 * 1024],
    ['500kB/s', 500_000],
    ['1.5MB/s', 1_500_000],
    ['800B/s', 800],
  ])('%s is %i bytes/s', (text, bytes) => {
    expect(parseRate(text)).toBe(bytes);
  });

  it.each(['50', '50Mb', '50Mbps', '50MBps', '50mbit', '50MB', '10MIB/s', '10kiB/s', 'fast', '-5Mbit', '0.001bit'])('%s is refused', (text) => {
    expect(typeof parseRate(text)).toBe('string');
  });

  it('a byte size given as a rate says how to write a byte rate', () => {
    expect(parseRate('50MB')).toMatch(/50MB\/s/);
  });
});

describe('size and period grammar', () => {
  it('sizes: SI and binary units, a bare number is bytes', () => {
    expect(parseSize('1MiB')).toBe(1048576);
    expect(parseSize('50MB')).toBe(50_000_000);
    expect(parseSize('4096')).toBe(4096);
    expect(parseSize('1.5KiB')).toBe(1536);
    for (const bad of ['1Mb', '1mib', '1M', 'MiB', '1MiB/s']) expect(typeof parseSize(bad)).toBe('string');
  });

  it('periods: s min h d; "m" is ambiguous', () => {
    expect(parsePeriod('1h')).toBe(3_600_000);
    expect(parsePeriod('30min')).toBe(1_800_000);
    expect(parsePeriod('h')).toBe(3_600_000);
    expect(parsePeriod('7d')).toBe(7 * 86_400_000);
    expect(parsePeriod('5m')).toMatch(/minutes or months/);
    expect(typeof parsePeriod('0.5s')).toBe('string');
  });
});

describe('--budget and the traffic flags', () => {
  it('RULE=SIZE[/PERIOD], the rule as written; CIDR rules keep their slash', () => {
    expect(parseBudgetSpec('API.Example.com=50MiB/1h')).toEqual({ rule: 'API.Example.com', bytes: 50 * 1024 * 1024, periodMs: 3_600_000 });
    expect(parseBudgetSpec('allowed.test=1MiB')).toEqual({ rule: 'allowed.test', bytes: 1024 * 1024 });
    expect(parseBudgetSpec('10.0.0.0/8:443=1GB/1d')).toMatchObject({ rule: '10.0.0.0/8:443', bytes: 1e9, periodMs: 86_400_000 });
    for (const bad of ['allowed.test', '=1MiB', 'allowed.test=1Mb', 'allowed.test=0', 'allowed.test=1MiB/5m', 'bad..name=1MiB']) {
      expect(typeof parseBudgetSpec(bad)).toBe('string');
    }
  });

  const get = (m: Record<string, string>) => (f: string) => (m[f] === undefined ? undefined : { text: m[f]!, label: `--${f}` });
  const list = (m: Record<string, string[]>) => (f: string) => ({ items: m[f] ?? [], label: `--${f}` });

  it('every error names its flag', () => {
    expect(parseTrafficFlags(get({ 'rate-egress': '50' }), list({}), [])).toMatch(/^--rate-egress: /);
    expect(parseTrafficFlags(get({ 'rate-ingress-burst': '1MiB' }), list({}), [])).toMatch(/^--rate-ingress-burst: needs --rate-ingress/);
    expect(parseTrafficFlags(get({ 'budget-direction': 'in' }), list({}), [])).toMatch(/^--budget-direction: /);
    expect(parseTrafficFlags(get({}), list({ budget: ['a.test=1MiB'] }), [])).toMatch(/^--budget: needs --allow/);
  });

  it('a budget naming no --allow rule is an error naming it', () => {
    const rules = parseRules(['Allowed.test', '*.example.com', '10.0.0.0/8:443']);
    const r = parseTrafficFlags(get({}), list({ budget: ['other.test=1MiB', 'example.com=1MiB'] }), rules);
    expect(r).toMatch(/--budget: names no --allow rule: "other.test", "example.com"/);
    expect(parseTrafficFlags(get({}), list({ budget: ['allowed.test=1MiB', 'Allowed.test=2MiB'] }), rules)).toMatch(/two budgets/);
    // Written another way, the budget is tied to the rule as the allowlist writes it (what decisions name).
    expect(parseTrafficFlags(get({}), list({ budget: ['allowed.TEST=1MiB', '*.Example.com=2MiB/1h'] }), rules)).toMatchObject({
      budgets: [{ rule: 'Allowed.test', bytes: 1048576 }, { rule: '*.example.com', bytes: 2097152, periodMs: 3_600_000 }],
    });
  });

  it('rates get a default burst of 100 ms (at least 64 KiB)', () => {
    const r = parseTrafficFlags(get({ 'rate-egress': '50Mbit' }), list({}), []);
    expect(r).toMatchObject({ rateEgress: { rate: 6_250_000, burst: 625_000 }, budgets: [], budgetDirection: 'egress' });
    const s = parseTrafficFlags(get({ 'rate-ingress': '1Mbit', 'rate-ingress-burst': '16KiB' }), list({}), []);
    expect(s).toMatchObject({ rateIngress: { rate: 125_000, burst: 16384 } });
  });
});

describe('start-up: moat serve and moat proxy stop on a bad traffic flag, naming it', () => {
  const io = { readFile: (): string => { throw new Error('no file'); }, readResolvConf: () => 'nameserver 192.0.2.53\n' };
  const serve = (extra: string[]): unknown => parseServeArgs(['--listen-qemu', 'unix:///tmp/h18b.sock', '--allow', 'allowed.test', ...extra], io);
  const proxy = (extra: string[]): unknown => parseProxyArgs(['--allow', 'allowed.test', ...extra], io);

  it.each([
    [['--budget', 'other.test=1MiB'], /--budget: names no --allow rule: "other.test"/],
    [['--rate-egress', '50'], /--rate-egress: "50" has no unit/],
    [['--rate-ingress', '10Mbps'], /--rate-ingress: unit "Mbps"/],
    [['--budget', 'allowed.test=1MiB/5m'], /--budget: .*minutes or months/],
  ])('%j', (extra, message) => {
    for (const parse of [serve, proxy]) {
      let err: unknown;
      try {
        parse(extra as string[]);
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(ConfigError);
      expect((err as Error).message).toMatch(message);
    }
  });

  it('valid flags reach the config', () => {
    const c = serve(['--rate-egress', '50Mbit', '--budget', 'allowed.test=1MiB']) as { kind: string; config: { traffic: unknown } };
    expect(c.config.traffic).toMatchObject({ rateEgress: { rate: 6_250_000 }, budgets: [{ rule: 'allowed.test', bytes: 1048576 }] });
  });
});
