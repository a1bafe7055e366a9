/**
 * The resource limits of `moat serve`, in one place: what each is called on
 * the command line, its default and bounds (LIMIT_SPECS, from which the flag
 * table and help text are derived), and the two pieces of machinery the
 * limits share:
 *
 *  - RefusalLog: every refusal is counted, but logged at most once per
 *    interval per limit (the first refusal at once, then one summary line
 *    per interval while refusals go on), so that a flood cannot fill the log.
 *  - BufferBudget: a cap on the bytes buffered across all TCP flows. Flows
 *    charge it as they take bytes; once the total passes the cap, a flow
 *    holding more than its fair share (cap / flows, at most 64 KiB) is
 *    paused: its host
 *    socket stops being read (the kernel's window towards the server closes)
 *    or its guest side is paused (the stack's advertised window shrinks).
 *    New data is refused at the source rather than buffered; paused flows
 *    resume when the total falls below 3/4 of the cap or their own share
 *    drains. A paused guest side still receives what its advertised window
 *    allows, into the stack's receive ring: those bytes are counted too, and
 *    a flow's receive window grows beyond the stack's initial one only while
 *    the budget has room for the growth (growWindow), so the windows
 *    together stay under the cap plus flows x the initial window.
 *
 * When a limit is hit, the NEWEST work is refused (RST, dropped SYN or
 * datagram, SERVFAIL, 413) and what already runs keeps running.
 */
import type { Logger } from './log.js';

/** Every limit, as ServeConfig.limits carries it. */
export interface Limits {
  /** TCP flows (dialing, held for their name, or open) at once; SYNs beyond it get RST. */
  maxTcpFlows: number;
  /** Guest SYNs held while Moat dials (the SYN backlog); SYNs beyond it are dropped. */
  maxHalfOpen: number;
  /** Four-tuples held in TIME-WAIT (not counted in maxTcpFlows); beyond it the oldest is dropped early. */
  maxTimeWait: number;
  /** UDP flows at once; a new flow beyond it is refused unless the least recently used flow is idle. */
  maxUdpFlows: number;
  /** Bytes a flow's host socket may buffer towards the host before the guest side is paused. */
  flowBufferBytes: number;
  /** Bytes buffered over all TCP flows before flows above their fair share are paused. */
  totalBufferBytes: number;
  /** IP fragment payload bytes held for reassembly over all datagrams. */
  maxFragmentBytes: number;
  /** IP datagrams being reassembled at once. */
  maxFragmentDatagrams: number;
  /** Connections held for their SNI/Host (allowlist mode) at once; SYNs beyond it get RST. */
  maxHeldConnections: number;
  /** Guest DNS queries (UDP) in flight at once; beyond it queries are answered SERVFAIL. */
  dnsMaxInFlight: number;
  /** A forwarded DNS query unanswered this long is answered SERVFAIL. */
  dnsTimeoutMs: number;
  /** A host dial unanswered this long gives up (the guest's SYN goes unanswered). */
  connectTimeoutMs: number;
  /** Control API request bodies larger than this are answered 413. */
  apiMaxBodyBytes: number;
  /** ICMP echo requests (beyond the gateway, through --icmp-fd) awaiting a reply at once; the newest beyond it is dropped. */
  maxIcmpEcho: number;
  /** ICMP echo requests forwarded per second (burst the same); beyond it they are dropped. */
  icmpEchoPerSec: number;
}

/** An integer flag with a default and bounds: the limits here, the log budget in src/log-flags.ts. */
export interface IntegerFlagSpec<K extends string = string> {
  /** The flag name (and --config key). */
  flag: string;
  key: K;
  default: number;
  min: number;
  max: number;
  help: string;
}

export type LimitSpec = IntegerFlagSpec<keyof Limits>;

const KiB = 1024;
const MiB = 1024 * 1024;

