/**
 * Secrets and injection rules: what the operator declares with
 * `--secret NAME=env:VAR|file:PATH` and `--inject 'HOST[:PORT] HEADER: TEMPLATE'`.
 *
 * The guest never gets a value, only its placeholder `moat-secret-NAME`.
 * A value lives in a `Secret` whose every accidental way out (JSON.stringify,
 * util.inspect, template strings, String()) gives the placeholder, so a
 * config object that ends up in a log line, an API answer or an error message
 * cannot carry it. Only `reveal()` gives the value, and only the header
 * rewriter calls it.
 */
import { inspect } from 'node:util';
import { canonicalHostname } from '../../dns/rules.js';

export const PLACEHOLDER_PREFIX = 'moat-secret-';
/** Names are what may follow the prefix in a header value without ambiguity. */
const NAME_RE = /^[A-Za-z0-9_-]{1,64}$/;
/** RFC 9110 token: a header field name. */
const HEADER_NAME_RE = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]{1,256}$/;
/** A value must fit in one header line: no CR, LF, NUL (header injection), printable otherwise. */
const HEADER_VALUE_RE = /^[\t\x20-\x7e\x80-\xff]*$/;
/** The largest secret value accepted (a header line; servers refuse more than ~8 KiB of head anyway). */
export const MAX_SECRET_BYTES = 4096;
/** Headers the rewriter must never own: framing, routing and hop-by-hop fields. */
const FORBIDDEN_HEADERS = new Set(['host', 'content-length', 'transfer-encoding', 'connection', 'upgrade', 'te', 'trailer', 'keep-alive', 'proxy-connection']);

export function placeholder(name: string): string {
  return `${PLACEHOLDER_PREFIX}${name}`;
}

export class Secret {
  readonly #value: string;
  constructor(
    readonly name: string,
    value: string,
  ) {
    this.#value = value;
  }
  get placeholder(): string {
    return placeholder(this.name);
  }
  /** The value. The header rewriter and the response mask are its only callers. */
  reveal(): string {
    return this.#value;
  }
  toString(): string {
    return this.placeholder;
  }
  toJSON(): string {
    return this.placeholder;
  }
  [inspect.custom](): string {
    return `Secret(${this.placeholder})`;
  }
}

/** Where a secret's value comes from; read once at start-up. */
export interface SecretSource {
  readEnv(name: string): string | undefined;
  readFile(path: string): string;
}

/** Parses `NAME=env:VAR` or `NAME=file:PATH` into a Secret; returns an error text (never containing a value) on failure. */
export function parseSecret(text: string, src: SecretSource): Secret | string {
  const eq = text.indexOf('=');
  if (eq <= 0) return `expected NAME=env:VAR or NAME=file:PATH, got "${text}"`;
  const name = text.slice(0, eq);
  if (!NAME_RE.test(name)) return `secret name "${name}": letters, digits, _ and - only (1..64)`;
  const from = text.slice(eq + 1);
  let value: string;
  if (from.startsWith('env:')) {
    const v = src.readEnv(from.slice(4));
    if (v === undefined || from.length === 4) return `secret "${name}": environment variable "${from.slice(4)}" is not set`;
    value = v;
  } else if (from.startsWith('file:')) {
    try {
      value = src.readFile(from.slice(5));
    } catch (err) {
      return `secret "${name}": cannot read "${from.slice(5)}" (${(err as NodeJS.ErrnoException).code ?? 'error'})`;
    }
    // A file written by `echo` ends in a newline that is not part of the key.
    value = value.replace(/\r?\n$/, '');
  } else return `secret "${name}": the source must be env:VAR or file:PATH, got "${from}"`;
  if (value.length === 0) return `secret "${name}": the value is empty`;
  if (Buffer.byteLength(value) > MAX_SECRET_BYTES) return `secret "${name}": the value is longer than ${MAX_SECRET_BYTES} bytes`;
  // Never echo the value: say only what is wrong with it.
  if (!HEADER_VALUE_RE.test(value)) return `secret "${name}": the value holds a control character (CR, LF, NUL...) and cannot go in a header`;
  if (value.includes(PLACEHOLDER_PREFIX)) return `secret "${name}": the value contains "${PLACEHOLDER_PREFIX}"`;
  return new Secret(name, value);
}

