/**
 * SOCKS5 UDP ASSOCIATE (RFC 1928 section 7), with UDP's one rule from the
 * allowlist: a datagram goes out only to an address an IP/CIDR rule allows
 * (EgressPolicy.decide with proto 'udp'), exactly as `moat serve` treats a
 * guest's UDP. A domain-addressed datagram is dropped (a name cannot be
 * checked in a datagram; QUIC clients then fall back to TCP), as are
 * fragments (FRAG != 0, which the RFC lets a server refuse) and IPv6.
 *
 *   client --[RSV RSV FRAG ATYP DST.ADDR DST.PORT DATA]--> relay socket   out socket --DATA--> dst
 *   client <--[same header naming the source, DATA]------- relay socket   out socket <--DATA-- dst
 *          (bound where the client reached the listener)         (bound on 0.0.0.0)
 *
 * The relay accepts datagrams from the control connection's client address
 * only (section 7: "MUST drop datagrams from any source IP address other
 * than the one recorded"); the first one fixes the client's port. Replies
 * are relayed only from destinations this association sent to (a bounded
 * set), so the relay is not an open inbound port. The association lives as
 * long as its TCP control connection.
 */
import { createSocket, type Socket as UdpSocket } from 'node:dgram';
import type { Socket } from 'node:net';
import type { Egress } from '../egress/egress.js';
import type { Logger } from '../log.js';
import type { FlowMeter } from '../traffic/byte-budgets.js';

/** Destinations one association remembers for replies; the oldest is forgotten beyond it. */
const MAX_PEERS = 256;

export interface UdpAssociationCounters {
  /** Datagrams the kernel took for a destination (send callback without error). */
  udpOut: number;
  /** Replies the kernel took for the client. */
  udpIn: number;
  udpDropped: number;
  /** Datagrams (either way) whose send failed: no route, unreachable, buffer full. */
  udpSendErrors: number;
}

export type UdpHeader = { kind: 'ok'; frag: number; atyp: number; address: string | null; port: number; dataOffset: number } | { kind: 'bad' };

/** The SOCKS5 UDP request header (RFC 1928 7). `address` is null for a domain or IPv6 ATYP. */
export function parseUdpHeader(b: Uint8Array): UdpHeader {
  if (b.length < 4 || b[0] !== 0 || b[1] !== 0) return { kind: 'bad' };
  const frag = b[2]!;
  const atyp = b[3]!;
  let end: number;
  let address: string | null = null;
  if (atyp === 0x01) {
    end = 8;
    if (b.length < end + 2) return { kind: 'bad' };
    address = `${b[4]}.${b[5]}.${b[6]}.${b[7]}`;
  } else if (atyp === 0x03) {
    if (b.length < 5) return { kind: 'bad' };
    end = 5 + b[4]!;
    if (b.length < end + 2) return { kind: 'bad' };
  } else if (atyp === 0x04) {
    end = 20;
    if (b.length < end + 2) return { kind: 'bad' };
  } else return { kind: 'bad' };
  return { kind: 'ok', frag, atyp, address, port: (b[end]! << 8) | b[end + 1]!, dataOffset: end + 2 };
}

/** Header for a datagram relayed back to the client from IPv4 `address:port`. */
export function udpReplyHeader(address: string, port: number): Uint8Array {
  const [a, b, c, d] = address.split('.').map(Number);
  return Uint8Array.from([0, 0, 0, 0x01, a!, b!, c!, d!, port >> 8, port & 0xff]);
}

/**
 * Opens the relay for `control` (the TCP connection that asked) and
 * resolves with the client-facing address and port for the reply.
 *
 * Two sockets: the client-facing one is bound on the address the client
 * reached the SOCKS listener at (so the client can reach it too, and it is
 * no more exposed than the listener), the outbound one on the unspecified
 * address, so the kernel picks the source each destination's route needs.
 * One socket bound on 127.0.0.1 could not send beyond loopback at all
 * (issue 14, finding 10).
 */
