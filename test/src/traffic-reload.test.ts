import { describe, expect, it } from 'vitest';
import { reloadProxyConfig, type CliIo } from '../../src/cli.js';
import { parseProxyArgs } from '../../src/proxy/config.js';
import type { RunningProxy } from '../../src/proxy/index.js';
import type { BudgetSpec } from '../../src/traffic/byte-budgets.js';
import { captureLogger } from './shell-fakes.js';

/** SIGHUP: budgets in the --config file reload with the rules; a rate change needs a restart. */
function setup(initial: Record<string, unknown>) {
  const files: Record<string, string> = { '/proxy.json': JSON.stringify(initial) };
  const io = {
    config: { readFile: (p: string) => files[p] ?? (() => { throw new Error(`ENOENT ${p}`); })(), readResolvConf: () => 'nameserver 192.0.2.53\n' },
  } as unknown as CliIo;
  const args = ['--config', '/proxy.json'];
  const parsed = parseProxyArgs(args, io.config);
  if (parsed.kind !== 'config') throw new Error('help?');
  const reloads: { rules: string[]; budgets: BudgetSpec[] | undefined }[] = [];
  const proxy = {
    allowlist: {
      rules: () => [],
      zones: () => [],
      budgets: () => [],
      reload: async (texts: readonly string[], _drop: boolean, budgets?: BudgetSpec[]) => {
        reloads.push({ rules: [...texts], budgets });
        return { rules: [...texts], zones: [], dropped: 0, budgets: budgets ?? [] };
      },
    },
  } as unknown as RunningProxy;
  const { log, lines } = captureLogger('info');
  return { files, io, args, config: parsed.config, proxy, reloads, log, lines };
}

describe('SIGHUP: byte budgets reload with the rules', () => {
  it('a changed budget alone reloads the allowlist with it; a changed rate is named as restart needed', async () => {
    const t = setup({ allow: ['a.test'], budget: ['a.test=1MiB'] });
    t.files['/proxy.json'] = JSON.stringify({ allow: ['a.test'], budget: ['a.test=2MiB/1h'], 'rate-egress': '10Mbit' });
    const now = await reloadProxyConfig(t.args, t.io, t.proxy, t.config, t.log);
    expect(t.reloads).toEqual([{ rules: ['a.test'], budgets: [{ rule: 'a.test', bytes: 2 * 1024 * 1024, periodMs: 3_600_000 }] }]);
    expect(now.traffic?.budgets).toEqual([{ rule: 'a.test', bytes: 2 * 1024 * 1024, periodMs: 3_600_000 }]);
    expect(t.lines.at(-1)).toMatchObject({ msg: 'config reloaded', allowlistReloaded: true, restartNeeded: ['rateEgress'] });
  });

  it('a budget naming no rule in the new file is refused; the running configuration stays', async () => {
    const t = setup({ allow: ['a.test'], budget: ['a.test=1MiB'] });
    t.files['/proxy.json'] = JSON.stringify({ allow: ['b.test'], budget: ['a.test=1MiB'] });
    expect(await reloadProxyConfig(t.args, t.io, t.proxy, t.config, t.log)).toBe(t.config);
    expect(t.reloads).toEqual([]);
    expect(t.lines.at(-1)?.msg).toMatch(/^config reload refused/);
    expect(JSON.stringify(t.lines.at(-1))).toMatch(/names no --allow rule: \\"a.test\\"/);
  });
});
