/**
 * UDP flows decided by the name in their QUIC Initial (issue 17). The policy
 * said "peek" for a guest UDP flow (a hostname rule covers its port: 443 for
 * a portless rule): its first datagrams are held — at most `holdDatagrams`
 * datagrams and `holdBytes` bytes, for at most `holdMs` — and fed to a
 * QuicInitialReader (sni/quic-initial.ts). Then:
 *
 *   name allowed  -> Moat resolves the NAME (pins, else a live lookup that
 *                    spends from the live budget), the rebinding filter
 *                    keeps the admitted answers, and the flow is NATed to
 *                    the first of them — never to the guest's destination.
 *                    The held datagrams go first; later ones pass without
 *                    inspection, except a new Initial (next paragraph).
 *   refused, unreadable, too big, too slow
 *                 -> dropped (the client falls back to TCP), one decision
 *                    record with proto "quic", the name and the reason; the
 *                    flow's further datagrams are dropped silently until
 *                    the hold time is over (its retransmissions are not
 *                    new decisions).
 *
 * One flow, one name: after the allow, a datagram carrying a QUIC Initial
 * whose DCID is not the one the flow was decided by is a new connection
 * attempt on the same four-tuple (the client's own later Initials keep the
 * original keys and go to the server's chosen DCID, which a fresh reader
 * cannot open). It is held and read like a first flight; the same name lets
 * it through, another name closes the flow and is recorded.
 *
 * Audit mode: every refusal is recorded as would-block and the flow goes
 * through, to its name's addresses when it gave a usable one, else to the
 * guest's destination (never to 169.254/16).
 *
 * Bounds: at most `maxHeld` flows held (reading, resolving, or refused and
 * lingering); a new flow beyond it is dropped and reported through onLimit
 * ('quic'), like a SYN beyond the TCP peek bound.
 */
import { canonicalHostname } from '../../dns/rules.js';
import { formatIp } from '../../netstack/addr.js';
import type { FourTuple, UdpDatagram } from '../../netstack/api.js';
import { longHeaderDcid, looksLikeQuicInitial, QuicInitialReader, type QuicInitialResult, type QuicVersionName } from '../../sni/quic-initial.js';
import type { Decision } from '../../sni/policy.js';
import { dialOrder, familyOf, LiveLookupRefusedError } from '../egress/dial-targets.js';
import { askMark, type AskMark, type Egress, type InFlight } from '../egress/egress.js';
import { nodeQuicCrypto } from '../egress/quic-crypto.js';
import type { Logger } from '../log.js';
import { udpFlowKey, type UdpFlowTable } from './udp-flows.js';

export interface QuicFlowOptions {
  /** Flows held for their name at once. */
  maxHeld: number;
  /** Datagrams held per flow before its name must be known. */
  holdDatagrams: number;
  /** Bytes held per flow before its name must be known. */
  holdBytes: number;
  /** How long a flow may take to name itself (and a refused flow's datagrams are dropped silently). */
  holdMs: number;
  onLimit?: (limit: string, fields: Record<string, unknown>) => void;
}

export const DEFAULT_QUIC_FLOW_OPTIONS: Readonly<QuicFlowOptions> = Object.freeze({
  maxHeld: 256,
  // A post-quantum hello is 2 datagrams; 16 leave room for coalesced 0-RTT and retransmissions.
  holdDatagrams: 16,
  holdBytes: 32 * 1024,
  holdMs: 3_000,
});

/** asking: named, unlisted, waiting on ask mode's pending decision (--on-unlisted ask). */
type HoldState = 'reading' | 'asking' | 'resolving' | 'refused';

interface Held {
  readonly key: string;
  readonly tuple: FourTuple;
  readonly dst: string;
  state: HoldState;
  reader: QuicInitialReader;
  /** Where the guest's own destination leads on the host (audit mode only). */
  readonly guestTarget: string;
  datagrams: Buffer[];
  bytes: number;
  timer: NodeJS.Timeout;
  inFlight?: InFlight;
  /** Re-reading an allowed flow's new Initial: the name it was allowed for. */
  rewatch?: { name: string; dcid: Uint8Array };
  /** Asking: aborted when the hold ends first (its wait on the decision ends). */
  asking?: AbortController;
}

/** What an allowed flow keeps: its name, the DCID it was decided by, what to re-decide on a reload. */
interface Allowed {
  tuple: FourTuple;
  name: string | null;
  dcid: Uint8Array | null;
  /** The hello's CRYPTO stream and version, to check later Initials on the same DCID against (null: let through by audit). */
  hello: { bytes: Uint8Array; version: QuicVersionName } | null;
  inFlight: InFlight;
}

