/**
 * The launcher's parent-death watch (bin/moat.mjs): Moat started through
 * `npx moat …` (npm exec) ends when the npm process ends.
 *
 * Why: npm exec runs Moat as `npm exec` → `sh -c moat …` → node. A SIGTERM
 * to npm (what a supervisor sends to the process it started) ends npm and
 * the shell, but nobody passes it on to node: Moat went on running, orphaned,
 * holding its sockets. Linux has prctl(PR_SET_PDEATHSIG) for this, but Node
 * has no binding for it (a native addon for one call is not worth it), and
 * Node's process.ppid is read once at start-up. So the watch polls, twice a
 * second on an unref'd timer (it never keeps the process alive): the live
 * parent pid (/proc/self/stat) and whether the launching processes still
 * exist (signal 0). When one is gone the process sends itself SIGTERM, so
 * the CLI's own drain-and-close runs, as if the supervisor's signal had
 * arrived.
 *
 * When: only when npm launched Moat (npm sets npm_command in the
 * environment of what it runs: npx, npm exec, npm run), so that `moat serve
 * &` from a shell that then exits, or nohup, keeps working as before.
 * MOAT_EXIT_WITH_PARENT=1 turns it on for any launcher, =0 off.
 *
 * Best practice stays: a supervisor runs `node_modules/.bin/moat` (or a
 * global `moat`) directly, so its signal reaches Moat (docs/moat.service).
 */
import { readFileSync } from 'node:fs';

export const POLL_MS = 500;

export interface ProcessView {
  /** The live parent pid, or undefined when it cannot be read (not Linux). */
  parentPid(): number | undefined;
  /** Does pid exist (and is it not a zombie, where that can be told)? */
  alive(pid: number): boolean;
  /** Parent pid and command name of pid, where readable (Linux /proc). */
  describe(pid: number): { ppid: number; comm: string } | undefined;
}

/** /proc/PID/stat: "pid (comm) state ppid ..."; comm may hold spaces and parentheses. */
function readStat(pid: number | 'self'): { ppid: number; comm: string; state: string } | undefined {
  try {
    const text = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const open = text.indexOf('(');
    const close = text.lastIndexOf(')');
    const rest = text.slice(close + 2).split(' ');
    return { comm: text.slice(open + 1, close), state: rest[0]!, ppid: Number(rest[1]) };
  } catch {
    return undefined;
  }
}

export const NODE_PROCESS_VIEW: ProcessView = {
  parentPid: () => readStat('self')?.ppid,
  alive(pid) {
    const stat = readStat(pid);
    if (stat !== undefined) return stat.state !== 'Z' && stat.state !== 'X';
    try {
      process.kill(pid, 0);
      return true;
    } catch (e) {
      return (e as NodeJS.ErrnoException).code === 'EPERM';
    }
  },
  describe: (pid) => readStat(pid),
};

/**
 * What to watch: the parent, and the nearest ancestor (at most 4 up) that
 * is npm itself ("npm exec …" sets its process title; its comm starts with
 * "npm"): if npm is killed outright, the shell between may live on.
 */
export function launchers(view: ProcessView, ppid: number): number[] {
  const out = [ppid];
  let pid = ppid;
  for (let depth = 0; depth < 4 && pid > 1; depth++) {
    const d = view.describe(pid);
    if (d === undefined) break;
    if (d.comm.startsWith('npm')) {
      if (pid !== ppid) out.push(pid);
      break;
    }
    pid = d.ppid;
  }
  return out;
}

/** Is the watch wanted for this environment? */
export function watchWanted(env: NodeJS.ProcessEnv): boolean {
  const flag = env['MOAT_EXIT_WITH_PARENT'];
  if (flag === '0') return false;
  if (flag === '1') return true;
  return env['npm_command'] !== undefined;
}

/**
 * Starts the watch when wanted; `onGone` is called once (default: SIGTERM to
 * this process). Returns a stop function.
 */
export function watchLauncher(
  options: { env?: NodeJS.ProcessEnv; view?: ProcessView; onGone?: (why: string) => void; pollMs?: number } = {},
): () => void {
  const env = options.env ?? process.env;
  if (!watchWanted(env)) return () => {};
  const view = options.view ?? NODE_PROCESS_VIEW;
  const startParent = view.parentPid() ?? process.ppid;
  // Started by init (or already orphaned): there is no parent to lose.
  if (startParent <= 1) return () => {};
  const watched = launchers(view, startParent);
  const onGone =
    options.onGone ??
    ((why: string) => {
      process.stderr.write(`moat: ${why}; shutting down (as on SIGTERM)\n`);
      process.kill(process.pid, 'SIGTERM');
    });
  const timer = setInterval(() => {
    const parent = view.parentPid();
    const gone = parent !== undefined && parent !== startParent ? startParent : watched.find((pid) => !view.alive(pid));
    if (gone === undefined) return;
    clearInterval(timer);
    onGone(`the process that launched Moat (pid ${gone}) is gone`);
  }, options.pollMs ?? POLL_MS);
  timer.unref();
  return () => clearInterval(timer);
}