/** The one description of every limit flag (SERVE_FLAGS includes them; parseLimits reads them). */
export const LIMIT_SPECS: readonly LimitSpec[] = [
  {
    flag: 'max-tcp-flows',
    key: 'maxTcpFlows',
    default: 16_384,
    min: 1,
    max: 1_000_000,
    help: 'TCP flows from the guest (dialing, held for their name, or open) at once. A SYN beyond it is answered RST; flows already open go on. /stats: limits.tcpFlows.',
  },
  {
    flag: 'max-half-open',
    key: 'maxHalfOpen',
    default: 1024,
    min: 1,
    max: 65_536,
    help: "Guest SYNs held unanswered while Moat dials their destination (the SYN backlog). A SYN beyond it is dropped (the guest retries). /stats: limits.halfOpen.",
  },
  {
    flag: 'max-time-wait',
    key: 'maxTimeWait',
    default: 65_536,
    min: 1,
    max: 1_048_576,
    help: "Connections the host side closed first, held in TIME-WAIT for 60 s (a small record each, about 450 bytes, not counted in --max-tcp-flows), as Linux's tcp_max_tw_buckets. Beyond it the oldest is dropped early; no connection is refused. /stats: limits.timeWait.",
  },
  {
    flag: 'max-udp-flows',
    key: 'maxUdpFlows',
    default: 1024,
    min: 1,
    max: 65_536,
    help: 'UDP flows (one host socket each) at once. A datagram opening a flow beyond it is dropped, unless the least recently used flow has been idle 30 s (it is closed to make room). /stats: limits.udpFlows.',
  },
  {
    flag: 'flow-buffer-bytes',
    key: 'flowBufferBytes',
    default: 256 * KiB,
    min: 4 * KiB,
    max: 64 * MiB,
    help: "Bytes one flow's host socket may buffer towards the host before the guest's window is closed. (The TCP window towards the guest is 1 MiB; the one from the guest starts at 64 KiB and grows up to 4 MiB while the guest fills it, the host keeps up and --total-buffer-bytes has room.)",
  },
  {
    flag: 'total-buffer-bytes',
    key: 'totalBufferBytes',
    default: 64 * MiB,
    min: 64 * KiB,
    max: 16 * 1024 * MiB,
    help: "Bytes buffered over all TCP flows (both directions, the stack's receive buffers included). Past it, every flow holding more than its fair share (this / flows, at most 64 KiB) stops taking data until the total is back under 3/4 of it: its host socket is not read, or its guest window closes; nothing is dropped. A flow's receive window grows beyond its initial 64 KiB only while the budget has room (window growth may take at most half of it). So the total stays under this + flows x 192 KiB (fair share, one read, initial window), and a new flow still makes progress. /stats: limits.buffers (windowBytes: window growth granted).",
  },
  {
    flag: 'max-fragment-bytes',
    key: 'maxFragmentBytes',
    default: 4 * MiB,
    min: 64 * KiB,
    max: 256 * MiB,
    help: 'IP fragment bytes held for reassembly over all datagrams. A fragment that does not fit is dropped with its datagram; older datagrams keep their chance. /stats: limits.fragments.',
  },
  {
    flag: 'max-fragment-datagrams',
    key: 'maxFragmentDatagrams',
    default: 256,
    min: 1,
    max: 65_536,
    help: 'IP datagrams being reassembled at once; the first fragment of one more is dropped. /stats: limits.fragments.',
  },
  {
    flag: 'max-held-connections',
    key: 'maxHeldConnections',
    default: 1024,
    min: 1,
    max: 65_536,
    help: 'With --allow: connections held for their TLS SNI or HTTP Host at once (each holds at most 160 KiB). A SYN beyond it is answered RST. /stats: limits.peek.',
  },
  {
    flag: 'dns-max-in-flight',
    key: 'dnsMaxInFlight',
    default: 256,
    min: 1,
    max: 65_536,
    help: 'Guest DNS queries in flight at once; a query beyond it is answered SERVFAIL at once. /stats: limits.dnsInFlight.',
  },
  {
    flag: 'dns-timeout-ms',
    key: 'dnsTimeoutMs',
    default: 5_000,
    min: 100,
    max: 60_000,
    help: 'A forwarded DNS query without an upstream answer for this long is answered SERVFAIL (a hung resolver never hangs the guest).',
  },
  {
    flag: 'connect-timeout-ms',
    key: 'connectTimeoutMs',
    default: 10_000,
    min: 100,
    max: 120_000,
    help: "How long a host dial for a guest SYN may take; then the SYN is dropped unanswered and the dial's slot freed.",
  },
  {
    flag: 'api-max-body-bytes',
    key: 'apiMaxBodyBytes',
    default: 64 * KiB,
    min: 1 * KiB,
    max: 16 * MiB,
    help: 'Largest control API request body; a larger one is answered 413 and its connection closed. /stats: limits.apiBody.',
  },
  {
    flag: 'max-icmp-echo',
    key: 'maxIcmpEcho',
    default: 64,
    min: 1,
    max: 4096,
    help: 'With --icmp-fd: ICMP echo requests awaiting a reply at once (one is forgotten 10 s after it was sent); the newest beyond it is dropped. /stats: limits.icmpEcho.',
  },
  {
    flag: 'icmp-echo-per-sec',
    key: 'icmpEchoPerSec',
    default: 20,
    min: 1,
    max: 10_000,
    help: 'With --icmp-fd: ICMP echo requests forwarded per second (a burst of as many); a ping flood beyond it is dropped and counted. /stats: limits.icmpEcho.',
  },
];

