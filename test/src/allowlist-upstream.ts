/**
 * A tiny DNS server on 127.0.0.1 (UDP, dns-packet) for the allowlist tests:
 * answers from a zone, NXDOMAIN for names not in it, and counts every
 * question it sees by name, so a test can prove a query never left Moat.
 */
import { createSocket } from 'node:dgram';
import type { AddressInfo } from 'node:net';
import dnsPacket from 'dns-packet';

export type UpstreamEntry =
  | { a?: string[]; aaaa?: string[]; ttl?: number; /** HTTPS (type 65) records as raw RDATA. */ https?: Uint8Array[] }
  | 'hang' // never answers
  | 'servfail';

export interface TestUpstream {
  readonly port: number;
  /** Questions seen, "name TYPE", in order (names lower-cased, no trailing dot). */
  readonly queries: string[];
  /** How many questions named `name` (any type). */
  count(name: string): number;
  close(): Promise<void>;
}

export async function startTestUpstream(zone: Record<string, UpstreamEntry>): Promise<TestUpstream> {
  const sock = createSocket('udp4');
  const queries: string[] = [];
  sock.on('message', (msg, rinfo) => {
    let q: dnsPacket.Packet;
    try {
      q = dnsPacket.decode(msg);
    } catch {
      return;
    }
    const question = q.questions?.[0];
    if (question === undefined) return;
    const name = question.name.toLowerCase().replace(/\.$/, '');
    queries.push(`${name} ${question.type}`);
    const entry = zone[name];
    if (entry === 'hang') return;
    let rcode = 0; // NOERROR (RFC 1035 4.1.1)
    const answers: dnsPacket.Answer[] = [];
    if (entry === undefined) rcode = 3; // NXDOMAIN
    else if (entry === 'servfail') rcode = 2; // SERVFAIL
    else {
      const ttl = entry.ttl ?? 60;
      if (question.type === 'A') for (const a of entry.a ?? []) answers.push({ name: question.name, type: 'A', class: 'IN', ttl, data: a });
      if (question.type === 'AAAA') for (const a of entry.aaaa ?? []) answers.push({ name: question.name, type: 'AAAA', class: 'IN', ttl, data: a });
      if ((question.type as string) === 'UNKNOWN_65') {
        for (const d of entry.https ?? []) answers.push({ name: question.name, type: 'UNKNOWN_65', class: 'IN', ttl, data: Buffer.from(d) } as unknown as dnsPacket.Answer);
      }
    }
    const reply = dnsPacket.encode({
      type: 'response',
      id: q.id ?? 0,
      flags: dnsPacket.RECURSION_DESIRED | dnsPacket.RECURSION_AVAILABLE | rcode,
      questions: q.questions,
      answers,
    });
    sock.send(reply, rinfo.port, rinfo.address);
  });
  await new Promise<void>((r) => sock.bind(0, '127.0.0.1', r));
  return {
    port: (sock.address() as AddressInfo).port,
    queries,
    count: (name) => queries.filter((q) => q.split(' ')[0] === name).length,
    close: () => new Promise<void>((r) => sock.close(() => r())),
  };
}

/** A DNS query for `name`/`type` as bytes. */
export function dnsQuery(name: string, type: 'A' | 'AAAA' | 'TXT' | 'MX', id = 0x1234): Uint8Array {
  return dnsPacket.encode({ type: 'query', id, flags: dnsPacket.RECURSION_DESIRED, questions: [{ name, type, class: 'IN' }] });
}

/** The answer's rcode and addresses (A/AAAA data). */
export function decodeAnswer(bytes: Uint8Array): { id: number; rcode: string; addresses: string[]; types: string[] } {
  const p = dnsPacket.decode(Buffer.from(bytes));
  const answers = p.answers ?? [];
  return {
    id: p.id ?? -1,
    rcode: (p as { rcode?: string }).rcode ?? '',
    addresses: answers.flatMap((a) => (a.type === 'A' || a.type === 'AAAA' ? [String(a.data)] : [])),
    types: answers.map((a) => a.type),
  };
}
