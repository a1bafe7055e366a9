/**
 * Flags as an object, for the library and the `moat host` API: the same
 * names as on the command line, turned into arguments for the CLI's own
 * parsers, so a setting means one thing everywhere.
 */
import { ConfigError } from './config.js';

/** One flag value: a string or number, true for a boolean flag, a list for a repeatable one. */
export type ServeFlagValue = string | number | boolean | readonly (string | number)[] | undefined;

/** `moat serve` flags by name: `{ 'listen-qemu': 'unix:///tmp/m.sock' }` or `{ listenQemu: ... }`. */
export type ServeFlags = Readonly<Record<string, ServeFlagValue>>;

/** `listenQemu` -> `listen-qemu` (a kebab-case name is left as it is). */
export function flagName(key: string): string {
  return key.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`);
}

/**
 * `{ listenQemu: 'x', allow: ['a', 'b'], allowLinkLocal: true }` →
 * `['--listen-qemu=x', '--allow=a', '--allow=b', '--allow-link-local']`.
 * `--name=value` keeps a value that starts with "-" a value. false and
 * undefined leave a flag out; a boolean flag given a string is left to the
 * parser to refuse.
 */
export function flagsToArgs(flags: ServeFlags): string[] {
  const args: string[] = [];
  for (const [key, value] of Object.entries(flags)) {
    const name = flagName(key);
    if (value === undefined || value === false) continue;
    if (value === true) args.push(`--${name}`);
    else if (Array.isArray(value)) for (const v of value as readonly (string | number)[]) args.push(`--${name}=${String(v)}`);
    else if (typeof value === 'string' || typeof value === 'number') args.push(`--${name}=${String(value)}`);
    else throw new ConfigError(`--${name}: must be a string, number, boolean or list, got ${JSON.stringify(value)}`);
  }
  return args;
}

