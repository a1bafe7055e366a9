/**
 * The credential-injection flags (`--secret`, `--inject`, `--upstream-ca`,
 * `--state-dir`), described once and shared by `moat serve` and `moat proxy`,
 * structural like src/allowlist/live-lookup-flags.ts: docs in config.ts's
 * FlagDoc shape, and the parser returns an error message naming the flag (and
 * never a secret's value) instead of throwing config.ts's ConfigError.
 */
import { X509Certificate } from 'node:crypto';
import { resolve } from 'node:path';
import { defaultStateDir } from './state-dir.js';
import type { InjectSettings } from './interceptor.js';
import { InjectRules, parseInjectRule, parseSecret, PLACEHOLDER_PREFIX, type InjectRule, type Secret, type SecretSource } from './secrets.js';

export const INJECT_FLAG_NAMES: readonly string[] = ['secret', 'inject', 'upstream-ca', 'state-dir'];

export function injectFlagDocs(): { name: string; type: 'string'; multiple?: boolean; value: string; default: string; help: string; example?: string }[] {
  return [
    {
      name: 'secret',
      type: 'string',
      multiple: true,
      value: 'NAME=env:VAR|file:PATH',
      default: 'none',
      help: `A credential the guest never sees: its value is read at start-up from the environment variable or file; the guest is given the placeholder ${PLACEHOLDER_PREFIX}NAME instead (printed at start-up and by GET /secrets), which Moat replaces on the way out to the hosts --inject names. Repeatable.`,
      example: 'api=env:API_KEY',
    },
    {
      name: 'inject',
      type: 'string',
      multiple: true,
      value: "'HOST[:PORT] HEADER: TEMPLATE'",
      default: 'none',
      help: "With --allow: on connections to HOST (port 443 unless given) Moat terminates TLS with a certificate from its own CA (GET /ca.pem, moat ca), opens its own verified TLS connection to HOST, and in every request replaces the placeholder in HEADER by the value (or sets HEADER from TEMPLATE, where ${NAME} is a --secret). A request whose Host or :authority is not HOST gets 421 and is not forwarded. Other hosts are never intercepted. Repeatable.",
      example: "'api.example.com Authorization: Bearer ${api}'",
    },
    { name: 'upstream-ca', type: 'string', value: 'FILE', default: 'the system trust store only', help: 'PEM certificates an intercepted (--inject) host may also chain to, besides the system trust store (a private CA; tests).' },
    {
      name: 'state-dir',
      type: 'string',
      value: 'DIR',
      default: '$XDG_STATE_HOME/moat, else ~/.local/state/moat; /var/lib/moat for root',
      help: "Where Moat keeps the CA that --inject's certificates come from (ca.pem, and ca.key mode 0600 in a 0700 directory; created at the first start that needs it). A ca.key others can read stops start-up.",
    },
  ];
}

export interface InjectFlagIo extends SecretSource {}

/**
 * Reads the flags. `list` returns a repeatable flag's items and its label,
 * `str` a string flag's text and label. Returns undefined when no --secret
 * and no --inject were given, the settings, or an error message naming the flag.
 */
export function parseInjectFlags(
  list: (flag: string) => { items: string[]; label: string },
  str: (flag: string) => { text: string; label: string } | undefined,
  io: InjectFlagIo,
  hasAllow: boolean,
): InjectSettings | undefined | string {
  const secretRaw = list('secret');
  const injectRaw = list('inject');
  const caRaw = str('upstream-ca');
  const dirRaw = str('state-dir');
  if (secretRaw.items.length === 0 && injectRaw.items.length === 0) {
    if (caRaw !== undefined) return `${caRaw.label}: only used with --inject`;
    return undefined;
  }
  if (!hasAllow) return `${injectRaw.items.length > 0 ? injectRaw.label : secretRaw.label}: needs --allow rules (only a connection Moat holds for its name is intercepted)`;
  const secrets = new Map<string, Secret>();
  for (const text of secretRaw.items) {
    const s = parseSecret(text, io);
    if (typeof s === 'string') return `${secretRaw.label}: ${s}`;
    if (secrets.has(s.name)) return `${secretRaw.label}: secret "${s.name}" is declared twice`;
    secrets.set(s.name, s);
  }
  const rules: InjectRule[] = [];
  for (const text of injectRaw.items) {
    const r = parseInjectRule(text, secrets);
    if (typeof r === 'string') return `${injectRaw.label}: ${r}`;
    if (rules.some((x) => x.host === r.host && x.port === r.port && x.header === r.header)) return `${injectRaw.label}: two rules set ${r.header} for ${r.host}:${r.port}`;
    rules.push(r);
  }
  for (const s of secrets.values()) if (!rules.some((r) => r.secrets.includes(s))) return `${secretRaw.label}: secret "${s.name}" is used by no --inject rule`;
  let upstreamCa: string | undefined;
  if (caRaw !== undefined) {
    try {
      upstreamCa = io.readFile(caRaw.text);
    } catch (err) {
      return `${caRaw.label}: cannot read "${caRaw.text}" (${(err as NodeJS.ErrnoException).code ?? 'error'})`;
    }
    try {
      new X509Certificate(upstreamCa);
    } catch {
      return `${caRaw.label}: "${caRaw.text}" is not a PEM certificate`;
    }
  }
  const stateDir = dirRaw === undefined ? defaultStateDir() : resolve(dirRaw.text);
  return { secrets: [...secrets.values()], rules: new InjectRules(rules), stateDir, ...(upstreamCa !== undefined ? { upstreamCa } : {}) };
}
