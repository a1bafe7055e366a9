/**
 * Ask mode's flags (`--on-unlisted`, `--ask-timeout-ms`), described once and
 * shared by `moat serve` and `moat proxy`. Structural like
 * src/allowlist/live-lookup-flags.ts (config.ts imports this module): docs
 * in FlagDoc's shape, and the parser returns an error message naming the
 * flag instead of throwing config.ts's ConfigError.
 */
import { DEFAULT_ASK_SETTINGS, type AskSettings } from './ask-gate.js';

export type OnUnlisted = 'refuse' | 'ask';

const ON_UNLISTED_HELP =
  'With --allow: what a request for a name no rule covers gets. refuse: refused at once. ask: held as a pending decision (a DNS query, a connection by its SNI/Host, a QUIC flow by its Initial, a proxy target) until an operator answers over the API (GET /decisions/pending, GET /decisions/events, POST /decisions/ID {"verdict": "allow-once|allow-name|deny|deny-name"}) or --ask-timeout-ms passes (then refused, reason ask-timeout). Requests for one name share one decision.';
const TIMEOUT_HELP = 'With --on-unlisted ask: how long a request waits for a verdict before it is refused (reason ask-timeout).';

export const ASK_TIMEOUT_MIN_MS = 100;
export const ASK_TIMEOUT_MAX_MS = 3_600_000;

/** The flags in config.ts's FlagDoc shape. */
export function askFlagDocs(): { name: string; type: 'string'; value: string; default: string; help: string }[] {
  return [
    { name: 'on-unlisted', type: 'string', value: 'refuse|ask', default: 'refuse', help: ON_UNLISTED_HELP },
    { name: 'ask-timeout-ms', type: 'string', value: 'MS', default: String(DEFAULT_ASK_SETTINGS.timeoutMs), help: TIMEOUT_HELP },
  ];
}

export const ASK_FLAG_NAMES: readonly string[] = ['on-unlisted', 'ask-timeout-ms'];

/**
 * Reads the flags: the ask settings (undefined for refuse), or an error
 * message naming the flag. `hasRules`: ask needs rules (with none, nothing
 * is unlisted); `audit`: audit mode lets unlisted names through, so there
 * is nothing to ask.
 */
export function parseAskFlags(get: (flag: string) => { text: string; label: string } | undefined, ctx: { hasRules: boolean; audit: boolean }): AskSettings | undefined | string {
  const mode = get('on-unlisted');
  const timeout = get('ask-timeout-ms');
  if (mode !== undefined && mode.text !== 'refuse' && mode.text !== 'ask') return `${mode.label}: must be refuse or ask, got "${mode.text}"`;
  let timeoutMs = DEFAULT_ASK_SETTINGS.timeoutMs;
  if (timeout !== undefined) {
    const n = /^\d+$/.test(timeout.text) ? Number(timeout.text) : NaN;
    if (!(n >= ASK_TIMEOUT_MIN_MS && n <= ASK_TIMEOUT_MAX_MS)) return `${timeout.label}: must be milliseconds, ${ASK_TIMEOUT_MIN_MS}..${ASK_TIMEOUT_MAX_MS}, got "${timeout.text}"`;
    timeoutMs = n;
  }
  if (mode?.text !== 'ask') {
    if (timeout !== undefined) return `${timeout.label}: only with --on-unlisted ask`;
    return undefined;
  }
  if (!ctx.hasRules) return `${mode.label}: ask needs --allow rules (without them no name is unlisted)`;
  if (ctx.audit) return `${mode.label}: ask cannot be combined with --mode audit (audit lets unlisted names through)`;
  return { ...DEFAULT_ASK_SETTINGS, timeoutMs };
}

/** Ask mode with nobody to answer (no --api, no library callback): every unlisted request would wait out the timeout. */
export function unansweredAskWarning(timeoutMs: number): string {
  return `--on-unlisted ask without --api (or a library ask callback): nobody can answer, so every request for an unlisted name waits ${timeoutMs} ms and is then refused`;
}
