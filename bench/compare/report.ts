/**
 * Turning a comparison run into a table (Moat's ratio to each baseline and to
 * the targets) and an SVG bar chart. Pure functions of the results.
 */
import { MOAT_BACKENDS, PASST_BACKENDS, type BackendName } from './backends.js';

/** One figure of one backend: the median and every run's value. */
export interface Figure {
  median: number;
  runs: number[];
  /** iperf only: segments the sender retransmitted per GB moved, each run (guest->host: the guest's TCP). */
  retransPerGB?: number[];
}

/** metric key -> backend -> figure. Keys look like "iperf mtu=65520 guest->host P1". */
export type Figures = Record<string, Partial<Record<BackendName, Figure>>>;

export interface Metric {
  key: string;
  label: string;
  unit: string;
  /** Higher is better (throughput, rates) or lower (latency). */
  higherIsBetter: boolean;
  /** Scale for printing (e.g. 1e9 for Gbit/s). */
  scale: number;
  digits: number;
  /** The target for Moat, as text and as a check. */
  target?: { text: string; met: (moat: number, f: Partial<Record<BackendName, Figure>>) => boolean | undefined };
  /** The target is judged against passt too (passtReference picks which passt figure). */
  againstPasst?: boolean;
}

const vs = (f: Partial<Record<BackendName, Figure>>, b: BackendName): number | undefined => f[b]?.median;

/**
 * Above this many retransmitted segments per GB, a passt iperf run measured
 * passt's losses, not its speed. This passt (Debian's 2023-03-09) drops the
 * tail of a short sendmsg() to the host socket (the socket's send buffer is
 * full when the host-side reader falls behind) and answers with a single
 * duplicate ACK, so each loss costs the guest a retransmission timeout
 * (>= 200 ms, backed off): 100-1,100 per GB on lossy uploads here, 0-50 on
 * its downloads and clean uploads.
 */
export const LOSSY_RETRANS_PER_GB = 100;

/** Retransmitted segments per GB moved (bps over `seconds`); undefined when iperf3 did not report them. */
export function retransPerGB(retransmits: number | undefined, bps: number, seconds: number): number | undefined {
  if (retransmits === undefined || !(bps > 0) || !(seconds > 0)) return undefined;
  return retransmits / ((bps * seconds) / 8 / 1e9);
}

