/** The live-lookup budget's flags, for `moat serve` and `moat proxy` (issue 14, finding 1). */
import { describe, expect, it } from 'vitest';
import { ConfigError, parseServeArgs, type ConfigIo } from '../../src/config.js';
import { parseProxyArgs } from '../../src/proxy/config.js';
import { DEFAULT_LIVE_BUDGET } from '../../dns/live-budget.js';

const io: ConfigIo = { readFile: () => '{}', readResolvConf: () => 'nameserver 10.0.0.53\n' };
const SERVE = ['--listen-qemu', 'unix:///tmp/moat.sock', '--allow', '*.cdn.test'];
const PROXY = ['--allow', '*.cdn.test'];

function serve(args: string[]) {
  const r = parseServeArgs([...SERVE, ...args], io);
  if (r.kind !== 'config') throw new Error('expected a config');
  return r.config.liveLookups;
}

function proxy(args: string[]) {
  const r = parseProxyArgs([...PROXY, ...args], io);
  if (r.kind !== 'config') throw new Error('expected a config');
  return r.config.liveLookups;
}

function errorOf(run: () => unknown): string {
  try {
    run();
  } catch (e) {
    expect(e).toBeInstanceOf(ConfigError);
    return (e as Error).message;
  }
  throw new Error('expected a ConfigError');
}

describe('--live-lookup-* and --no-live-lookups', () => {
  it('default to DEFAULT_LIVE_BUDGET, enabled, in both commands', () => {
    expect(serve([])).toEqual({ ...DEFAULT_LIVE_BUDGET, enabled: true });
    expect(proxy([])).toEqual({ ...DEFAULT_LIVE_BUDGET, enabled: true });
  });

  it('set each limit; rates may be fractional; --no-live-lookups turns lookups off', () => {
    const args = ['--live-lookup-rate', '0.5', '--live-lookup-burst', '20', '--live-lookup-bytes', '256', '--live-lookup-burst-bytes', '4096', '--no-live-lookups'];
    const want = { namesPerSecond: 0.5, nameBurst: 20, bytesPerSecond: 256, byteBurst: 4096, enabled: false };
    expect(serve(args)).toEqual(want);
    expect(proxy(args)).toEqual(want);
  });

  it('an invalid value stops start-up naming the flag and the value', () => {
    expect(errorOf(() => serve(['--live-lookup-rate', 'fast']))).toBe('--live-lookup-rate: must be a number 0..100000, got "fast"');
    expect(errorOf(() => serve(['--live-lookup-burst', '0']))).toMatch(/^--live-lookup-burst: must be an integer 1\.\./);
    expect(errorOf(() => serve(['--live-lookup-burst', '1.5']))).toMatch(/^--live-lookup-burst: /);
    expect(errorOf(() => serve(['--live-lookup-bytes=-1']))).toMatch(/^--live-lookup-bytes: /);
    // A byte burst below the longest name could never pay for some names.
    expect(errorOf(() => proxy(['--live-lookup-burst-bytes', '100']))).toBe('--live-lookup-burst-bytes: must be an integer 253..100000000, got "100"');
  });
});
