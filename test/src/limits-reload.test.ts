import { describe, expect, it } from 'vitest';
import { reloadServeConfig, type CliIo } from '../../src/cli.js';
import { parseServeArgs } from '../../src/config.js';
import type { RunningServer } from '../../src/serve.js';
import { captureLogger } from './shell-fakes.js';

/** SIGHUP's reload, against a fake running server whose allowlist reload may fail like the real one. */
function setup(initial: Record<string, unknown>) {
  const files: Record<string, string> = { '/moat.json': JSON.stringify(initial) };
  const io = {
    config: { readFile: (p: string) => files[p] ?? (() => { throw new Error(`ENOENT ${p}`); })(), readResolvConf: () => 'nameserver 192.0.2.53\n' },
  } as unknown as CliIo;
  const args = ['--listen-qemu', 'unix:///tmp/q.sock', '--config', '/moat.json'];
  const parsed = parseServeArgs(args, io.config);
  if (parsed.kind !== 'config') throw new Error('help?');
  const reloads: string[][] = [];
  let rules = parsed.config.allow.map((r) => r.text);
  const server = {
    allowlist: {
      rules: () => rules,
      zones: () => [],
      reload: async (texts: readonly string[]) => {
        if (texts.includes('unresolvable.test')) throw new Error('unresolvable.test: no address');
        reloads.push([...texts]);
        rules = [...texts];
        return { rules, zones: [], dropped: 0 };
      },
    },
  } as unknown as RunningServer;
  const { log, lines } = captureLogger('info');
  return { files, io, args, config: parsed.config, server, reloads, log, lines, rules: () => rules };
}

describe('SIGHUP config reload', () => {
  it('reloads a changed allowlist from the file', async () => {
    const t = setup({ allow: ['a.test'] });
    t.files['/moat.json'] = JSON.stringify({ allow: ['a.test', 'b.test'] });
    const now = await reloadServeConfig(t.args, t.io, t.server, t.config, t.log);
    expect(t.reloads).toEqual([['a.test', 'b.test']]);
    expect(now.allow.map((r) => r.text)).toEqual(['a.test', 'b.test']);
    expect(t.lines.at(-1)).toMatchObject({ msg: 'config reloaded', allowlistReloaded: true, restartNeeded: [] });
  });

  it('keeps the running allowlist when the file is invalid JSON, has a bad rule, or names a host that does not resolve', async () => {
    const t = setup({ allow: ['a.test'] });
    for (const text of ['{"allow": [', JSON.stringify({ allow: ['bad rule with spaces'] }), JSON.stringify({ allow: ['unresolvable.test'] })]) {
      t.files['/moat.json'] = text;
      const now = await reloadServeConfig(t.args, t.io, t.server, t.config, t.log);
      expect(now).toBe(t.config);
      expect(t.lines.at(-1)?.msg).toMatch(/^config reload refused/);
    }
    expect(t.reloads).toEqual([]);
    expect(t.rules()).toEqual(['a.test']);
  });

  it('reports settings that cannot change live as restart needed, and never turns the allowlist off', async () => {
    const t = setup({ allow: ['a.test'], mtu: 1500 });
    t.files['/moat.json'] = JSON.stringify({ mtu: 9000, 'max-tcp-flows': 10 });
    const now = await reloadServeConfig(t.args, t.io, t.server, t.config, t.log);
    expect(now).toBe(t.config);
    expect(t.reloads).toEqual([]);
    const warn = t.lines.find((l) => l.msg === 'config reload: these settings change only with a restart; they keep their running values');
    expect(warn?.restartNeeded).toEqual(expect.arrayContaining(['mtu', 'limits', 'allow']));
  });
});
