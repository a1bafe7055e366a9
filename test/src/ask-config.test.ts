/** Ask mode's flags (--on-unlisted, --ask-timeout-ms) for `moat serve` and `moat proxy`, on the command line and in --config files. */
import { describe, expect, it } from 'vitest';
import { ConfigError, parseServeArgs, type ConfigIo } from '../../src/config.js';
import { parseProxyArgs } from '../../src/proxy/config.js';
import { DEFAULT_ASK_SETTINGS } from '../../src/egress/ask-gate.js';

const files: Record<string, string> = {};
const io: ConfigIo = { readFile: (p) => files[p] ?? '{}', readResolvConf: () => 'nameserver 10.0.0.53\n' };
const SERVE = ['--listen-qemu', 'unix:///tmp/moat.sock'];

function serve(args: string[]) {
  const r = parseServeArgs([...SERVE, ...args], io);
  if (r.kind !== 'config') throw new Error('expected a config');
  return r.config.ask;
}
function proxy(args: string[]) {
  const r = parseProxyArgs(args, io);
  if (r.kind !== 'config') throw new Error('expected a config');
  return r.config.ask;
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

describe('--on-unlisted and --ask-timeout-ms', () => {
  it('default refuse (no ask settings); ask turns it on with the default 30 s timeout, in both commands', () => {
    expect(serve(['--allow', 'a.test'])).toBeUndefined();
    expect(proxy(['--allow', 'a.test', '--on-unlisted', 'refuse'])).toBeUndefined();
    expect(serve(['--allow', 'a.test', '--on-unlisted', 'ask'])).toEqual(DEFAULT_ASK_SETTINGS);
    expect(proxy(['--allow', 'a.test', '--on-unlisted', 'ask', '--ask-timeout-ms', '500'])).toEqual({ ...DEFAULT_ASK_SETTINGS, timeoutMs: 500 });
    expect(DEFAULT_ASK_SETTINGS.timeoutMs).toBe(30_000);
  });

  it('are accepted in a --config file', () => {
    files['/ask.json'] = JSON.stringify({ allow: ['a.test'], 'on-unlisted': 'ask', 'ask-timeout-ms': '1500' });
    expect(serve(['--config', '/ask.json'])).toMatchObject({ timeoutMs: 1500 });
    expect(proxy(['--config', '/ask.json'])).toMatchObject({ timeoutMs: 1500 });
  });

  it('invalid values and combinations stop start-up naming the flag', () => {
    expect(errorOf(() => serve(['--allow', 'a.test', '--on-unlisted', 'maybe']))).toMatch(/^--on-unlisted: must be refuse or ask, got "maybe"/);
    expect(errorOf(() => serve(['--allow', 'a.test', '--on-unlisted', 'ask', '--ask-timeout-ms', '50']))).toMatch(/^--ask-timeout-ms: must be milliseconds, 100\.\.3600000/);
    expect(errorOf(() => proxy(['--allow', 'a.test', '--on-unlisted', 'ask', '--ask-timeout-ms', 'soon']))).toMatch(/^--ask-timeout-ms/);
    expect(errorOf(() => serve(['--allow', 'a.test', '--ask-timeout-ms', '500']))).toMatch(/^--ask-timeout-ms: only with --on-unlisted ask/);
    expect(errorOf(() => serve(['--on-unlisted', 'ask']))).toMatch(/^--on-unlisted: ask needs --allow rules/);
    expect(errorOf(() => proxy(['--allow-all', '--on-unlisted', 'ask']))).toMatch(/^--on-unlisted: ask needs --allow rules/);
    expect(errorOf(() => serve(['--allow', 'a.test', '--mode', 'audit', '--on-unlisted', 'ask']))).toMatch(/--mode audit/);
  });
});