export interface QuicFlowStats {
  /** The bound on held flows (maxHeld). */
  max: number;
  held: number;
  heldBytes: number;
  heldRefused: number;
  allowed: number;
  refused: number;
}

export class QuicFlows {
  private readonly held = new Map<string, Held>();
  /** Allowed flows by key, for the new-Initial check and reload rechecks; entries go with their UDP flow. */
  private readonly allowed = new Map<string, Allowed>();
  private readonly counters = { heldRefused: 0, allowed: 0, refused: 0 };

  constructor(
    private readonly opts: QuicFlowOptions,
    private readonly egress: Egress,
    private readonly udp: UdpFlowTable,
    private readonly log: Logger,
  ) {}

  stats(): QuicFlowStats {
    let heldBytes = 0;
    for (const h of this.held.values()) heldBytes += h.bytes;
    return { max: this.opts.maxHeld, held: this.held.size, heldBytes, ...this.counters };
  }

  /**
   * A guest datagram on a UDP flow the policy said 'peek' for, or on a flow
   * this gate allowed. `guestTarget`: where the guest's own destination
   * leads on the host (used only by audit mode).
   */
  onDatagram(d: UdpDatagram, guestTarget: string): void {
    const key = udpFlowKey(d.src, d.srcPort, d.dst, d.dstPort);
    const h = this.held.get(key);
    if (h !== undefined) {
      this.hold(h, d.payload);
      return;
    }
    const a = this.allowed.get(key);
    if (a !== undefined && this.udp.has(d)) {
      if (a.dcid !== null && a.name !== null && looksLikeQuicInitial(d.payload)) {
        const dcid = longHeaderDcid(d.payload);
        if (dcid !== null && sameBytes(dcid, a.dcid) && a.hello !== null) {
          // The same connection's keys: any CRYPTO bytes must be the hello already read (a retransmission), never a second one.
          const r = QuicInitialReader.seeded(nodeQuicCrypto, { version: a.hello.version, dcid: a.dcid }, a.hello.bytes).push(d.payload);
          if (r.kind === 'malformed') {
            this.egress.recordBlock('name-changed', 'quic', formatIp(d.dst), d.dstPort, a.name, 'quic', `an Initial on the flow's own connection ID that is not its hello (${r.reason})`);
            this.counters.refused++;
            this.allowed.delete(key);
            this.udp.closeWhere((t) => udpFlowKey(t.src, t.srcPort, t.dst, t.dstPort) !== key);
            return;
          }
        } else if (dcid !== null && !sameBytes(dcid, a.dcid) && opensWithOwnKeys(d.payload)) {
          // A new connection attempt on this four-tuple: read its name before anything of it leaves.
          const n = this.startHold(key, d, guestTarget, { name: a.name, dcid: a.dcid });
          if (n !== undefined) this.hold(n, d.payload);
          return;
        }
      }
      this.udp.sendOnFlow(d, d.payload); // an open flow (checked above): never opened here
      return;
    }
    this.allowed.delete(key);
    const n = this.startHold(key, d, guestTarget);
    if (n !== undefined) this.hold(n, d.payload);
  }

  /** Is this four-tuple one the gate holds or allowed (its datagrams come here, not to the plain UDP path)? */
  owns(t: FourTuple): boolean {
    const key = udpFlowKey(t.src, t.srcPort, t.dst, t.dstPort);
    return this.held.has(key) || (this.allowed.has(key) && this.udp.has(t));
  }

  /** The name an allowed flow was let out for (its QUIC SNI), or undefined. */
  admittedName(t: FourTuple): string | undefined {
    return this.allowed.get(udpFlowKey(t.src, t.srcPort, t.dst, t.dstPort))?.name ?? undefined;
  }

  /** The re-decision of an allowed flow on a reload with drop (Egress.recheck with what it was decided as). */
  admitted(t: FourTuple): ((why: string) => boolean) | undefined {
    const a = this.allowed.get(udpFlowKey(t.src, t.srcPort, t.dst, t.dstPort));
    if (a === undefined) return undefined;
    return (why) => this.egress.recheck(a.inFlight, why).keep;
  }

  /**
   * A reload with ?drop=1: held flows re-decided now. Reading: refused if no
   * rule covers their port any more; resolving: Egress.recheck. Returns how
   * many were dropped (each recorded).
   */
  recheckHeld(): number {
    let dropped = 0;
    for (const h of [...this.held.values()]) {
      if (h.state === 'reading') {
        const d = this.egress.decide({ proto: 'udp', dst: h.dst, port: h.tuple.dstPort });
        if (d.verdict !== 'block' || (this.egress.audit && d.reason !== 'link-local')) continue;
        this.egress.record(d, 'quic', h.dst, h.tuple.dstPort, null, 'allowlist changed while held for its name');
      } else if (h.state === 'resolving' && h.inFlight !== undefined) {
        if (this.egress.recheck(h.inFlight, 'while resolving').keep) continue;
      } else continue;
      this.release(h);
      dropped++;
    }
    return dropped;
  }

