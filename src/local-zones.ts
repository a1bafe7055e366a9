/**
 * DNS records added at run time over the API (`POST /services/dns/add`,
 * `GET /services/dns/all`), in gvproxy's shape and with its semantics
 * (gvisor-tap-vsock pkg/types/configuration.go `Zone`/`Record`,
 * pkg/services/dns/dns.go `addLocalAnswers` and `addZone`):
 *
 *   {"Name":"containers.internal.","Records":[{"Name":"gateway","IP":"192.168.127.1"}],"DefaultIP":""}
 *
 * - A query whose name ends in "." + zone name belongs to the first such
 *   zone: a record of that name answers (A, TTL 0), else the zone's
 *   DefaultIP, else NXDOMAIN. Only A is answered; other types fall through
 *   to the gateway's DNS as in gvproxy (which asks its upstream).
 * - Adding a zone whose name exists puts the new records first, the old
 *   after, and takes the new DefaultIP; otherwise the zone is appended.
 *
 * Where Moat differs (docs/gvproxy.md): names match without regard to case
 * and with or without the trailing dot (gvproxy compares bytes, so a zone
 * "a.internal" without the dot never matches); `Regexp` records are refused
 * (a JavaScript regular expression from an API body could backtrack for
 * ever; gvproxy's Go RE2 cannot); IPv6 addresses are refused (only A is
 * answered); unknown keys are refused rather than ignored; the table is
 * bounded (MAX_ZONES zones, MAX_RECORDS records).
 *
 * What a record grants: a name, nothing more. Under an allowlist the egress
 * policy still decides every flow by its rules; these answers are never
 * pinned, so a record can neither open an address nor redirect an allowed
 * name (Moat dials allowed names by the addresses it resolved itself).
 *
 * Pure: no I/O.
 */
import { formatIPv4, parseIPv4 } from '../netstack/addr.js';

export const MAX_ZONES = 64;
export const MAX_RECORDS = 4096;
const MAX_NAME = 253;

export interface LocalRecord {
  name: string;
  ip: string;
}

export interface LocalZone {
  /** As given (shown back as given); matched by `key`. */
  name: string;
  /** gvproxy's `Records`: null when the zone was added without any (Go's nil slice). */
  records: LocalRecord[] | null;
  /** "" for none. */
  defaultIp: string;
}

/** gvproxy's JSON for one zone (Go's encoding of types.Zone: field names as declared, net.IP as text). */
export interface GvproxyZoneJson {
  Name: string;
  Records: { Name: string; IP: string }[] | null;
  DefaultIP: string;
}

export class LocalZonesError extends Error {
  constructor(
    readonly kind: 'invalid' | 'full',
    message: string,
  ) {
    super(message);
    this.name = 'LocalZonesError';
  }
}

/** What a lookup found: an address, NXDOMAIN, or (undefined) no zone holds the name. */
export type LocalAnswer = { ip: string } | 'nxdomain';

/** A zone as looked up: its key and suffix, and record names in lower case, computed once when added. */
interface IndexedZone {
  key: string;
  suffix: string;
  records: Map<string, string>;
  defaultIp: string;
}

export class LocalZones {
  private readonly zones: LocalZone[] = [];
  /** zones[i], indexed for lookup (the first record of a name wins, as gvproxy's loop). */
  private index: IndexedZone[] = [];
  private recordCount = 0;

  constructor(initial: readonly LocalZone[] = []) {
    for (const z of initial) this.add(z);
  }

  get size(): number {
    return this.zones.length;
  }

  /** Adds (or merges into the zone of the same name) as gvproxy's addZone; throws LocalZonesError('full') past a bound, changing nothing. */
  add(zone: LocalZone): void {
    const key = zoneKey(zone.name);
    const i = this.zones.findIndex((z) => zoneKey(z.name) === key);
    const added = zone.records?.length ?? 0;
    if (this.recordCount + added > MAX_RECORDS) {
      throw new LocalZonesError('full', `the DNS table holds at most ${MAX_RECORDS} records (${this.recordCount} now, ${added} more asked)`);
    }
    if (i < 0 && this.zones.length >= MAX_ZONES) throw new LocalZonesError('full', `the DNS table holds at most ${MAX_ZONES} zones`);
    const copy = (r: readonly LocalRecord[] | null): LocalRecord[] | null => (r === null ? null : r.map((x) => ({ ...x })));
    if (i >= 0) {
      const old = this.zones[i]!;
      // gvproxy: req.Records = append(req.Records, zone.Records...): the new records first.
      const records = zone.records === null && old.records === null ? null : [...(zone.records ?? []), ...(old.records ?? [])].map((x) => ({ ...x }));
      this.zones[i] = { name: zone.name, records, defaultIp: zone.defaultIp };
    } else {
      this.zones.push({ name: zone.name, records: copy(zone.records), defaultIp: zone.defaultIp });
    }
    this.recordCount += added;
    this.index = this.zones.map(indexZone);
  }

  /** `GET /services/dns/all`: gvproxy's JSON, zones in order. */
  toJson(): GvproxyZoneJson[] {
    return this.zones.map((z) => ({
      Name: z.name,
      Records: z.records === null ? null : z.records.map((r) => ({ Name: r.name, IP: r.ip })),
      DefaultIP: z.defaultIp,
    }));
  }

