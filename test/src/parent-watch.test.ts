/**
 * The launcher's parent-death watch (src/parent-watch.ts) against a fake
 * process table. The real npx path: test/e2e/launcher.test.ts.
 */
import { describe, expect, it } from 'vitest';
import { launchers, watchLauncher, watchWanted, type ProcessView } from '../../src/parent-watch.js';

/** A process table: pid -> [ppid, comm]; `parent` is this process's live parent. */
function table(procs: Record<number, [number, string]>, parent: number): ProcessView & { procs: Record<number, [number, string]>; parent: number } {
  const t = {
    procs,
    parent,
    parentPid: () => t.parent,
    alive: (pid: number) => t.procs[pid] !== undefined,
    describe: (pid: number) => (t.procs[pid] ? { ppid: t.procs[pid]![0], comm: t.procs[pid]![1] } : undefined),
  };
  return t;
}

const tick = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('parent watch', () => {
  it('is on when npm launched Moat (npm_command), off otherwise; MOAT_EXIT_WITH_PARENT overrides', () => {
    expect(watchWanted({ npm_command: 'exec' })).toBe(true);
    expect(watchWanted({})).toBe(false);
    expect(watchWanted({ MOAT_EXIT_WITH_PARENT: '1' })).toBe(true);
    expect(watchWanted({ npm_command: 'exec', MOAT_EXIT_WITH_PARENT: '0' })).toBe(false);
  });

  it('watches the parent and the npm process above the shell', () => {
    const t = table({ 50: [40, 'sh'], 40: [1, 'npm exec moat s'], 1: [0, 'init'] }, 50);
    expect(launchers(t, 50)).toEqual([50, 40]);
    const direct = table({ 40: [1, 'npm exec moat s'] }, 40);
    expect(launchers(direct, 40)).toEqual([40]);
    const noNpm = table({ 50: [30, 'bash'], 30: [1, 'sshd'] }, 50);
    expect(launchers(noNpm, 50)).toEqual([50]);
  });

  it('fires once when the parent changes (reparented to init or a subreaper)', async () => {
    const t = table({ 50: [40, 'sh'], 40: [1, 'npm exec moat s'] }, 50);
    const calls: string[] = [];
    const stop = watchLauncher({ env: { npm_command: 'exec' }, view: t, onGone: (why) => calls.push(why), pollMs: 5 });
    await tick(30);
    expect(calls).toEqual([]);
    t.parent = 1;
    await tick(40);
    stop();
    expect(calls).toHaveLength(1);
    expect(calls[0]).toMatch(/pid 50/);
  });

  it('fires when npm dies even if the shell between lives on (npm killed with SIGKILL)', async () => {
    const t = table({ 50: [40, 'sh'], 40: [1, 'npm exec moat s'] }, 50);
    const calls: string[] = [];
    const stop = watchLauncher({ env: { npm_command: 'exec' }, view: t, onGone: (why) => calls.push(why), pollMs: 5 });
    delete t.procs[40];
    await tick(40);
    stop();
    expect(calls).toEqual(['the process that launched Moat (pid 40) is gone']);
  });

  it('does nothing when not wanted, or when started by init', async () => {
    const t = table({ 50: [40, 'sh'] }, 50);
    const calls: string[] = [];
    watchLauncher({ env: {}, view: t, onGone: (why) => calls.push(why), pollMs: 5 })();
    const init = table({}, 1);
    const stop = watchLauncher({ env: { npm_command: 'exec' }, view: init, onGone: (why) => calls.push(why), pollMs: 5 });
    init.parent = 77;
    t.parent = 1;
    await tick(30);
    stop();
    expect(calls).toEqual([]);
  });
});
