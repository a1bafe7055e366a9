/**
 * bench:compare's table says whether each of issue 16's targets is met; the
 * closing note quotes it, so the check itself is tested here: each target at,
 * just under and without its baselines.
 */
import { describe, expect, it } from 'vitest';
import { metricsFor } from '../../bench/compare/report.js';
import type { BackendName } from '../../bench/compare/backends.js';

type Figures = Partial<Record<BackendName, { median: number; runs: number[] }>>;
const fig = (median: number) => ({ median, runs: [median] });

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