export interface InjectRule {
  /** Canonical host name. */
  readonly host: string;
  readonly port: number;
  /** Lowercase header name. */
  readonly header: string;
  /** The template split at ${NAME}: literal text at even indexes, secret names at odd ones. */
  readonly parts: readonly string[];
  /** The secrets the template names, in order of first use. */
  readonly secrets: readonly Secret[];
  /** As written, for the start-up log and GET /secrets (placeholders only). */
  readonly text: string;
}

/** Parses `HOST[:PORT] HEADER: TEMPLATE`; returns an error text on failure. */
export function parseInjectRule(text: string, secrets: ReadonlyMap<string, Secret>): InjectRule | string {
  const m = /^(\S+)\s+([^\s:]+):\s*(.*)$/.exec(text);
  if (m === null) return `expected 'HOST[:PORT] HEADER: TEMPLATE', got "${text}"`;
  const [, target, headerRaw, template] = m as unknown as [string, string, string, string];
  let hostText = target;
  let port = 443;
  const colon = target.lastIndexOf(':');
  if (colon >= 0) {
    const p = target.slice(colon + 1);
    if (!/^\d{1,5}$/.test(p) || Number(p) < 1 || Number(p) > 65535) return `"${text}": port must be 1..65535, got "${p}"`;
    port = Number(p);
    hostText = target.slice(0, colon);
  }
  if (hostText.includes('*')) return `"${text}": the host must be exact (no wildcard): the value goes to one named host`;
  const host = canonicalHostname(hostText);
  if (typeof host !== 'string' || /^\d+\.\d+\.\d+\.\d+$/.test(host)) return `"${text}": "${hostText}" is not a hostname`;
  if (!HEADER_NAME_RE.test(headerRaw)) return `"${text}": "${headerRaw}" is not a header name`;
  const header = headerRaw.toLowerCase();
  if (FORBIDDEN_HEADERS.has(header)) return `"${text}": Moat does not rewrite the ${header} header (framing and routing stay the client's)`;
  if (!HEADER_VALUE_RE.test(template)) return `"${text}": the template holds a control character`;
  const parts: string[] = [];
  const used: Secret[] = [];
  const re = /\$\{([^}]*)\}/g;
  let last = 0;
  for (let r = re.exec(template); r !== null; r = re.exec(template)) {
    const name = r[1]!;
    const s = secrets.get(name);
    if (s === undefined) return `"${text}": \${${name}} names no --secret`;
    parts.push(template.slice(last, r.index), name);
    if (!used.includes(s)) used.push(s);
    last = r.index + r[0].length;
  }
  parts.push(template.slice(last));
  if (used.length === 0) return `"${text}": the template names no secret (\${NAME})`;
  return { host, port, header, parts, secrets: used, text };
}

/** The header value the rule sets when the request has none. */
export function renderTemplate(rule: InjectRule): string {
  let out = '';
  for (let i = 0; i < rule.parts.length; i++) out += i % 2 === 0 ? rule.parts[i] : secretOf(rule, rule.parts[i]!).reveal();
  return out;
}

function secretOf(rule: InjectRule, name: string): Secret {
  return rule.secrets.find((s) => s.name === name)!;
}

/**
 * What a request's header becomes: with the header present, each of the
 * rule's placeholders in it is replaced by its value (nothing else changes);
 * absent, the header is set from the template. Returns the new value and the
 * names injected (empty: the header is left as the client sent it).
 */
export function injectHeader(rule: InjectRule, current: string | undefined): { value: string; injected: string[] } | null {
  if (current === undefined) return { value: renderTemplate(rule), injected: rule.secrets.map((s) => s.name) };
  let value = current;
  const injected: string[] = [];
  for (const s of rule.secrets) {
    if (!value.includes(s.placeholder)) continue;
    value = value.split(s.placeholder).join(s.reveal());
    injected.push(s.name);
  }
  return injected.length === 0 ? null : { value, injected };
}

/** The rules for one destination, keyed by host and port. */
export class InjectRules {
  private readonly byTarget = new Map<string, InjectRule[]>();
  constructor(readonly rules: readonly InjectRule[]) {
    for (const r of rules) {
      const k = `${r.host}:${r.port}`;
      const list = this.byTarget.get(k) ?? [];
      list.push(r);
      this.byTarget.set(k, list);
    }
  }
  /** The rules for a canonical host and port; empty when the connection is not to be intercepted. */
  for(host: string, port: number): readonly InjectRule[] {
    return this.byTarget.get(`${host}:${port}`) ?? [];
  }
  get size(): number {
    return this.rules.length;
  }
}
