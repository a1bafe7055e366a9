/**
 * The gateway's DNS with the records added over the API (src/local-zones.ts)
 * in front: an A query for a name inside a local zone is answered here
 * (TTL 0, or NXDOMAIN, as gvproxy); everything else, and every query while
 * no zone exists, goes to the wrapped GatewayDns unchanged (the forwarder,
 * or under an allowlist the allowlist's DNS, which keeps deciding what it
 * always decided). An answer from here never reaches the egress policy's
 * pin table: a name answered locally grants no flow.
 */
import { firstQuestionName } from './builtin-names-dns.js';
import { DEFAULT_DNS_FORWARDER_OPTIONS, DnsTcpSession } from './dns-forward.js';
import type { DnsVia, GatewayDns, GatewayDnsStats } from './gateway-dns.js';
import { parseIPv4 } from '../netstack/addr.js';
import type { LocalZones } from './local-zones.js';

const HEADER = 12;
const TYPE_A = 1;
const CLASS_IN = 1;
const RCODE_NXDOMAIN = 3;

export class LocalZonesDns implements GatewayDns {
  private readonly sessions = new Set<DnsTcpSession>();
  private answered = 0;

  constructor(
    private readonly inner: GatewayDns,
    private readonly zones: LocalZones,
  ) {}

  async resolve(query: Uint8Array, via: DnsVia): Promise<Uint8Array | undefined> {
    if (this.zones.size === 0) return this.inner.resolve(query, via);
    const answer = this.answerLocally(query);
    if (answer === undefined) return this.inner.resolve(query, via);
    this.answered++;
    return answer;
  }

  /** The local answer to `query`, or undefined when it is not an A/IN query for a name in a local zone. */
  answerLocally(query: Uint8Array): Uint8Array | undefined {
    // A standard query (QR 0, opcode 0) only.
    if (query.length < HEADER || (query[2]! & 0xf8) !== 0) return undefined;
    const name = firstQuestionName(query);
    if (name === null) return undefined;
    let end = HEADER;
    while (query[end]! !== 0) end += 1 + query[end]!;
    end += 1; // the root label
    if (end + 4 > query.length) return undefined;
    const qtype = (query[end]! << 8) | query[end + 1]!;
    const qclass = (query[end + 2]! << 8) | query[end + 3]!;
    if (qtype !== TYPE_A || qclass !== CLASS_IN) return undefined;
    const found = this.zones.lookup(name);
    if (found === undefined) return undefined;
    const questionEnd = end + 4;
    const ip = found === 'nxdomain' ? undefined : parseIPv4(found.ip);
    const out = new Uint8Array(questionEnd + (ip === undefined ? 0 : 16));
    out.set(query.subarray(0, questionEnd));
    out[2] = 0x80 | (query[2]! & 0x01); // QR, opcode 0, RD as asked (gvproxy: SetReply)
    out[3] = 0x80 | (found === 'nxdomain' ? RCODE_NXDOMAIN : 0); // RA (gvproxy sets RecursionAvailable)
    out[4] = 0;
    out[5] = 1; // the first question only
    out[6] = 0;
    out[7] = ip === undefined ? 0 : 1;
    out.fill(0, 8, 12); // no authority, no additional (an EDNS OPT is not echoed)
    if (ip !== undefined) {
      let o = questionEnd;
      out[o++] = 0xc0; // name: pointer to the question's
      out[o++] = HEADER;
      out[o++] = 0;
      out[o++] = TYPE_A;
      out[o++] = 0;
      out[o++] = CLASS_IN;
      o += 4; // TTL 0, as gvproxy
      out[o++] = 0;
      out[o++] = 4;
      out[o++] = ip >>> 24;
      out[o++] = (ip >>> 16) & 0xff;
      out[o++] = (ip >>> 8) & 0xff;
      out[o++] = ip & 0xff;
    }
    return out;
  }

  openTcpSession(): DnsTcpSession {
    const session = new DnsTcpSession(this, DEFAULT_DNS_FORWARDER_OPTIONS, () => this.sessions.delete(session));
    this.sessions.add(session);
    return session;
  }

  stats(): GatewayDnsStats & { localZonesAnswered: number } {
    return { ...this.inner.stats(), localZonesAnswered: this.answered };
  }

  async close(): Promise<void> {
    for (const s of [...this.sessions]) s.abort();
    await this.inner.close();
  }
}
