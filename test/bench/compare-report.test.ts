/**
 * bench:compare's table says whether each of issue 16's targets is met; the
 * closing note quotes it, so the check itself is tested here: each target at,
 * just under and without its baselines.
 */
import { describe, expect, it } from 'vitest';
import { LOSSY_RETRANS_PER_GB, metricsFor, passtReference, passtReferenceLines, retransPerGB } from '../../bench/compare/report.js';
import type { BackendName } from '../../bench/compare/backends.js';

type Figures = Partial<Record<BackendName, { median: number; runs: number[] }>>;
const fig = (median: number) => ({ median, runs: [median] });
/** A figure whose runs retransmitted `perGB` segments per GB each. */
const lossyFig = (median: number, perGB: number) => ({ median, runs: [median, median, median], retransPerGB: [perGB, perGB, perGB] });

function target(key: string) {
  const m = metricsFor([65520, 1500], [1, 4], 65520).find((x) => x.key.replace(/\s+/g, ' ') === key || x.label === key);
  if (m?.target === undefined) throw new Error(`no target on ${key}`);
  return m.target;
}

describe('bench:compare targets (issue 16)', () => {
  it('guest->host 1 stream needs 2.5x slirp4netns and 0.8x passt', () => {
    const t = target('guest->host 1 stream, MTU 65520');
    const f: Figures = { slirp4netns: fig(2e9), passt: fig(6e9) };
    expect(t.met(5e9, f)).toBe(true);
    expect(t.met(4.9e9, f)).toBe(false); // under 2.5x slirp4netns
    expect(t.met(5e9, { ...f, passt: fig(6.3e9) })).toBe(false); // under 0.8x passt
    expect(t.met(5e9, { slirp4netns: fig(2e9) })).toBe(true); // passt not run: slirp4netns decides
    expect(t.met(5e9, {})).toBeUndefined();
  });
  it('host->guest 1 stream needs 2x slirp4netns and 0.8x passt', () => {
    const t = target('host->guest 1 stream, MTU 65520');
    expect(t.met(4e9, { slirp4netns: fig(2e9), passt: fig(5e9) })).toBe(true);
    expect(t.met(3.9e9, { slirp4netns: fig(2e9) })).toBe(false);
  });
  it('MTU 1500 guest->host needs 3 Gbit/s, host->guest 1 Gbit/s', () => {
    expect(target('guest->host 1 stream, MTU 1500').met(2.9e9, {})).toBe(false);
    expect(target('guest->host 1 stream, MTU 1500').met(3e9, {})).toBe(true);
    expect(target('host->guest 1 stream, MTU 1500').met(1e9, {})).toBe(true);
  });
  it('request/response 1.1x slirp4netns, p99 at most 1.2x, connections 2x', () => {
    const slirp: Figures = { slirp4netns: fig(100) };
    expect(target('request/response (64 B) per s, MTU 65520').met(111, slirp)).toBe(true);
    expect(target('request/response (64 B) per s, MTU 65520').met(109, slirp)).toBe(false);
    expect(target('request/response p99').met(120, slirp)).toBe(true);
    expect(target('request/response p99').met(121, slirp)).toBe(false);
    expect(target('new connections per s').met(200, slirp)).toBe(true);
    expect(target('new connections per s').met(199, slirp)).toBe(false);
  });
});

describe('bench:compare passt reference (the strongest credible passt mode)', () => {
  it('takes the better of pasta and passt behind the QEMU socket', () => {
    expect(passtReference({ passt: fig(5e9), 'passt-qemu': fig(9e9) }).ref).toEqual({ backend: 'passt-qemu', median: 9e9 });
    expect(passtReference({ passt: fig(9e9), 'passt-qemu': fig(5e9) }).ref).toEqual({ backend: 'passt', median: 9e9 });
    // Latency: lower is better.
    expect(passtReference({ passt: fig(120), 'passt-qemu': fig(300) }, false).ref).toEqual({ backend: 'passt', median: 120 });
  });
  it('leaves out a figure that measured passt losing data, and judges Moat against the credible one', () => {
    const f = { slirp4netns: fig(2e9), passt: lossyFig(1.2e9, 400), 'passt-qemu': fig(9e9) };
    expect(passtReference(f)).toEqual({ ref: { backend: 'passt-qemu', median: 9e9 }, lossy: ['passt'] });
    const t = target('guest->host 1 stream, MTU 65520');
    expect(t.met(7.2e9, f)).toBe(true); // 0.8x passt-qemu, 3.6x slirp4netns
    expect(t.met(7.1e9, f)).toBe(false); // over 0.8x the lossy 1.2 Gbit/s, but under 0.8x the credible 9
  });
  it('judges only slirp4netns when every passt figure is lossy (no win over a broken baseline)', () => {
    const f = { slirp4netns: fig(2e9), passt: lossyFig(1.2e9, 400), 'passt-qemu': lossyFig(1.1e9, 300) };
    expect(passtReference(f)).toEqual({ ref: undefined, lossy: ['passt', 'passt-qemu'] });
    const t = target('guest->host 1 stream, MTU 65520');
    expect(t.met(5e9, f)).toBe(true);
    expect(t.met(4.9e9, f)).toBe(false);
    expect(t.met(5e9, { passt: lossyFig(1.2e9, 400) })).toBeUndefined();
  });
  it('counts a figure as lossy above LOSSY_RETRANS_PER_GB (median of the runs), and not when unknown', () => {
    expect(passtReference({ passt: lossyFig(9e9, LOSSY_RETRANS_PER_GB) }).lossy).toEqual([]);
    expect(passtReference({ passt: lossyFig(9e9, LOSSY_RETRANS_PER_GB + 1) }).lossy).toEqual(['passt']);
    // One lossy run of three: the median run is clean.
    expect(passtReference({ passt: { median: 9e9, runs: [9e9, 9e9, 1e9], retransPerGB: [0, 1, 500] } }).lossy).toEqual([]);
  });
  it('retransmissions per GB from an iperf3 run', () => {
    expect(retransPerGB(100, 8e9, 3)).toBeCloseTo(100 / 3); // 8 Gbit/s for 3 s = 3 GB
    expect(retransPerGB(undefined, 8e9, 3)).toBeUndefined();
    expect(retransPerGB(5, 0, 3)).toBeUndefined();
  });
  it('prints which passt figure each passt target was judged against', () => {
    const metrics = metricsFor([65520], [1], 65520);
    const lines = passtReferenceLines(
      { 'iperf mtu=65520 guest->host P1': { passt: lossyFig(1.2e9, 400), 'passt-qemu': fig(9e9) } },
      metrics,
    );
    expect(lines).toEqual([
      'passt reference for guest->host 1 stream, MTU 65520: passt-qemu 9.00 Gbit/s; passt 1.20 Gbit/s left out, lossy (400/400/400 retransmissions per GB)',
    ]);
  });
});
