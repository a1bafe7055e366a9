/**
 * The README's first command under a supervisor: SIGTERM to the process it
 * starts (`npx moat serve …`, i.e. npm exec) must end Moat within 5 s.
 * npm exec runs Moat as npm → sh -c moat … → node and does not pass a
 * SIGTERM on; bin/moat.mjs watches its launcher (src/parent-watch.ts).
 *
 * The command is read from README.md (the first line of its first sh
 * block), run from the repository root exactly as written after its
 * `npm install &&` (the suite already installed), with two changes that
 * are not part of the command: its socket paths are moved into a temp
 * folder (parallel runs must not share /tmp/moat.sock), and npm gets a
 * private cache with lifecycle scripts off (npm_config_cache,
 * npm_config_ignore_scripts): npx links this package into its cache on
 * first use and would otherwise run `prepare` (a full rebuild of dist/
 * under the other tests' feet). No root, no namespaces; Moat listens on a
 * unix socket only.
 */
import { afterAll, describe, expect, it } from 'vitest';
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { REPO_ROOT } from './harness.js';

/** The README's first command: the first line of the first ```sh block. */
function readmeFirstCommand(): string {
  const readme = readFileSync(join(REPO_ROOT, 'README.md'), 'utf8');
  const m = /```sh\n([^\n]+)\n/.exec(readme);
  if (m === null) throw new Error('README.md has no sh block');
  return m[1]!;
}

/** Every live descendant of pid (from /proc), with its command line. */
function descendants(pid: number): { pid: number; cmdline: string[] }[] {
  const parentOf = new Map<number, number>();
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, 'utf8');
      parentOf.set(Number(entry), Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]));
    } catch {
      // gone meanwhile
    }
  }
  const out: { pid: number; cmdline: string[] }[] = [];
  const walk = (p: number): void => {
    for (const [child, parent] of parentOf) {
      if (parent !== p) continue;
      try {
        out.push({ pid: child, cmdline: readFileSync(`/proc/${child}/cmdline`, 'utf8').split('\0').filter((s) => s !== '') });
      } catch {
        continue;
      }
      walk(child);
    }
  };
  walk(pid);
  return out;
}

function alive(pid: number): boolean {
  try {
    const state = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ')[0];
    return state !== 'Z' && state !== 'X';
  } catch {
    return false;
  }
}

async function until(cond: () => boolean, timeoutMs: number): Promise<boolean> {
  const end = Date.now() + timeoutMs;
  while (Date.now() < end) {
    if (cond()) return true;
    await new Promise((r) => setTimeout(r, 50));
  }
  return cond();
}

describe("the README's first command under a supervisor", () => {
  const dir = mkdtempSync(join(tmpdir(), 'moat-launcher-'));
  let child: ChildProcess | undefined;
  let moatPid: number | undefined;

  afterAll(() => {
    // By PID: the npx process group (spawned detached) and the Moat process found in it.
    if (child?.pid !== undefined) {
      try {
        process.kill(-child.pid, 'SIGKILL');
      } catch {
        // already gone
      }
    }
    if (moatPid !== undefined && alive(moatPid)) process.kill(moatPid, 'SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  });

  it('SIGTERM to the process `npx moat serve …` started ends Moat within 5 s', async () => {
    const line = readmeFirstCommand();
    expect(line).toMatch(/^npm install && npx moat serve /);
    const command = line
      .replace(/^npm install && /, '')
      .replace('/tmp/moat.sock', join(dir, 'moat.sock'))
      .replace('/tmp/moat-api.sock', join(dir, 'moat-api.sock'));
    const [cmd, ...args] = command.split(/\s+/) as [string, ...string[]];
    expect(cmd).toBe('npx');

    let stderr = '';
    child = spawn(cmd, args, {
      cwd: REPO_ROOT,
      detached: true,
      stdio: ['ignore', 'ignore', 'pipe'],
      env: { ...process.env, npm_config_cache: join(dir, 'npm-cache'), npm_config_ignore_scripts: 'true', npm_config_update_notifier: 'false' },
    });
    child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
    const npxPid = child.pid!;
    const ready = await until(() => stderr.includes('moat ready'), 120_000);
    expect(ready, `no "moat ready" from npx within 120 s:\n${stderr.slice(-3000)}`).toBe(true);

    const moat = descendants(npxPid).find((p) => p.cmdline.some((a) => a.endsWith('/moat') || a.endsWith('moat.mjs')) && p.cmdline.includes('serve') && /node$/.test(p.cmdline[0]!));
    expect(moat, `no Moat process under npx ${npxPid}: ${JSON.stringify(descendants(npxPid))}`).toBeDefined();
    moatPid = moat!.pid;
    expect(existsSync(join(dir, 'moat.sock'))).toBe(true);

    const sent = Date.now();
    process.kill(npxPid, 'SIGTERM');
    const ended = await until(() => !alive(moatPid!), 5_000);
    const tookMs = Date.now() - sent;
    expect(ended, `Moat (pid ${moatPid}) still running 5 s after SIGTERM to npx (pid ${npxPid}):\n${stderr.slice(-2000)}`).toBe(true);
    // It shut down as on its own SIGTERM: drained, logged, socket file removed.
    expect(stderr).toMatch(/moat stopped/);
    expect(existsSync(join(dir, 'moat.sock'))).toBe(false);
    console.log(`launcher: Moat gone ${tookMs} ms after SIGTERM to npx`);
  }, 180_000);
});