export const DEFAULT_LIMITS: Readonly<Limits> = Object.freeze(
  Object.fromEntries(LIMIT_SPECS.map((s) => [s.key, s.default])) as unknown as Limits,
);

/** The limit flags in the shape of config.ts's FlagDoc (kept structural: config.ts imports this module). */
export function limitFlagDocs(): { name: string; type: 'string'; value: string; default: string; help: string }[] {
  return integerFlagDocs(LIMIT_SPECS);
}

/** Integer flag specs in the shape of config.ts's FlagDoc. */
export function integerFlagDocs(specs: readonly IntegerFlagSpec[]): { name: string; type: 'string'; value: string; default: string; help: string }[] {
  return specs.map((s) => ({ name: s.flag, type: 'string' as const, value: 'N', default: String(s.default), help: s.help }));
}

/**
 * Reads the limit flags; `get` returns a flag's text and the label to name
 * in errors. Returns the limits, or an error message naming the flag.
 */
export function parseLimits(get: (flag: string) => { text: string; label: string } | undefined): Limits | string {
  return parseIntegerFlags(LIMIT_SPECS, get);
}

/** Reads integer flags (each within its spec's bounds, its default when absent), or an error message naming the flag. */
export function parseIntegerFlags<K extends string>(
  specs: readonly IntegerFlagSpec<K>[],
  get: (flag: string) => { text: string; label: string } | undefined,
): Record<K, number> | string {
  const out: Record<string, number> = {};
  for (const s of specs) {
    const raw = get(s.flag);
    if (raw === undefined) {
      out[s.key] = s.default;
      continue;
    }
    const n = /^\d+$/.test(raw.text) ? Number(raw.text) : NaN;
    if (!(n >= s.min && n <= s.max)) return `${raw.label}: must be an integer ${s.min}..${s.max}, got "${raw.text}"`;
    out[s.key] = n;
  }
  return out as Record<K, number>;
}

// ------------------------------------------------------------------ RefusalLog

/** How often at most a limit's refusals are logged (a summary line for the ones between). */
export const REFUSAL_LOG_INTERVAL_MS = 10_000;

interface LimitState {
  total: number;
  /** Refusals since the last line was written. */
  unlogged: number;
  timer: NodeJS.Timeout | undefined;
}

/**
 * Counts refusals per limit and logs them without letting a flood fill the
 * log: the first refusal of a quiet limit is logged at once (with its
 * details); refusals within the next interval are only counted, and one
 * summary line per interval says how many there were.
 */
export interface RefusalLogLines {
  level: 'info' | 'warn';
  /** The line for the first refusal of a burst (with its details). */
  first: string;
  /** The summary line for the refusals counted since (without details). */
  summary: string;
  /** The field naming the key ('limit', 'reason'). */
  keyField: string;
}

const LIMIT_LINES: RefusalLogLines = {
  level: 'warn',
  first: 'limit reached: refusing new work',
  summary: 'limit still reached: refusals since the last line',
  keyField: 'limit',
};

export class RefusalLog {
  private readonly states = new Map<string, LimitState>();

  constructor(
    private readonly log: Logger,
    private readonly intervalMs = REFUSAL_LOG_INTERVAL_MS,
    private readonly lines: RefusalLogLines = LIMIT_LINES,
  ) {}

  /** One refusal by `limit` (a name as in /stats.limits); `fields` describe it (logged only on the first of a burst). */
  refused(limit: string, fields: Record<string, unknown> = {}): void {
    let s = this.states.get(limit);
    if (s === undefined) {
      s = { total: 0, unlogged: 0, timer: undefined };
      this.states.set(limit, s);
    }
    s.total++;
    if (s.timer !== undefined) {
      s.unlogged++;
      return;
    }
    this.log[this.lines.level](this.lines.first, { [this.lines.keyField]: limit, ...fields, refusedTotal: s.total, quietForMs: this.intervalMs });
    this.arm(limit, s);
  }

