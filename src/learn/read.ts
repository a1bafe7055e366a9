/**
 * Reading decision records back from log text, for `moat learn`. Two line
 * shapes carry them (src/egress/decision-log.ts):
 *  - the --decision-log file: one record per line, `{"time", "id",
 *    "decision", "reason", "rule", "proto", "dst", "name", "via", ...}`;
 *  - the main log with --log-format json: `{"time", "level", "msg":
 *    "egress decision", "component", ...the record's fields}`.
 * Any other line (other log messages, pretty-format lines, blank lines) is
 * not a decision and is counted, not fatal: a main log holds much else.
 */
import type { LearnRecord } from './core.js';

export interface ReadResult {
  records: LearnRecord[];
  /** Lines that were not decision records (blank lines are not counted). */
  skipped: number;
}

const DECISIONS = new Set(['allowed', 'blocked', 'would-block']);
const PROTOS = new Set(['tcp', 'udp', 'quic', 'dns']);

/** One line → a record, or null when the line is not a decision record. */
export function parseDecisionLine(line: string): LearnRecord | null {
  const text = line.trim();
  if (!text.startsWith('{')) return null;
  let o: unknown;
  try {
    o = JSON.parse(text);
  } catch {
    return null;
  }
  if (typeof o !== 'object' || o === null || Array.isArray(o)) return null;
  const r = o as Record<string, unknown>;
  // A main-log line: only "egress decision" messages are records.
  if ('msg' in r && r['msg'] !== 'egress decision') return null;
  const { decision, reason, proto, dst, name } = r;
  if (typeof decision !== 'string' || !DECISIONS.has(decision)) return null;
  // A flow's bytes at its close (moat learn --budgets reads those): not a decision of its own.
  if (reason === 'flow-closed') return null;
  if (typeof proto !== 'string' || !PROTOS.has(proto)) return null;
  if (typeof dst !== 'string' || typeof reason !== 'string') return null;
  if (name !== null && name !== undefined && typeof name !== 'string') return null;
  return {
    decision: decision as LearnRecord['decision'],
    reason,
    proto: proto as LearnRecord['proto'],
    dst,
    name: typeof name === 'string' ? name : null,
  };
}

/** Every decision record in a text of lines. */
export function readDecisionRecords(text: string): ReadResult {
  const records: LearnRecord[] = [];
  let skipped = 0;
  for (const line of text.split('\n')) {
    if (line.trim() === '') continue;
    const r = parseDecisionLine(line);
    if (r === null) skipped++;
    else records.push(r);
  }
  return { records, skipped };
}
