/** `moat ca` flags and help. */
import { resolve } from 'node:path';
import { defaultStateDir } from './state-dir.js';

export function parseCaArgs(args: readonly string[]): { stateDir: string } | 'help' | string {
  let stateDir: string | undefined;
  for (let i = 0; i < args.length; i++) {
    const a = args[i]!;
    if (a === '--help' || a === '-h') return 'help';
    if (a === '--state-dir' || a.startsWith('--state-dir=')) {
      const v = a === '--state-dir' ? args[++i] : a.slice('--state-dir='.length);
      if (v === undefined || v === '') return '--state-dir: needs a directory';
      stateDir = resolve(v);
      continue;
    }
    return `unknown argument "${a}" (moat ca [--state-dir DIR])`;
  }
  return { stateDir: stateDir ?? defaultStateDir() };
}

export function caHelp(): string {
  return [
    'Usage: moat ca [--state-dir DIR]',
    '',
    'Prints the PEM certificate of the CA that --inject signs its per-host certificates with: install it in the',
    "guest's trust store (or pass it to curl --cacert). The CA is created in DIR if it has none (ca.pem, and",
    'ca.key mode 0600 in a 0700 directory). The running service serves the same certificate at GET /ca.pem.',
    '',
    `  --state-dir DIR  default: ${defaultStateDir()} ($XDG_STATE_HOME/moat, else ~/.local/state/moat; /var/lib/moat for root)`,
    '',
  ].join('\n');
}