  /** Refusals counted for `limit` so far. */
  count(limit: string): number {
    return this.states.get(limit)?.total ?? 0;
  }

  /** Writes the pending summaries and stops the timers. */
  close(): void {
    for (const [limit, s] of this.states) {
      if (s.timer !== undefined) clearTimeout(s.timer);
      s.timer = undefined;
      this.flush(limit, s);
    }
  }

  private arm(limit: string, s: LimitState): void {
    s.timer = setTimeout(() => {
      s.timer = undefined;
      // Something was refused during the interval: say how much, and stay quiet for another one.
      if (this.flush(limit, s)) this.arm(limit, s);
    }, this.intervalMs);
    s.timer.unref();
  }

  private flush(limit: string, s: LimitState): boolean {
    if (s.unlogged === 0) return false;
    this.log[this.lines.level](this.lines.summary, { [this.lines.keyField]: limit, refused: s.unlogged, refusedTotal: s.total, intervalMs: this.intervalMs });
    s.unlogged = 0;
    return true;
  }
}

// ------------------------------------------------------------------ BufferBudget

/** What pausing `m` can stop from growing: its bytes less those already received into its window. */
function sheddable(m: BudgetMember): number {
  return m.bufferedBytes() - (m.receivedBytes?.() ?? 0);
}

/** A flow that buffers bytes and can be paused by the budget. */
export interface BudgetMember {
  /** Bytes this flow holds in memory now (both directions). */
  bufferedBytes(): number;
  /**
   * Of those, the bytes its guest already sent into the window it was
   * offered (the stack's receive ring). Pausing the flow does not shed them
   * (only resuming it does), so they count in the total but do not decide
   * whether the flow is paused or resumed.
   */
  receivedBytes?(): number;
  /** The budget lets this flow take data again (called once per pause). */
  resumeFromBudget(): void;
}

export interface BufferBudgetStats {
  max: number;
  /** Bytes buffered over all flows at the last count. */
  current: number;
  /** The most ever counted. */
  peak: number;
  /** Flows paused by the budget now. */
  pausedFlows: number;
  /** Times a flow was paused by the budget. */
  pauses: number;
  /** Receive-window growth granted to open flows (bytes a guest may still send beyond their initial windows). */
  windowBytes: number;
}

/** The most one flow may hold while the budget is exhausted: enough for a new flow to make progress. */
export const SHARE_CEILING = 64 * 1024;
/** How stale the total may get before charge() counts again (ms). */
const RECOUNT_MS = 25;
/** While flows are paused, how often the budget looks whether they may resume (ms). */
const RESUME_CHECK_MS = 50;

/**
 * The cap on bytes buffered over all flows. Between exact counts (a sum over
 * the members, at most every RECOUNT_MS) the total only grows by what is
 * charged, so it errs on the high side: flows are paused early rather than
 * late. Bytes leave buffers without telling anyone (the guest ACKs, the
 * kernel takes a write), which is why the count is redone rather than kept.
 */
export class BufferBudget {
  private readonly members = new Set<BudgetMember>();
  private readonly paused = new Set<BudgetMember>();
  private total = 0;
  private peak = 0;
  private pauses = 0;
  /** Receive-window growth granted per flow (growWindow), and its sum: room the budget keeps for bytes not yet sent. */
  private readonly windows = new Map<BudgetMember, number>();
  private windowTotal = 0;
  /** Room held for host reads whose buffer was already chosen (reserve()). */
  private reserved = 0;
  private countedAt = -Infinity;
  private timer: NodeJS.Timeout | undefined;

  constructor(
    readonly maxBytes: number,
    private readonly now: () => number = () => performance.now(),
  ) {}

  add(m: BudgetMember): void {
    this.members.add(m);
  }

  remove(m: BudgetMember): void {
    this.members.delete(m);
    this.paused.delete(m);
    this.windowTotal -= this.windows.get(m) ?? 0;
    this.windows.delete(m);
  }

