/**
 * `moat learn LOGFILE... | -`: reads decision logs (an audit-mode run of a
 * job, or an enforce-mode run that was refused) and prints the smallest
 * allowlist under which the same job passes. The decisions are in
 * src/learn/core.ts (pure); this file reads files and prints.
 */
import { parseArgs } from 'node:util';
import { parseIpv4 } from '../sni/ranges.js';
import { DEFAULT_HOST_ALIAS, DEFAULT_WILDCARD_MIN, learnAllowlist, type LearnRecord } from './learn/core.js';
import { readDecisionRecords } from './learn/read.js';
import { DEFAULT_BUDGET_MARGIN, proposeBudgets, readFlowBytes, type FlowBytes } from './learn/budgets.js';
import type { LogStream } from './log.js';

export { collapse, DEFAULT_HOST_ALIAS, DEFAULT_WILDCARD_MIN, learnAllowlist, registrableDomain, type LearnOptions, type LearnRecord, type LearnResult } from './learn/core.js';
export { parseDecisionLine, readDecisionRecords, type ReadResult } from './learn/read.js';

export type LearnFormat = 'lines' | 'flags' | 'json';

export interface LearnIo {
  stdout: LogStream;
  stderr: LogStream;
  readFile(path: string): Promise<string>;
  readStdin(): Promise<string>;
}

/**
 * Formats rules (and budgets, with --budgets) for printing: one per line
 * (budgets after the rules as `--budget RULE=SIZE` lines), as `--allow` /
 * `--budget` flags (shell-quoted), or as a --config JSON file.
 */
export function formatRules(rules: readonly string[], format: LearnFormat, budgets?: readonly string[]): string {
  const b = budgets ?? [];
  switch (format) {
    case 'lines':
      return rules.map((r) => `${r}\n`).join('') + b.map((x) => `--budget ${x}\n`).join('');
    case 'flags':
      return rules.length === 0 ? '' : `${[...rules.map((r) => `--allow ${shellQuote(r)}`), ...b.map((x) => `--budget ${shellQuote(x)}`)].join(' ')}\n`;
    case 'json':
      return `${JSON.stringify(budgets === undefined ? { allow: rules } : { allow: rules, budget: b }, null, 2)}\n`;
  }
}