  closeAll(): void {
    for (const h of [...this.held.values()]) this.release(h);
    this.allowed.clear();
  }

  // --- holding -----------------------------------------------------------

  private startHold(key: string, d: UdpDatagram, guestTarget: string, rewatch?: Held['rewatch']): Held | undefined {
    if (this.held.size >= this.opts.maxHeld) {
      this.counters.heldRefused++;
      const fields = { src: `${formatIp(d.src)}:${d.srcPort}`, dst: `${formatIp(d.dst)}:${d.dstPort}`, max: this.opts.maxHeld };
      if (this.opts.onLimit !== undefined) this.opts.onLimit('quic', fields);
      else this.log.debug('quic flow refused', { ...fields, reason: 'too-many-held-flows' });
      return undefined;
    }
    const tuple: FourTuple = { src: d.src, srcPort: d.srcPort, dst: d.dst, dstPort: d.dstPort };
    const h: Held = {
      key,
      tuple,
      dst: formatIp(d.dst),
      state: 'reading',
      reader: new QuicInitialReader(nodeQuicCrypto),
      datagrams: [],
      bytes: 0,
      guestTarget,
      timer: setTimeout(() => this.timedOut(h), this.opts.holdMs),
      ...(rewatch !== undefined ? { rewatch } : {}),
    };
    h.timer.unref();
    this.held.set(key, h);
    return h;
  }

  private hold(h: Held, payload: Uint8Array): void {
    if (h.state === 'refused') return; // its retransmissions: dropped silently until the hold time ends
    if (h.state === 'resolving' || h.state === 'asking') {
      // Still bounded while the name resolves (or a verdict is awaited): the rest waits with the first ones.
      if (h.datagrams.length < this.opts.holdDatagrams && h.bytes + payload.length <= this.opts.holdBytes) {
        h.datagrams.push(Buffer.from(payload));
        h.bytes += payload.length;
      }
      return;
    }
    if (h.datagrams.length >= this.opts.holdDatagrams || h.bytes + payload.length > this.opts.holdBytes) {
      this.refuse(h, this.egress.recordBlock('peek-too-large', 'quic', h.dst, h.tuple.dstPort, null, null, `${h.datagrams.length + 1} datagrams, ${h.bytes + payload.length} bytes without a name`), null);
      return;
    }
    h.datagrams.push(Buffer.from(payload)); // the view dies with the callback
    h.bytes += payload.length;
    this.examine(h, h.reader.push(payload));
  }

  private examine(h: Held, r: QuicInitialResult): void {
    const port = h.tuple.dstPort;
    switch (r.kind) {
      case 'need-more':
        return;
      case 'not-quic':
        this.refuse(h, this.egress.recordBlock('not-quic', 'quic', h.dst, port, null, null), null);
        return;
      case 'unsupported-version':
        this.refuse(h, this.egress.recordBlock('unsupported-version', 'quic', h.dst, port, null, null, `QUIC version 0x${r.version.toString(16).padStart(8, '0')}`), null);
        return;
      case 'malformed':
        this.refuse(h, this.egress.recordBlock('malformed', 'quic', h.dst, port, null, 'quic', r.reason), null);
        return;
      case 'found': {
        if (r.ech && this.egress.options.refuseEch === true) {
          this.refuse(h, this.egress.recordBlock('ech', 'quic', h.dst, port, r.sni === null ? null : canonicalOr(r.sni), 'quic', 'the ClientHello carries encrypted_client_hello', true), r.sni);
          return;
        }
        if (h.rewatch !== undefined) {
          const same = r.sni !== null && canonicalOr(r.sni) === h.rewatch.name;
          if (!same) {
            this.refuse(h, this.egress.recordBlock('name-changed', 'quic', h.dst, port, r.sni === null ? null : canonicalOr(r.sni), 'quic', `a new QUIC Initial on a flow allowed for ${h.rewatch.name}`), r.sni);
            return;
          }
          // The same name again: the held datagrams go out on the open flow.
          this.finishHold(h);
          // The flow may have closed meanwhile (idle): then they are dropped, never sent anywhere else.
          for (const p of h.datagrams) if (!this.udp.sendOnFlow(h.tuple, p)) break;
          return;
        }
        const decision = this.egress.decide({ proto: 'udp', dst: h.dst, port, peeked: { via: 'quic', name: r.sni } });
        this.decided(h, decision, r.sni, r.dcid, r.ech, r.version);
        return;
      }
    }
  }