  /**
   * `m`'s receive window wants to grow by `bytes` (TCP autotuning). Granted
   * only while what is buffered plus every window already granted plus this
   * growth fits under the cap, and the grants under half of it (so that
   * grants alone never pause flows), like Linux's tcp_mem pressure clamping the
   * window: a guest can then pin at most the cap plus flows x the initial
   * window in receive rings, however many flows read fast and then stop. A
   * grant is held until the flow is removed (an advertised window is never
   * taken back). Not even from a flow gone idle: its ring is empty, but its
   * whole window is still offered (every ACK re-offers it), so the guest may
   * fill it at any moment; lowering the window would only free the grant as
   * the guest sends into it, which an idle guest never does. What an idle
   * flow costs others is growth, never progress: grants stop at half the cap.
   */
  growWindow(m: BudgetMember, bytes: number): boolean {
    // A flow already removed (its pipe finished) would hold its grant forever.
    if (!this.members.has(m)) return false;
    if (this.now() - this.countedAt >= RECOUNT_MS) this.recount();
    if (this.total + this.windowTotal + bytes > this.maxBytes) return false;
    // Grants never take more than half the cap: the rest stays for bytes actually buffered.
    if (this.windowTotal + bytes > this.maxBytes / 2) return false;
    this.windows.set(m, (this.windows.get(m) ?? 0) + bytes);
    this.windowTotal += bytes;
    return true;
  }

  /**
   * What one flow may hold once the budget is exhausted: its fair share, but
   * never more than SHARE_CEILING. A ceiling rather than the share alone,
   * because flows that filled up while they were few (a large share) keep
   * their bytes; with the ceiling the total stays under
   * maxBytes + flows x (SHARE_CEILING + one read chunk + the stack's initial
   * receive window): what a paused guest side still receives lands in its
   * ring, within a window that grew only by grants (growWindow).
   */
  private share(): number {
    return Math.min(SHARE_CEILING, this.maxBytes / Math.max(1, this.members.size));
  }

  /** Bytes that may still be buffered before the budget is reached (at the last count), less the room reserved: a host read is only made large within it. */
  get room(): number {
    return Math.max(0, this.maxBytes - this.total - this.windowTotal - this.reserved);
  }

  /**
   * A host read of up to `bytes` was sized on room() and will land later:
   * Node asks for the next read's buffer right after the previous read, and
   * the read comes whenever the socket is next readable. Until it lands
   * (release()), its room is not offered to other reads; without this every
   * flow sized its next read on the same room, and each could land a 256 KiB
   * read past the cap (224 KiB per flow over it, 8 flows).
   */
  reserve(bytes: number): void {
    this.reserved += bytes;
  }

  release(bytes: number): void {
    this.reserved = Math.max(0, this.reserved - bytes);
  }

  /**
   * `m` just took `bytes` into its buffers. Returns true if it must stop
   * taking more (pause its source) until resumeFromBudget() is called.
   */
  charge(m: BudgetMember, bytes: number): boolean {
    this.total += bytes;
    if (this.now() - this.countedAt >= RECOUNT_MS) this.recount();
    if (this.total + this.windowTotal < this.maxBytes) return false;
    if (this.paused.has(m)) return true;
    if (sheddable(m) < this.share()) return false;
    this.paused.add(m);
    this.pauses++;
    this.armResumeCheck();
    return true;
  }

  stats(): BufferBudgetStats {
    this.recount();
    return { max: this.maxBytes, current: this.total, peak: this.peak, pausedFlows: this.paused.size, pauses: this.pauses, windowBytes: this.windowTotal };
  }

  /** Resumes every paused flow and stops the timer (shutdown). */
  close(): void {
    if (this.timer !== undefined) clearTimeout(this.timer);
    this.timer = undefined;
    this.resume([...this.paused]);
  }

  private recount(): void {
    let sum = 0;
    for (const m of this.members) sum += m.bufferedBytes();
    this.total = sum;
    if (sum > this.peak) this.peak = sum;
    this.countedAt = this.now();
  }

  private armResumeCheck(): void {
    if (this.timer !== undefined) return;
    this.timer = setTimeout(() => {
      this.timer = undefined;
      this.recount();
      const lowWater = this.maxBytes * 0.75;
      const halfShare = this.share() / 2;
      const go = this.total + this.windowTotal < lowWater ? [...this.paused] : [...this.paused].filter((m) => sheddable(m) < halfShare);
      this.resume(go);
      if (this.paused.size > 0) this.armResumeCheck();
    }, RESUME_CHECK_MS);
    this.timer.unref();
  }

  private resume(members: BudgetMember[]): void {
    for (const m of members) {
      this.paused.delete(m);
      m.resumeFromBudget();
    }
  }
}
