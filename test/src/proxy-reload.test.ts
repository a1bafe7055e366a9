import { describe, expect, it } from 'vitest';
import { reloadProxyConfig, type CliIo } from '../../src/cli.js';
import { parseProxyArgs } from '../../src/proxy/config.js';
import type { RunningProxy } from '../../src/proxy/index.js';
import { captureLogger } from './shell-fakes.js';

/** SIGHUP for moat proxy, against a fake running proxy whose reload may fail like the real one. */
function setup(initial: Record<string, unknown>) {
  const files: Record<string, string> = { '/proxy.json': JSON.stringify(initial) };
  const io = {
    config: { readFile: (p: string) => files[p] ?? (() => { throw new Error(`ENOENT ${p}`); })(), readResolvConf: () => 'nameserver 192.0.2.53\n' },
  } as unknown as CliIo;
  const args = ['--config', '/proxy.json'];
  const parsed = parseProxyArgs(args, io.config);
  if (parsed.kind !== 'config') throw new Error('help?');
  const reloads: string[][] = [];
  const proxy = {
    allowlist: {
      rules: () => [],
      zones: () => [],
      reload: async (texts: readonly string[]) => {
        if (texts.includes('unresolvable.test')) throw new Error('unresolvable.test: no address');
        reloads.push([...texts]);
        return { rules: [...texts], zones: [], dropped: 0 };
      },
    },
  } as unknown as RunningProxy;
  const { log, lines } = captureLogger('info');
  return { files, io, args, config: parsed.config, proxy, reloads, log, lines };
}

describe('moat proxy: SIGHUP config reload', () => {
  it('reloads a changed allowlist; other changes are named as restart needed', async () => {
    const t = setup({ allow: ['a.test'] });
    t.files['/proxy.json'] = JSON.stringify({ allow: ['a.test', 'b.test'], listen: '127.0.0.1:9999' });
    const now = await reloadProxyConfig(t.args, t.io, t.proxy, t.config, t.log);
    expect(t.reloads).toEqual([['a.test', 'b.test']]);
    expect(now.allow.map((r) => r.text)).toEqual(['a.test', 'b.test']);
    expect(t.lines.at(-1)).toMatchObject({ msg: 'config reloaded', allowlistReloaded: true, restartNeeded: ['listen'] });
  });

  it('a broken file or an unresolvable host leaves the running allowlist', async () => {
    const t = setup({ allow: ['a.test'] });
    for (const text of ['{"allow": [', JSON.stringify({ allow: ['unresolvable.test'] })]) {
      t.files['/proxy.json'] = text;
      expect(await reloadProxyConfig(t.args, t.io, t.proxy, t.config, t.log)).toBe(t.config);
      expect(t.lines.at(-1)?.msg).toMatch(/^config reload refused/);
    }
    expect(t.reloads).toEqual([]);
  });
});