  /** The answer for an A query of `name` (lower case, no trailing dot), or undefined when no zone holds it. */
  lookup(name: string): LocalAnswer | undefined {
    for (const z of this.index) {
      let rest: string;
      if (z.key === '') rest = name; // gvproxy: zone "" has suffix ".", which every name has
      else if (name.endsWith(z.suffix)) rest = name.slice(0, name.length - z.suffix.length);
      else continue;
      const ip = z.records.get(rest);
      if (ip !== undefined) return { ip };
      return z.defaultIp !== '' ? { ip: z.defaultIp } : 'nxdomain';
    }
    return undefined;
  }
}

function indexZone(z: LocalZone): IndexedZone {
  const key = zoneKey(z.name);
  const records = new Map<string, string>();
  for (const r of z.records ?? []) {
    const n = r.name.toLowerCase();
    if (n !== '' && !records.has(n)) records.set(n, r.ip);
  }
  return { key, suffix: `.${key}`, records, defaultIp: z.defaultIp };
}

function zoneKey(name: string): string {
  return name.toLowerCase().replace(/\.$/, '');
}

/**
 * Parses a `POST /services/dns/add` body: gvproxy's types.Zone as Go's
 * encoding/json reads it (key names match without regard to case; a null or
 * "" IP is none). Throws LocalZonesError('invalid') naming the bad field.
 */
export function parseZoneJson(body: unknown): LocalZone {
  const obj = asObject(body, 'the body');
  const f = fields(obj, ['Name', 'Records', 'DefaultIP'], 'the zone');
  const name = optString(f.get('Name'), 'Name');
  if (name.length > MAX_NAME) throw new LocalZonesError('invalid', `Name: longer than ${MAX_NAME} characters`);
  if (!/^[A-Za-z0-9_.-]*$/.test(name)) throw new LocalZonesError('invalid', `Name: "${name}" is not a DNS name (letters, digits, "-", "_" and dots)`);
  const defaultIp = optIp(f.get('DefaultIP'), 'DefaultIP');
  const rawRecords = f.get('Records');
  let records: LocalRecord[] | null = null;
  if (rawRecords !== undefined && rawRecords !== null) {
    if (!Array.isArray(rawRecords)) throw new LocalZonesError('invalid', 'Records: must be a list of {"Name","IP"}');
    records = rawRecords.map((r, i) => {
      const rf = fields(asObject(r, `Records[${i}]`), ['Name', 'IP', 'Regexp'], `Records[${i}]`);
      const re = rf.get('Regexp');
      if (re !== undefined && re !== null && re !== '') {
        throw new LocalZonesError('invalid', `Records[${i}].Regexp: regular-expression records are not supported by Moat (use Name, or the zone's DefaultIP)`);
      }
      const rname = optString(rf.get('Name'), `Records[${i}].Name`);
      if (rname.length > MAX_NAME || !/^[A-Za-z0-9_.-]*$/.test(rname)) throw new LocalZonesError('invalid', `Records[${i}].Name: "${rname}" is not a DNS name`);
      const ip = optIp(rf.get('IP'), `Records[${i}].IP`);
      if (ip === '') throw new LocalZonesError('invalid', `Records[${i}].IP: an IPv4 address is required`);
      return { name: rname, ip };
    });
  }
  return { name, records, defaultIp };
}

function asObject(x: unknown, what: string): Record<string, unknown> {
  if (typeof x !== 'object' || x === null || Array.isArray(x)) throw new LocalZonesError('invalid', `${what}: must be a JSON object`);
  return x as Record<string, unknown>;
}

/** Go's encoding/json matches keys case-insensitively; an unknown key is refused (gvproxy ignores it). */
function fields(obj: Record<string, unknown>, known: readonly string[], what: string): Map<string, unknown> {
  const out = new Map<string, unknown>();
  for (const [k, v] of Object.entries(obj)) {
    const name = known.find((n) => n.toLowerCase() === k.toLowerCase());
    if (name === undefined) throw new LocalZonesError('invalid', `${what}: unknown key "${k}" (expected ${known.join(', ')})`);
    out.set(name, v);
  }
  return out;
}

function optString(x: unknown, label: string): string {
  if (x === undefined || x === null) return '';
  if (typeof x !== 'string') throw new LocalZonesError('invalid', `${label}: must be a string`);
  return x;
}

function optIp(x: unknown, label: string): string {
  const s = optString(x, label);
  if (s === '') return '';
  const ip = parseIPv4(s);
  if (ip === undefined) throw new LocalZonesError('invalid', `${label}: must be an IPv4 address, got "${s}"`);
  return formatIPv4(ip);
}

/** gvproxy's zones without -config (cmd/gvproxy/config.go): gateway and host under containers.internal. and docker.internal. */
export function gvproxyDefaultZones(gatewayIp: string, hostIp: string): LocalZone[] {
  const records = (): LocalRecord[] => [
    { name: 'gateway', ip: gatewayIp },
    { name: 'host', ip: hostIp },
  ];
  return [
    { name: 'containers.internal.', records: records(), defaultIp: '' },
    { name: 'docker.internal.', records: records(), defaultIp: '' },
  ];
}