function medianOf(xs: readonly number[]): number {
  const s = xs.filter((x) => Number.isFinite(x)).sort((a, b) => a - b);
  if (s.length === 0) return Number.NaN;
  const m = s.length >> 1;
  return s.length % 2 === 1 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

/** The runs of a figure that did not lose data (retransPerGB at most LOSSY_RETRANS_PER_GB, or not reported). */
export function cleanRuns(fig: Figure): number[] {
  return fig.runs.filter((v, i) => {
    const r = fig.retransPerGB?.[i];
    return Number.isFinite(v) && !(r !== undefined && r > LOSSY_RETRANS_PER_GB);
  });
}

/** The passt figure a target is judged against, and the passt runs left out as lossy. */
export interface PasstReference {
  /** The best (highest, or lowest for latency) passt median over clean runs; undefined when none ran or every run was lossy. */
  ref?: { backend: BackendName; median: number; clean: number; runs: number };
  /** Per passt backend that ran: how many of its runs were left out as lossy (only backends with any). */
  lossy: Array<{ backend: BackendName; runs: number; of: number }>;
}

/**
 * passt runs in two modes (PASST_BACKENDS). A run that lost data inside
 * passt (more than LOSSY_RETRANS_PER_GB) measured passt's losses, not its
 * speed, so it is left out; each mode's figure is the median of its clean
 * runs, and the reference is the stronger mode: a target met against passt
 * is met against passt at its best on this machine. With no clean passt run
 * the passt half of a target is not judged (like a passt that did not run).
 */
export function passtReference(f: Partial<Record<BackendName, Figure>>, higherIsBetter = true): PasstReference {
  const out: PasstReference = { lossy: [] };
  for (const b of PASST_BACKENDS) {
    const fig = f[b];
    if (fig === undefined) continue;
    const clean = cleanRuns(fig);
    const ran = fig.runs.filter((v) => Number.isFinite(v)).length;
    if (clean.length < ran) out.lossy.push({ backend: b, runs: ran - clean.length, of: ran });
    if (clean.length === 0) continue;
    const median = medianOf(clean);
    if (out.ref === undefined || (higherIsBetter ? median > out.ref.median : median < out.ref.median))
      out.ref = { backend: b, median, clean: clean.length, runs: ran };
  }
  return out;
}

export function iperfKey(mtu: number, direction: string, streams: number): string {
  return `iperf mtu=${mtu} ${direction} P${streams}`;
}

/** The IPv6 case: one stream over IPv6 (family 6), and over IPv4 in the same runs, interleaved (family 4), so their ratio sees the same load. */
export function iperfFamilyKey(mtu: number, direction: string, family: 4 | 6): string {
  return `iperf-pair mtu=${mtu} ${direction} IPv${family}`;
}

/** Table rows of the IPv6 case at `mtu`. */
export function ipv6Metrics(mtu: number): Metric[] {
  return ['guest->host', 'host->guest'].flatMap((direction) =>
    ([6, 4] as const).map((family) => ({
      key: iperfFamilyKey(mtu, direction, family),
      label: `${direction} 1 stream over IPv${family}${family === 4 ? ' (paired with IPv6)' : ''}, MTU ${mtu}`,
      unit: 'Gbit/s',
      higherIsBetter: true,
      scale: 1e9,
      digits: 2,
    })),
  );
}

/** One line per backend and direction: the IPv6 median over the paired IPv4 median (no target: issue 19 asks for the ratio). */
export function ipv6Ratios(figures: Figures, mtu: number, backends: readonly BackendName[]): string[] {
  const out: string[] = [];
  for (const direction of ['guest->host', 'host->guest']) {
    for (const b of backends) {
      const v6 = figures[iperfFamilyKey(mtu, direction, 6)]?.[b];
      const v4 = figures[iperfFamilyKey(mtu, direction, 4)]?.[b];
      if (v6 === undefined || v4 === undefined) continue;
      const runs = (f: Figure): string => f.runs.map((x) => (x / 1e9).toFixed(2)).join(' ');
      out.push(
        `IPv6/IPv4 ${b} ${direction} MTU ${mtu}: ${(v6.median / 1e9).toFixed(2)} / ${(v4.median / 1e9).toFixed(2)} Gbit/s = ${ratio(v6.median, v4.median)} ` +
          `(medians of ${v6.runs.length}; IPv6 runs ${runs(v6)}; IPv4 runs ${runs(v4)})`,
      );
    }
  }
  return out;
}

/**
 * Whether MOAT reaches SLIRP_FACTOR x slirp4netns and PASST_FACTOR x passt
 * (passtReference); undefined when neither baseline ran, and a missing
 * baseline is not counted as met or missed.
 */
function againstBoth(moat: number, f: Partial<Record<BackendName, Figure>>, slirpFactor: number, passtFactor: number): boolean | undefined {
  const slirp = vs(f, 'slirp4netns');
  const passt = passtReference(f).ref?.median;
  if (slirp === undefined && passt === undefined) return undefined;
  return (slirp === undefined || moat >= slirpFactor * slirp) && (passt === undefined || moat >= passtFactor * passt);
}

/** The metrics in display order, with issue 16's targets attached where it sets one. */
export function metricsFor(mtus: readonly number[], streams: readonly number[], rrMtu: number): Metric[] {
  const out: Metric[] = [];
  for (const mtu of mtus) {
    for (const direction of ['guest->host', 'host->guest']) {
      for (const p of streams) {
        const m: Metric = {
          key: iperfKey(mtu, direction, p),
          label: `${direction} ${p} stream${p > 1 ? 's' : ''}, MTU ${mtu}`,
          unit: 'Gbit/s',
          higherIsBetter: true,
          scale: 1e9,
          digits: 2,
        };
        if (mtu === 65520 && p === 1) {
          // Issue 16: guest->host >= 2.5x slirp4netns, host->guest >= 2x; >= 0.8x passt each way.
          const slirpFactor = direction === 'guest->host' ? 2.5 : 2;
          m.target = {
            text: `>= ${slirpFactor}x slirp4netns and >= 0.8x passt`,
            met: (moat, f) => againstBoth(moat, f, slirpFactor, 0.8),
          };
          m.againstPasst = true;
        }
        if (mtu === 1500) {
          // Issue 16 asks >= 3 Gbit/s guest->host (receive offload); host->guest keeps issue 7's >= 1 Gbit/s.
          const floor = direction === 'guest->host' ? 3 : 1;
          m.target = { text: `>= ${floor} Gbit/s`, met: (moat) => moat >= floor * 1e9 };
        }
        out.push(m);
      }
    }
  }
  out.push(
    {
      key: 'rr perSec',
      label: `request/response (64 B) per s, MTU ${rrMtu}`,
      unit: '/s',
      higherIsBetter: true,
      scale: 1,
      digits: 0,
      target: {
        text: '>= 1.1x slirp4netns',
        met: (moat, f) => {
          const s = vs(f, 'slirp4netns');
          return s === undefined ? undefined : moat >= 1.1 * s;
        },
      },
    },
    { key: 'rr p50Us', label: 'request/response p50', unit: 'us', higherIsBetter: false, scale: 1, digits: 0 },
    {
      key: 'rr p99Us',
      label: 'request/response p99',
      unit: 'us',
      higherIsBetter: false,
      scale: 1,
      digits: 0,
      target: {
        text: '<= 1.2x slirp4netns',
        met: (moat, f) => {
          const s = vs(f, 'slirp4netns');
          return s === undefined ? undefined : moat <= 1.2 * s;
        },
      },
    },
    {
      key: 'conn perSec',
      label: 'new connections per s',
      unit: '/s',
      higherIsBetter: true,
      scale: 1,
      digits: 0,
      target: {
        text: '>= 2x slirp4netns',
        met: (moat, f) => {
          const s = vs(f, 'slirp4netns');
          return s === undefined ? undefined : moat >= 2 * s;
        },
      },
    },
    { key: 'dns perSec', label: 'DNS queries per s (one at a time)', unit: '/s', higherIsBetter: true, scale: 1, digits: 0 },
    ...ipv6Metrics(rrMtu),
  );
  return out;
}

function fmt(v: number | undefined, m: Metric): string {
  if (v === undefined || !Number.isFinite(v)) return '-';
  return (v / m.scale).toFixed(m.digits);
}

function ratio(a: number | undefined, b: number | undefined): string {
  if (a === undefined || b === undefined || !Number.isFinite(a) || !Number.isFinite(b) || b === 0) return '-';
  return `${(a / b).toFixed(2)}x`;
}

/** The Moat configurations in a run (relay and/or exec), each compared with every baseline. */
export function moatBackends(backends: readonly BackendName[]): BackendName[] {
  return backends.filter((b) => MOAT_BACKENDS.includes(b));
}

/**
 * One line per target judged against passt: which passt figure was the
 * reference, and which were left out as lossy (with their retransmissions
 * per GB), so a ratio to passt is never read against a broken baseline.
 */
export function passtReferenceLines(figures: Figures, metrics: readonly Metric[]): string[] {
  const out: string[] = [];
  for (const m of metrics) {
    const f = figures[m.key];
    if (!m.againstPasst || f === undefined) continue;
    const r = passtReference(f, m.higherIsBetter);
    const ref = r.ref
      ? `${r.ref.backend} ${fmt(r.ref.median, m)} ${m.unit} (median of ${r.ref.clean} clean run${r.ref.clean > 1 ? 's' : ''} of ${r.ref.runs})`
      : 'no clean passt run: the passt half of the target is not judged';
    const left = r.lossy.map(({ backend, runs, of }) => {
      const rt = (f[backend]?.retransPerGB ?? []).map((x) => Math.round(x)).join('/');
      return `${backend}: ${runs} of ${of} runs left out as lossy (retransmissions per GB ${rt})`;
    });
    out.push(`passt reference for ${m.label}: ${[ref, ...left].join('; ')}`);
  }
  return out;
}

/** Plain-text table: one row per metric, a column per backend, each Moat configuration's ratios, the target. */
export function table(figures: Figures, metrics: readonly Metric[], backends: readonly BackendName[]): string {
  const moats = moatBackends(backends);
  const baselines = backends.filter((b) => !moats.includes(b));
  const head = [
    'metric',
    'unit',
    ...backends,
    ...moats.flatMap((m) => baselines.map((b) => `${m}/${b}`)),
    'target',
    ...moats.map((m) => `met(${m})`),
  ];
  const rows: string[][] = [head];
  for (const m of metrics) {
    const f = figures[m.key];
    if (!f) continue;
    rows.push([
      m.label,
      m.unit,
      ...backends.map((b) => fmt(f[b]?.median, m)),
      ...moats.flatMap((mb) => baselines.map((b) => ratio(f[mb]?.median, f[b]?.median))),
      m.target?.text ?? '',
      ...moats.map((mb) => {
        const v = f[mb]?.median;
        const met = m.target && v !== undefined ? m.target.met(v, f) : undefined;
        return met === undefined ? '' : met ? 'yes' : 'NO';
      }),
    ]);
  }
  const widths = head.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
  return rows.map((r) => r.map((c, i) => (i < 2 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join('  ')).join('\n');
}

const COLORS: Record<BackendName, string> = {
  moat: '#d9480f',
  'moat-exec': '#f08c00',
  'moat-offload': '#e8590c',
  'moat-offload-base': '#ffa94d',
  passt: '#1971c2',
  'passt-qemu': '#74c0fc',
  slirp4netns: '#2f9e44',
  veth: '#868e96',
};

function esc(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
}

/**
 * Horizontal grouped bars: one group per metric, one bar per backend, each
 * bar's length relative to the best backend of that metric (so metrics with
 * different units share the chart), labelled with its value.
 */
export function svgChart(figures: Figures, metrics: readonly Metric[], backends: readonly BackendName[], title: string): string {
  const shown = metrics.filter((m) => figures[m.key] !== undefined && m.higherIsBetter);
  const barH = 14;
  const gap = 10;
  const labelW = 300;
  const plotW = 420;
  const groupH = backends.length * barH + gap + 16;
  const height = 60 + shown.length * groupH + 30;
  const width = labelW + plotW + 120;
  const parts: string[] = [];
  parts.push(
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="sans-serif" font-size="12">`,
    `<rect width="100%" height="100%" fill="#fff"/>`,
    `<text x="10" y="22" font-size="15" font-weight="bold">${esc(title)}</text>`,
  );
  backends.forEach((b, i) => {
    const x = 10 + i * 130;
    parts.push(`<rect x="${x}" y="34" width="12" height="12" fill="${COLORS[b]}"/><text x="${x + 16}" y="44">${b}</text>`);
  });
  let y = 64;
  for (const m of shown) {
    const f = figures[m.key]!;
    const best = Math.max(...backends.map((b) => f[b]?.median ?? 0).filter(Number.isFinite));
    parts.push(`<text x="10" y="${y + 10}" font-weight="bold">${esc(m.label)} (${esc(m.unit)})</text>`);
    backends.forEach((b, i) => {
      const v = f[b]?.median;
      const by = y + 16 + i * barH;
      const w = v !== undefined && Number.isFinite(v) && best > 0 ? Math.max(1, (v / best) * plotW) : 0;
      parts.push(`<text x="${labelW - 6}" y="${by + 11}" text-anchor="end" fill="#495057">${b}</text>`);
      if (w > 0) parts.push(`<rect x="${labelW}" y="${by + 1}" width="${w.toFixed(1)}" height="${barH - 3}" fill="${COLORS[b]}"/>`);
      parts.push(`<text x="${labelW + w + 4}" y="${by + 11}">${esc(fmt(v, m))}</text>`);
    });
    y += groupH;
  }
  parts.push(`<text x="10" y="${height - 10}" fill="#868e96">bars: median of the runs, relative to the best backend of each row; higher is better</text>`);
  parts.push('</svg>');
  return parts.join('\n') + '\n';
}