  private decided(h: Held, d: Decision, name: string | null, dcid: Uint8Array, ech: boolean, version: QuicVersionName, mark?: AskMark): void {
    const port = h.tuple.dstPort;
    if (mark === undefined && h.rewatch === undefined && this.egress.askable(d)) {
      void this.ask(h, d.name, name, dcid, ech, version);
      return;
    }
    if (d.verdict === 'allow') {
      this.egress.record(d, 'quic', h.dst, port, 'quic', undefined, ech, mark);
      const bytes = h.reader.helloBytes;
      void this.dial(h, d, dcid, bytes === null ? null : { bytes, version });
      return;
    }
    const record: Decision = d.verdict === 'block' ? (d.name === null && name !== null ? { ...d, name: canonicalOr(name) } : d) : { verdict: 'block', reason: 'no-name', rule: null, name };
    const id = this.egress.record(record, 'quic', h.dst, port, 'quic', undefined, ech, mark);
    this.refuse(h, id, name, d.verdict === 'block' && d.reason === 'link-local');
  }

  /**
   * Ask mode: the flow's name is unlisted; its datagrams stay held (bounded
   * as while resolving) until a verdict, then it is decided again: allow-name
   * under the rules that now name it, allow-once as this flow only. A
   * refusal swallows its retransmissions for the hold time, as any refusal.
   */
  private async ask(h: Held, canonical: string, name: string | null, dcid: Uint8Array, ech: boolean, version: QuicVersionName): Promise<void> {
    const port = h.tuple.dstPort;
    h.state = 'asking';
    clearTimeout(h.timer); // the wait is the decision's (--ask-timeout-ms), not the hold's
    h.asking = new AbortController();
    const o = await this.egress.ask!.ask({ name: canonical, proto: 'quic', port, dst: h.dst, via: 'quic' }, h.asking.signal);
    if (this.held.get(h.key) !== h || h.state !== 'asking') return;
    h.state = 'reading';
    h.timer = setTimeout(() => this.timedOut(h), this.opts.holdMs);
    h.timer.unref();
    const mark = askMark(o);
    if (!o.allow) {
      this.refuse(h, this.egress.recordBlock(o.reason, 'quic', h.dst, port, canonical, 'quic', o.detail, ech, mark), name);
      return;
    }
    const d = o.verdict === 'allow-once' ? this.egress.askedOnce(canonical) : this.egress.decide({ proto: 'udp', dst: h.dst, port, peeked: { via: 'quic', name } });
    this.decided(h, d, name, dcid, ech, version, mark);
  }

  private async dial(h: Held, d: Extract<Decision, { verdict: 'allow' }>, dcid: Uint8Array | null, hello: Allowed['hello']): Promise<void> {
    const port = h.tuple.dstPort;
    const inFlight: InFlight = { version: this.egress.version, target: { kind: 'flow', flow: { proto: 'udp', dst: h.dst, port, peeked: { via: 'quic', name: d.name } } }, dial: d.dial, via: 'quic' };
    h.inFlight = inFlight;
    h.state = 'resolving';
    let address: string;
    try {
      if (d.dial.kind === 'address') address = d.dial.address;
      else {
        const resolved = await this.egress.targets.addressesFor(d.dial.name);
        const { admitted, refused } = this.egress.policy.admitResolved(resolved, port);
        if (this.held.get(h.key) !== h || h.state !== 'resolving') return;
        if (admitted.length === 0) {
          const detail = refused.map((x) => `${x.address} (${x.range})`).join(', ') || 'no usable address';
          this.refuse(h, this.egress.recordBlock('rebinding', 'quic', h.dst, port, d.dial.name, 'quic', detail), d.dial.name);
          return;
        }
        // The flow's own family first (issue 19): one datagram socket, one address.
        address = dialOrder(admitted, familyOf(h.dst))[0]!;
      }
    } catch (err) {
      if (this.held.get(h.key) !== h || h.state !== 'resolving') return;
      const reason = err instanceof LiveLookupRefusedError ? err.reason : 'resolve-failed';
      this.refuse(h, this.egress.recordBlock(reason, 'quic', h.dst, port, d.name, 'quic', (err as Error).message), d.name);
      return;
    }
    if (this.held.get(h.key) !== h || h.state !== 'resolving') return;
    // The lookup took time: a reload meanwhile re-decides it (the answer must pass the new rebinding filter too).
    if (!this.egress.recheck(inFlight, 'while resolving', address).keep) {
      this.release(h);
      return;
    }
    this.pass(h, address, inFlight, d.name, dcid, hello, d.rule);
  }

