/**
 * The live-lookup budget's flags (`--live-lookup-*`, `--no-live-lookups`),
 * described once and shared by `moat serve` and `moat proxy`. Kept
 * structural like src/limits.ts (config.ts imports this module): docs in
 * FlagDoc's shape, and the parser returns an error message naming the flag
 * instead of throwing config.ts's ConfigError.
 */
import { DEFAULT_LIVE_BUDGET, MAX_NAME_TEXT, type LiveBudgetLimits } from '../../dns/live-budget.js';

export interface LiveLookupSettings extends LiveBudgetLimits {
  /** false: --no-live-lookups. */
  readonly enabled: boolean;
}

interface Spec {
  flag: string;
  key: keyof LiveBudgetLimits;
  value: string;
  min: number;
  max: number;
  /** Whole numbers only (bursts); rates may be fractional (0.5 names/s). */
  integer: boolean;
  help: string;
}

const SPECS: readonly Spec[] = [
  {
    flag: 'live-lookup-rate',
    key: 'namesPerSecond',
    value: 'NAMES_PER_S',
    min: 0,
    max: 100_000,
    integer: false,
    help: 'With --allow: new names Moat may look up upstream per second, per guest (per proxy): names below *.DOMAIN asked of the gateway\'s DNS or reached by name (SNI/Host, proxy target), and audit-mode names. A name already answered and still within its TTL is free. Over budget a query gets SERVFAIL with Extended DNS Error 15 naming the budget, a connection is refused (reason live-budget). Bounds a DNS tunnel through wildcard names.',
  },
  { flag: 'live-lookup-burst', key: 'nameBurst', value: 'NAMES', min: 1, max: 1_000_000, integer: true, help: 'New names that may be looked up at once before --live-lookup-rate applies.' },
  {
    flag: 'live-lookup-bytes',
    key: 'bytesPerSecond',
    value: 'BYTES_PER_S',
    min: 0,
    max: 100_000_000,
    integer: false,
    help: 'Bytes of new names (their length) Moat may look up per second, per guest (per proxy). The default holds a guest tunnelling data in 253-character names to about 1.3 KB/s over 30 s.',
  },
  { flag: 'live-lookup-burst-bytes', key: 'byteBurst', value: 'BYTES', min: MAX_NAME_TEXT, max: 100_000_000, integer: true, help: `Bytes of new names that may be looked up at once (at least ${MAX_NAME_TEXT}, the longest name).` },
];

const NO_LIVE_LOOKUPS_HELP =
  'With --allow: never look up a name Moat did not resolve at start-up. A name below *.DOMAIN (not itself an --allow HOST) gets the --sinkhole answer with Extended DNS Error 15, and a connection to it by name is refused (reason live-off). Only the hosts the rules name exactly are reachable.';

/** The flags in config.ts's FlagDoc shape. */
export function liveLookupFlagDocs(): { name: string; type: 'string' | 'boolean'; value?: string; default: string; help: string }[] {
  return [
    ...SPECS.map((s) => ({ name: s.flag, type: 'string' as const, value: s.value, default: String(DEFAULT_LIVE_BUDGET[s.key]), help: s.help })),
    { name: 'no-live-lookups', type: 'boolean' as const, default: 'off', help: NO_LIVE_LOOKUPS_HELP },
  ];
}

export const LIVE_LOOKUP_FLAG_NAMES: readonly string[] = [...SPECS.map((s) => s.flag), 'no-live-lookups'];

/**
 * Reads the flags; `get` returns a string flag's text and its label,
 * `off` says whether --no-live-lookups was given. Returns the settings, or
 * an error message naming the flag.
 */
export function parseLiveLookups(get: (flag: string) => { text: string; label: string } | undefined, off: boolean): LiveLookupSettings | string {
  const out: Record<string, number> = {};
  for (const s of SPECS) {
    const raw = get(s.flag);
    if (raw === undefined) {
      out[s.key] = DEFAULT_LIVE_BUDGET[s.key];
      continue;
    }
    const pattern = s.integer ? /^\d+$/ : /^\d+(\.\d+)?$/;
    const n = pattern.test(raw.text) ? Number(raw.text) : NaN;
    if (!(n >= s.min && n <= s.max)) return `${raw.label}: must be ${s.integer ? 'an integer' : 'a number'} ${s.min}..${s.max}, got "${raw.text}"`;
    out[s.key] = n;
  }
  return { ...(out as unknown as LiveBudgetLimits), enabled: !off };
}
