/**
 * The log budget and decision log rotation flags (src/log-flags.ts) in
 * `moat serve` and `moat proxy`: defaults, --config keys, help, and errors
 * that name the flag.
 */
import { describe, expect, it } from 'vitest';
import { ConfigError, parseServeArgs, serveHelp, type ConfigIo } from '../../src/config.js';
import { parseProxyArgs, proxyHelp } from '../../src/proxy/config.js';
import { DEFAULT_LOG_BUDGET } from '../../src/log-budget.js';
import { DEFAULT_LOG_LIMITS, LOG_FLAG_SPECS, mainLogBudget } from '../../src/log-flags.js';

const io = (files: Record<string, string> = {}): ConfigIo => ({
  readFile: (p) => {
    const f = files[p];
    if (f === undefined) throw new Error(`ENOENT: ${p}`);
    return f;
  },
  readResolvConf: () => 'nameserver 10.0.0.53\n',
});

const SERVE = ['--listen-qemu', 'unix:///tmp/moat.sock'];
const PROXY = ['--allow', '10.9.0.0/16'];

function serve(args: string[], files?: Record<string, string>) {
  const r = parseServeArgs([...SERVE, ...args], io(files));
  if (r.kind !== 'config') throw new Error('help');
  return r.config;
}
function proxy(args: string[]) {
  const r = parseProxyArgs([...PROXY, ...args], io());
  if (r.kind !== 'config') throw new Error('help');
  return r.config;
}
function errorOf(f: () => unknown): string {
  try {
    f();
  } catch (e) {
    expect(e).toBeInstanceOf(ConfigError);
    return (e as Error).message;
  }
  return 'accepted';
}

describe('log flags', () => {
  it('defaults: the budget of DEFAULT_LOG_BUDGET, no rotation', () => {
    expect(DEFAULT_LOG_LIMITS).toEqual({ budget: { ...DEFAULT_LOG_BUDGET }, decisionLogRotation: { maxBytes: 0, keep: 3 } });
    expect(serve([]).logLimits).toEqual(DEFAULT_LOG_LIMITS);
    expect(proxy([]).logLimits).toEqual(DEFAULT_LOG_LIMITS);
    expect(mainLogBudget({})).toEqual({ limits: DEFAULT_LOG_BUDGET });
  });

  it('every flag is read, on the command line (serve and proxy) and from --config', () => {
    const args = ['--log-lines-per-sec', '7', '--log-line-burst', '70', '--log-bytes-per-sec', '700', '--log-byte-burst', '7000', '--decision-log-max-bytes', '70000', '--decision-log-keep', '5'];
    const want = { budget: { linesPerSec: 7, lineBurst: 70, bytesPerSec: 700, byteBurst: 7000 }, decisionLogRotation: { maxBytes: 70_000, keep: 5 } };
    expect(serve(args).logLimits).toEqual(want);
    expect(proxy(args).logLimits).toEqual(want);
    const file = { 'log-lines-per-sec': 7, 'log-line-burst': 70, 'log-bytes-per-sec': 700, 'log-byte-burst': 7000, 'decision-log-max-bytes': 70000, 'decision-log-keep': 5 };
    expect(serve(['--config', '/m.json'], { '/m.json': JSON.stringify(file) }).logLimits).toEqual(want);
    expect(mainLogBudget({ logLimits: want })).toEqual({ limits: want.budget });
  });

  it('bad values stop start-up naming the flag and the value', () => {
    expect(errorOf(() => serve(['--log-lines-per-sec', '0']))).toBe('--log-lines-per-sec: must be an integer 1..1000000, got "0"');
    expect(errorOf(() => proxy(['--log-bytes-per-sec', 'lots']))).toMatch(/^--log-bytes-per-sec: must be an integer 256\.\.\d+, got "lots"$/);
    expect(errorOf(() => serve(['--log-byte-burst', '100']))).toMatch(/^--log-byte-burst: .*got "100"$/);
    expect(errorOf(() => serve(['--log-line-burst=-1']))).toBe('--log-line-burst: must be an integer 1..10000000, got "-1"');
    expect(errorOf(() => serve(['--decision-log-max-bytes', '100']))).toBe('--decision-log-max-bytes: must be 0 (no rotation) or at least 4096, got "100"');
    expect(errorOf(() => proxy(['--decision-log-keep', '0']))).toBe('--decision-log-keep: must be an integer 1..1000, got "0"');
    expect(errorOf(() => serve(['--config', '/m.json'], { '/m.json': '{"log-lines-per-sec": 1.5}' }))).toMatch(/^\/m\.json: "log-lines-per-sec": .*got "1\.5"$/);
  });

  it('--help of both commands describes each flag with its default', () => {
    for (const help of [serveHelp(), proxyHelp()]) {
      for (const s of LOG_FLAG_SPECS) {
        expect(help).toContain(`--${s.flag}`);
      }
      expect(help).toMatch(/log lines suppressed/);
    }
  });
});