  /** The flow goes out to `address`: held datagrams first. */
  private pass(h: Held, address: string, inFlight: InFlight, name: string | null, dcid: Uint8Array | null, hello: Allowed['hello'] = null, rule: string | null = null): void {
    this.finishHold(h);
    this.udp.closeWhere((t) => udpFlowKey(t.src, t.srcPort, t.dst, t.dstPort) !== h.key); // a stale flow of this tuple (audit, earlier attempt)
    this.allowed.set(h.key, { tuple: h.tuple, name, dcid, hello, inFlight });
    // Entries outlive their UDP flow (idle timeout, eviction) until pruned here: bounded by the flow table.
    if (this.allowed.size > 2 * this.udp.size + 64) for (const [k, a] of this.allowed) if (!this.udp.has(a.tuple)) this.allowed.delete(k);
    this.counters.allowed++;
    for (const p of h.datagrams) this.udp.send(h.tuple, address, p, rule); // the flow's bytes are charged to the rule that allowed it
  }

  /**
   * Refused: dropped, the flow's datagrams swallowed until the hold time
   * ends. Audit mode lets it through instead (never to link-local).
   */
  private refuse(h: Held, _id: string, name: string | null, linkLocal = false): void {
    this.counters.refused++;
    if (h.rewatch !== undefined) {
      // One flow, one name: a new Initial that is unreadable or names another host ends the flow it came on (audit too).
      this.udp.closeWhere((t) => udpFlowKey(t.src, t.srcPort, t.dst, t.dstPort) !== h.key);
      this.allowed.delete(h.key);
    } else if (this.egress.audit && !linkLocal && h.state !== 'refused') {
      void this.auditThrough(h, name);
      return;
    }
    h.state = 'refused';
    h.datagrams = [];
    h.bytes = 0;
  }

  private async auditThrough(h: Held, name: string | null): Promise<void> {
    h.state = 'resolving';
    const port = h.tuple.dstPort;
    const canonical = name === null ? null : canonicalHostname(name);
    let address = h.guestTarget;
    if (typeof canonical === 'string') {
      try {
        const resolved = this.egress.auditAddresses(await this.egress.targets.addressesFor(canonical), port);
        if (resolved.length > 0) address = resolved[0]!;
      } catch {
        // Not resolvable: the guest's own destination it is.
      }
    }
    if (this.held.get(h.key) !== h) return;
    const named = typeof canonical === 'string';
    const inFlight: InFlight = {
      version: this.egress.version,
      target: { kind: 'flow', flow: { proto: 'udp', dst: h.dst, port, ...(named ? { peeked: { via: 'quic', name: canonical } } : {}) } },
      dial: named ? { kind: 'name', name: canonical } : { kind: 'address', address: h.dst },
      via: named ? 'quic' : null,
    };
    this.pass(h, address, inFlight, named ? canonical : null, null);
  }

  private timedOut(h: Held): void {
    if (this.held.get(h.key) !== h) return;
    if (h.state === 'reading') {
      this.refuse(h, this.egress.recordBlock('peek-timeout', 'quic', h.dst, h.tuple.dstPort, null, null, `no name within ${this.opts.holdMs} ms (${h.datagrams.length} datagrams, ${h.bytes} bytes)`), null);
      if ((h.state as HoldState) === 'refused') this.release(h); // its linger is over too
      return;
    }
    if (h.state === 'refused') this.release(h);
    // resolving: the lookup's own timeout ends it
  }

  /** Out of the hold table (the datagrams stay with the caller). */
  private finishHold(h: Held): void {
    clearTimeout(h.timer);
    h.asking?.abort();
    if (this.held.get(h.key) === h) this.held.delete(h.key);
  }

  private release(h: Held): void {
    this.finishHold(h);
    h.datagrams = [];
    h.bytes = 0;
    h.state = 'refused';
  }
}

/** Does a datagram's first Initial open with the keys of its own DCID (a client's first flight does; its later Initials use the first DCID's keys)? */
function opensWithOwnKeys(payload: Uint8Array): boolean {
  const r = new QuicInitialReader(nodeQuicCrypto, { maxPackets: 4 });
  r.push(payload);
  return r.packetsSeen > 0 && r.packetsUndecryptable < r.packetsSeen;
}

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

function canonicalOr(name: string): string {
  const c = canonicalHostname(name);
  return typeof c === 'string' ? c : name;
}