/** Rules are letters, digits and `._:/-*[]` (budgets add `=`); `*` and brackets need quoting for a POSIX shell. */
function shellQuote(rule: string): string {
  return /^[A-Za-z0-9._:/=-]+$/.test(rule) ? rule : `'${rule.replace(/'/g, `'\\''`)}'`;
}

export function learnHelp(): string {
  return [
    'Usage: moat learn [--format lines|flags|json] [--wildcard-min N] [--refused-only] [--include-dns] [--host-ip IP] [--budgets [--budget-margin X] [--budget-direction egress|both]] LOGFILE... | -',
    '',
    'Reads egress decision logs (moat serve --decision-log FILE, or the main log with --log-format json;',
    '"-" reads standard input) and prints the smallest allowlist under which the same job passes:',
    '  - a TCP flow that named a host (TLS SNI, HTTP Host, a name Moat resolved) gives the exact host;',
    '    a bare rule on 80/443 (it covers both), HOST:PORT on any other port;',
    `  - names below one registrable domain become *.PARENT once N of them appear (--wildcard-min, default ${DEFAULT_WILDCARD_MIN});`,
    '    PARENT is their deepest common parent and never a public suffix (no *.com, *.co.uk, *.github.io);',
    '  - a flow without a name (UDP, a connection to a bare IP) gives IP:PORT, and so does any flow to the',
    '    host alias or 169.254.0.0/16, which the policy reaches by IP rule only.',
    'Every decision counts, allowed ones too: the output replaces the rules the log was recorded under.',
    'Left out, each with a note on standard error: names only looked up in DNS and never connected to',
    '(--include-dns keeps them), and refused flows to 169.254.0.0/16 (cloud metadata).',
    '',
    'Flags:',
    '  --format FORMAT      lines (one rule per line, default), flags (--allow RULE ...) or json ({"allow": [...]}, a moat serve --config file).',
    `  --wildcard-min N     Names below one registrable domain before they become a wildcard, 2 or more. Default: ${DEFAULT_WILDCARD_MIN}.`,
    '  --refused-only       Only blocked and would-block decisions: rules to add to the ones you keep.',
    '  --include-dns        Also allow names that were only looked up in DNS.',
    '  --host-ip IP         The host alias of the run (moat serve --host-ip); flows to it get IP rules. Default: 192.168.127.254.',
    '  --budgets            Also propose a byte budget per rule (--budget RULE=SIZE): what its flows moved in the log (the',
    '                       decision log\'s "reason": "flow-closed" lines) times --budget-margin, rounded up (at least 64KiB). No period.',
    `  --budget-margin X    The margin over what was observed, 1 or more. Default: ${DEFAULT_BUDGET_MARGIN}.`,
    '  --budget-direction D egress (guest -> world, default) or both: what the proposed budgets count (pass the same to moat serve).',
    '  --help, -h           Show this help.',
    '',
    'Example:',
    '  moat serve --listen-qemu unix:///tmp/moat.sock --mode audit --allow example.com --decision-log /tmp/decisions.jsonl',
    '  moat learn --format json /tmp/decisions.jsonl > moat.json && moat serve --listen-qemu unix:///tmp/moat.sock --config moat.json',
    '',
    'Exit status: 0 with the rules printed, 2 for a usage error, 1 when a log cannot be read or holds no flow.',
    '',
  ].join('\n');
}

/** Runs `moat learn` with `args` (after "learn"); returns the exit code. Never throws. */
export async function runLearn(args: readonly string[], io: LearnIo): Promise<number> {
  let values: Record<string, string | boolean | undefined>;
  let files: string[];
  try {
    const parsed = parseArgs({
      args: [...args],
      options: {
        format: { type: 'string' },
        'wildcard-min': { type: 'string' },
        'refused-only': { type: 'boolean' },
        'include-dns': { type: 'boolean' },
        'host-ip': { type: 'string' },
        budgets: { type: 'boolean' },
        'budget-margin': { type: 'string' },
        'budget-direction': { type: 'string' },
        help: { type: 'boolean', short: 'h' },
      },
      strict: true,
      allowPositionals: true,
    });
    values = parsed.values;
    files = parsed.positionals;
  } catch (e) {
    io.stderr.write(`moat learn: ${(e as Error).message} (see moat learn --help)\n`);
    return 2;
  }
  if (values.help === true) {
    io.stdout.write(learnHelp());
    return 0;
  }
  const format = (values.format ?? 'lines') as string;
  if (format !== 'lines' && format !== 'flags' && format !== 'json') {
    io.stderr.write(`moat learn: --format: must be lines, flags or json, got "${format}"\n`);
    return 2;
  }
  let wildcardMin = DEFAULT_WILDCARD_MIN;
  if (values['wildcard-min'] !== undefined) {
    const text = values['wildcard-min'] as string;
    wildcardMin = /^[0-9]{1,6}$/.test(text) ? Number(text) : NaN;
    if (!(wildcardMin >= 2)) {
      io.stderr.write(`moat learn: --wildcard-min: must be an integer, 2 or more, got "${text}"\n`);
      return 2;
    }
  }
  const hostAlias = (values['host-ip'] as string | undefined) ?? DEFAULT_HOST_ALIAS;
  if (parseIpv4(hostAlias) === null) {
    io.stderr.write(`moat learn: --host-ip: must be an IPv4 address, got "${hostAlias}"\n`);
    return 2;
  }
  const margin = values['budget-margin'] === undefined ? DEFAULT_BUDGET_MARGIN : Number(values['budget-margin']);
  if (!(margin >= 1 && margin <= 1000)) {
    io.stderr.write(`moat learn: --budget-margin: must be a number 1..1000, got "${String(values['budget-margin'])}"\n`);
    return 2;
  }
  const direction = (values['budget-direction'] as string | undefined) ?? 'egress';
  if (direction !== 'egress' && direction !== 'both') {
    io.stderr.write(`moat learn: --budget-direction: must be egress or both, got "${direction}"\n`);
    return 2;
  }
  if ((values['budget-margin'] !== undefined || values['budget-direction'] !== undefined) && values.budgets !== true) {
    io.stderr.write(`moat learn: --budget-margin and --budget-direction need --budgets\n`);
    return 2;
  }
  if (files.length === 0) {
    io.stderr.write('moat learn: give at least one decision log file, or - for standard input (see moat learn --help)\n');
    return 2;
  }

  const records: LearnRecord[] = [];
  const flows: FlowBytes[] = [];
  let skipped = 0;
  for (const file of files) {
    let text: string;
    try {
      text = file === '-' ? await io.readStdin() : await io.readFile(file);
    } catch (e) {
      io.stderr.write(`moat learn: cannot read "${file}": ${(e as Error).message}\n`);
      return 1;
    }
    const read = readDecisionRecords(text);
    for (const r of read.records) records.push(r);
    // Flow lines are not decisions, but they are not noise either: not counted as skipped.
    const flowLines = readFlowBytes(text);
    if (values.budgets === true) for (const f of flowLines) flows.push(f);
    skipped += read.skipped - flowLines.length;
  }

  const result = learnAllowlist(records, {
    wildcardMin,
    refusedOnly: values['refused-only'] === true,
    includeDns: values['include-dns'] === true,
    hostAlias,
  });
  for (const note of result.notes) io.stderr.write(`moat learn: note: ${note}\n`);
  if (result.rules.length === 0) {
    // An empty allowlist means "no allowlist" to moat serve: never print one as if it were a result.
    io.stderr.write(`moat learn: no flow to allow in ${records.length} decision record(s)${skipped > 0 ? ` (${skipped} other line(s) skipped)` : ''}\n`);
    return 1;
  }
  let budgets: string[] | undefined;
  if (values.budgets === true) {
    const proposal = proposeBudgets(result.rules, flows, { margin, direction, hostAlias });
    for (const note of proposal.notes) io.stderr.write(`moat learn: note: ${note}\n`);
    budgets = proposal.budgets;
  }
  io.stdout.write(formatRules(result.rules, format, budgets));
  io.stderr.write(
    `moat learn: ${result.rules.length} rule(s) from ${result.used} decision(s)${skipped > 0 ? `; ${skipped} line(s) that are not decisions skipped` : ''}\n`,
  );
  return 0;
}
