/** Where the injection CA lives by default (its own module: config parsing must not load the X.509 code). */
import { homedir } from 'node:os';
import { join } from 'node:path';

/** $XDG_STATE_HOME/moat, else ~/.local/state/moat; /var/lib/moat for root. */
export function defaultStateDir(env: NodeJS.ProcessEnv = process.env, uid = process.getuid?.() ?? -1): string {
  if (uid === 0) return '/var/lib/moat';
  const xdg = env['XDG_STATE_HOME'];
  if (xdg !== undefined && xdg.startsWith('/')) return join(xdg, 'moat');
  return join(homedir(), '.local', 'state', 'moat');
}