export async function openUdpAssociation(
  control: Socket,
  egress: () => Egress,
  counters: UdpAssociationCounters,
  log: Logger,
): Promise<{ address: string; port: number }> {
  const clientIp = (control.remoteAddress ?? '').replace(/^::ffff:/, '');
  const bindIp = (control.localAddress ?? '127.0.0.1').replace(/^::ffff:/, '');
  const relay: UdpSocket = createSocket('udp4');
  const out: UdpSocket = createSocket('udp4');
  // Byte budgets: this association's datagrams are charged whole to the rule that allowed each (one meter per rule).
  const meters = new Map<string, FlowMeter>();
  const close = (): void => {
    for (const m of meters.values()) m.close();
    meters.clear();
    for (const s of [relay, out]) {
      try {
        s.close();
      } catch {
        // already closed
      }
    }
  };
  try {
    await Promise.all([bind(relay, bindIp), bind(out, '0.0.0.0')]);
  } catch (e) {
    close();
    throw e;
  }
  if (control.destroyed) {
    close();
    throw new Error('the control connection closed before the relay was ready');
  }
  let clientPort: number | null = null;
  const peers = new Set<string>();
  let loggedSendError = false;
  /** Counts a datagram only once the kernel has taken it; a failure is counted apart (logged once per association). */
  const sent = (which: 'udpOut' | 'udpIn') => (err: Error | null) => {
    if (err === null) {
      counters[which]++;
      return;
    }
    counters.udpSendErrors++;
    if (!loggedSendError) {
      loggedSendError = true;
      log.info('socks5 udp send failed', { direction: which === 'udpOut' ? 'out' : 'in', error: err.message });
    }
  };
  relay.on('message', (msg, from) => {
    if (from.address === clientIp && (clientPort === null || from.port === clientPort)) {
      clientPort ??= from.port;
      outbound(msg);
      return;
    }
    counters.udpDropped++; // RFC 1928 7: only the client's datagrams are relayed
  });
  out.on('message', (msg, from) => {
    const key = `${from.address}:${from.port}`;
    if (!peers.has(key) || clientPort === null) {
      counters.udpDropped++;
      return;
    }
    const header = udpReplyHeader(from.address, from.port);
    relay.send([header, msg], clientPort, clientIp, sent('udpIn'));
  });
  for (const s of [relay, out]) {
    s.on('error', (err) => {
      log.info('socks5 udp relay failed', { error: err.message });
      control.destroy();
    });
  }
  control.once('close', close);

  const outbound = (msg: Buffer): void => {
    const h = parseUdpHeader(msg);
    if (h.kind === 'bad' || h.frag !== 0 || h.address === null) {
      counters.udpDropped++;
      if (h.kind === 'ok' && h.atyp === 0x03) {
        const e = egress();
        e.recordBlock('udp-needs-ip-rule', 'udp', 'name', h.port, null, 'target', 'a domain-addressed datagram cannot be checked; UDP needs an IP/CIDR rule');
      }
      return;
    }
    const e = egress();
    const d = e.decideAddress('udp', h.address, h.port);
    const key = `${h.address}:${h.port}`;
    if (d.verdict !== 'allow') {
      counters.udpDropped++;
      e.record(d.verdict === 'block' ? d : { verdict: 'block', reason: 'udp-needs-ip-rule', rule: null, name: null }, 'udp', h.address, h.port, 'target');
      return;
    }
    if (!peers.has(key)) {
      // One record per new destination of this association (the log is rate-limited anyway).
      e.record(d, 'udp', h.address, h.port, 'target');
      if (peers.size >= MAX_PEERS) peers.delete(peers.values().next().value!);
      peers.add(key);
    }
    const payload = msg.subarray(h.dataOffset);
    if (d.rule !== null && e.budgets !== undefined && e.budgets.size > 0) {
      let m = meters.get(d.rule);
      if (m === undefined || m.ended) {
        m = e.budgets.open(d.rule, () => {});
        if (m !== undefined) meters.set(d.rule, m);
      }
      if (m !== undefined && m.charge(payload.length, 'egress') < payload.length) {
        counters.udpDropped++;
        e.recordBudgetCut('udp', h.address, h.port, d.rule, null, 'target');
        return;
      }
    }
    out.send(payload, h.port, h.address, sent('udpOut'));
  };

  const a = relay.address();
  return { address: a.address, port: a.port };
}

function bind(s: UdpSocket, address: string): Promise<void> {
  return new Promise((resolve, reject) => {
    s.once('error', reject);
    s.bind(0, address, () => {
      s.off('error', reject);
      resolve();
    });
  });
}
