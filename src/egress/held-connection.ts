/**
 * A guest TCP connection held until its first bytes name where it goes.
 *
 * The policy said "peek": the SYN is accepted (there is no other way to get
 * the ClientHello or the request head), the guest's bytes are read into a
 * bounded buffer and fed to the NamePeeker, and nothing is dialed yet. Then:
 *
 *   name found, policy allows  -> guest paused (its window closes), the NAME
 *                                 is resolved by Moat, the rebinding guard
 *                                 filters the answers, the first admitted
 *                                 address that answers is dialed, the held
 *                                 bytes are written to it and a TcpPipe
 *                                 takes over both sockets.
 *   name found, policy refuses -> HTTP 403 / TLS access_denied alert, FIN,
 *                                 and a reset if the guest lingers.
 *   no name / not TLS or HTTP  -> as refused (reset when we cannot speak
 *                                 the protocol).
 *   nothing in peekTimeoutMs   -> reset: no name in time, no connection.
 *
 * Once piped, the flow stays watched (FlowWatch, the pipe's inspector): every
 * further HTTP request must name the same host, a second TLS ClientHello the
 * same SNI and ECH presence — else 403 / reset (one connection, one name).
 * The held bytes go through that watch too, so a request pipelined behind
 * the first in the same segment is checked like any other.
 *
 * A TLS flow the policy allowed to a host with an --inject rule is not piped:
 * it is handed to the interceptor (src/inject/), which terminates the guest's
 * TLS and injects the secret; it stays in the held table until it ends.
 *
 * With `refuseEch`, a ClientHello carrying encrypted_client_hello is refused
 * (reason 'ech'); every TLS decision records `ech`.
 *
 * In audit mode every refusal above is recorded as 'would-block' and the
 * connection goes through anyway: to the name it gave (resolved by Moat) if
 * it gave a usable one, else to the address the guest chose.
 *
 * Every outcome is one decision record; refusals carry its id to the client.
 */
import type { Socket } from 'node:net';
import type { TLSSocket } from 'node:tls';
import { GuestStream } from '../inject/guest-stream.js';
import type { Injector } from '../inject/interceptor.js';
import { injectionReporter } from '../inject/records.js';
import { canonicalHostname } from '../../dns/rules.js';
import type { SynInfo, TcpCloseReason, TcpHandlers, TcpSocket } from '../../netstack/api.js';
import { formatIp } from '../../netstack/addr.js';
import { NamePeeker, type PeekResult } from '../../sni/peek.js';
import type { Decision } from '../../sni/policy.js';
import type { Logger } from '../log.js';
import type { DialAdmission, FlowTag } from '../nat/tcp-flows.js';
import { dialOrder, familyOf, LiveLookupRefusedError } from './dial-targets.js';
import type { FlowInspector } from '../nat/tcp-pipe.js';
import { askMark, type Egress, type InFlight } from './egress.js';
import { FlowWatch } from './flow-watch.js';
import { forbiddenResponse, TLS_ACCESS_DENIED_ALERT } from './refusals.js';

/** What a held connection needs from the NAT's TCP flow table. */
export interface HeldConnectionHost {
  /** Connects to the first of `addresses` that accepts on `port`. */
  connectFirst(addresses: readonly string[], port: number): Promise<Socket>;
  /** Joins the accepted guest connection to the connected host socket; returns the handlers that take over. `admit`: asked again on a reload with drop; `inspector`: the watch the piped flow stays under. */
  adopt(syn: SynInfo, tcp: TcpSocket, socket: Socket, admit: DialAdmission, inspector?: FlowInspector, tag?: FlowTag): TcpHandlers;
}

/** asking: named, refused by the rules, waiting on ask mode's pending decision (guest paused). intercepted: handed to the credential injector (src/inject/). */
type State = 'peeking' | 'asking' | 'dialing' | 'piped' | 'intercepted' | 'refusing' | 'closed';

export class HeldConnection {
  readonly handlers: TcpHandlers;
  private state: State = 'peeking';
  private tcp: TcpSocket | undefined;
  private readonly peeker = new NamePeeker();
  private readonly held: Uint8Array[] = [];
  private heldBytes = 0;
  private guestEnded = false;
  private pipe: TcpHandlers | undefined;
  private timer: NodeJS.Timeout | undefined;
  private readonly dst: string;
  /** Whether the ClientHello carried ECH (TLS flows), for the decision records. */
  private ech: boolean | undefined;
  /** The protocol whose name the peek read: the piped flow is watched in it (not set for unreadable first bytes). */
  private named: 'tls' | 'http' | null = null;
  /** The ALPN protocols the ClientHello offered (an intercepted connection offers them upstream). */
  private alpn: string[] = [];
  /** The policy allowed the peeked name (not audit mode letting a refusal through): only then may a secret be injected. */
  private allowed = false;
  /** Tears down an intercepted connection (src/inject/). */
  private stopIntercept: (() => void) | undefined;
  /**
   * What was decided: set when the policy allowed the peeked name, or when
   * audit mode let a refused connection through. Re-decided if the
   * allowlist changes before the dial completes, and by a reload with drop
   * once piped.
   */
  private inFlight: InFlight | undefined;
  /** Aborted when the guest goes away while asking: its wait on the pending decision ends. */
  private asking: AbortController | undefined;

  constructor(
    private readonly syn: SynInfo,
    /** Where the guest's own destination leads on the host (used only in audit mode). */
    private readonly guestTarget: string,
    private readonly egress: Egress,
    private readonly host: HeldConnectionHost,
    private readonly log: Logger,
    private readonly onDone: (held: HeldConnection) => void,
  ) {
    this.dst = formatIp(syn.dst);
    // Route every callback to the pipe once it exists: the stack keeps the handlers it was given at accept().
    this.handlers = {
      onData: (d) => (this.pipe ? this.pipe.onData(d) : this.guestData(d)),
      onEnd: () => (this.pipe ? this.pipe.onEnd() : this.guestEnd()),
      onDrain: () => this.pipe?.onDrain(),
      onClose: (r) => (this.pipe ? this.pipe.onClose(r) : this.guestClosed(r)),
    };
  }

  /** Bytes this connection holds in memory now (for /stats). */
  get bufferedBytes(): number {
    return this.heldBytes;
  }

  /** Call once with the socket accept() returned. */
  start(tcp: TcpSocket): void {
    this.tcp = tcp;
    if (this.state !== 'peeking') return; // closed during accept
    this.timer = setTimeout(() => this.peekTimedOut(), this.egress.options.peekTimeoutMs);
  }

  /**
   * An allowlist reload with ?drop=1: is this connection still allowed by the
   * current rules? Peeking: only if some rule still covers its port (its name
   * decides later, under the new rules anyway). Dialing: the decision is
   * re-made (Egress.recheck). A refused one is reset now and recorded;
   * returns false for it. Piped connections are the NAT's to check.
   */
  recheck(): boolean {
    if (this.state === 'peeking') {
      const d = this.egress.decide({ proto: 'tcp', dst: this.dst, port: this.syn.dstPort });
      if (d.verdict !== 'block' || (this.egress.audit && d.reason !== 'link-local')) return true;
      this.egress.record(d, 'tcp', this.dst, this.syn.dstPort, null, 'allowlist changed while held for its name');
    } else if (this.state === 'dialing' && this.inFlight !== undefined) {
      if (this.egress.recheck(this.inFlight, 'while dialing').keep) return true;
    } else if (this.state === 'intercepted' && this.inFlight !== undefined) {
      if (this.egress.recheck(this.inFlight, 'while open').keep) return true;
    } else return true;
    this.tcp?.abort();
    this.finish();
    return false;
  }

  /** Ends it now (guest gone, Moat closing): reset to the guest, nothing dialed stays open. */
  destroy(): void {
    if (this.state === 'closed') return;
    this.tcp?.abort();
    this.finish();
  }

  // --- peeking ---------------------------------------------------------

  private guestData(data: Uint8Array): void {
    if (this.state !== 'peeking') return; // refusing: whatever else the guest sends is dropped
    if (this.heldBytes + data.length > this.egress.options.maxPeekBytes) {
      this.refuse(this.egress.recordBlock('peek-too-large', 'tcp', this.dst, this.syn.dstPort, null, null, `${this.heldBytes + data.length} bytes without a name`), 'reset');
      return;
    }
    // The view is only valid during the call.
    this.held.push(data.slice());
    this.heldBytes += data.length;
    this.examine(this.peeker.push(data));
  }

  private guestEnd(): void {
    this.guestEnded = true;
    // A request complete up to FIN still gets its answer; a FIN before any name can never name one.
    if (this.state === 'peeking') {
      const id = this.egress.recordBlock('no-name', 'tcp', this.dst, this.syn.dstPort, null, null, 'the guest closed before naming a host');
      this.refuse(id, 'reset');
    }
  }

  private examine(r: PeekResult): void {
    switch (r.kind) {
      case 'need-more':
        return;
      case 'unknown-protocol': {
        const id = this.egress.recordBlock('not-tls-or-http', 'tcp', this.dst, this.syn.dstPort, null, null);
        this.refuse(id, 'reset');
        return;
      }
      case 'malformed': {
        // Answer in the protocol the client started speaking: a broken request head still gets a readable 403.
        const protocol = this.peeker.protocol;
        const id = this.egress.recordBlock('malformed', 'tcp', this.dst, this.syn.dstPort, null, protocol === 'tls' ? 'sni' : protocol === 'http' ? 'host' : null, r.reason);
        this.refuse(id, protocol ?? 'reset', null, `malformed (${r.reason})`);
        return;
      }
      case 'name': {
        const via = r.protocol === 'tls' ? 'sni' : 'host';
        this.named = r.protocol;
        this.alpn = r.alpn;
        if (r.protocol === 'tls') this.ech = r.ech;
        if (r.ech && this.egress.options.refuseEch === true) {
          const id = this.egress.recordBlock('ech', 'tcp', this.dst, this.syn.dstPort, r.name === null ? null : canonicalOr(r.name), via, 'the ClientHello carries encrypted_client_hello', true);
          this.refuse(id, 'tls', r.name, 'ech');
          return;
        }
        const decision = this.egress.decide({ proto: 'tcp', dst: this.dst, port: this.syn.dstPort, peeked: { via, name: r.name } });
        this.decided(decision, via, r.protocol, r.name);
        return;
      }
    }
  }

  private decided(d: Decision, via: 'sni' | 'host', protocol: 'tls' | 'http', name: string | null): void {
    if (this.egress.askable(d)) {
      void this.ask(d.name, via, protocol, name);
      return;
    }
    if (d.verdict === 'allow') {
      this.allowed = true;
      this.egress.record(d, 'tcp', this.dst, this.syn.dstPort, via, undefined, this.ech);
      void this.dial(d, protocol, via);
      return;
    }
    // A second 'peek' cannot happen once a name was read; treat it as a refusal rather than hang.
    // The record names what the client sent even when the policy refused before looking at names.
    const id = this.egress.record(
      d.verdict === 'block' ? (d.name === null && name !== null ? { ...d, name: canonicalOr(name) } : d) : { verdict: 'block', reason: 'no-name', rule: null, name },
      'tcp',
      this.dst,
      this.syn.dstPort,
      via,
      undefined,
      this.ech,
    );
    this.refuse(id, protocol, name, d.verdict === 'block' ? d.reason : 'no-name');
  }

  /**
   * Ask mode: the name is unlisted; hold the connection (guest paused, no
   * peek timeout) until a verdict. allow-name re-decides under the rules
   * that now name it; allow-once dials this connection only; a refusal
   * answers as any refusal does. One decision record, marked asked.
   */
  private async ask(canonical: string, via: 'sni' | 'host', protocol: 'tls' | 'http', name: string | null): Promise<void> {
    this.state = 'asking';
    this.clearTimer();
    this.tcp?.pause();
    const port = this.syn.dstPort;
    this.asking = new AbortController();
    const o = await this.egress.ask!.ask({ name: canonical, proto: 'tcp', port, dst: this.dst, via }, this.asking.signal);
    if (this.state !== 'asking') return;
    const mark = askMark(o);
    if (!o.allow) {
      const id = this.egress.recordBlock(o.reason, 'tcp', this.dst, port, canonical, via, o.detail, this.ech, mark);
      this.refuse(id, protocol, name, o.reason);
      return;
    }
    const d = o.verdict === 'allow-once' ? this.egress.askedOnce(canonical) : this.egress.decide({ proto: 'tcp', dst: this.dst, port, peeked: { via, name } });
    if (d.verdict === 'allow') {
      this.egress.record(d, 'tcp', this.dst, port, via, undefined, this.ech, mark);
      void this.dial(d, protocol, via);
      return;
    }
    // allow-name, but a reload since took the name away again: refused under the rules as they are.
    const refusal = d.verdict === 'block' ? d : ({ verdict: 'block', reason: 'no-name', rule: null, name: canonical } as const);
    const id = this.egress.record(refusal, 'tcp', this.dst, port, via, undefined, this.ech, mark);
    this.refuse(id, protocol, name, refusal.reason);
  }

  // --- dialing ---------------------------------------------------------

  private async dial(d: Extract<Decision, { verdict: 'allow' }>, protocol: 'tls' | 'http', via: 'sni' | 'host'): Promise<void> {
    const inFlight: InFlight = { version: this.egress.version, target: { kind: 'flow', flow: { proto: 'tcp', dst: this.dst, port: this.syn.dstPort, peeked: { via, name: d.name } } }, dial: d.dial, via };
    this.inFlight = inFlight;
    this.startDialing();
    const port = this.syn.dstPort;
    let addresses: readonly string[];
    try {
      if (d.dial.kind === 'address') addresses = [d.dial.address];
      else {
        const resolved = await this.egress.targets.addressesFor(d.dial.name);
        const { admitted, refused } = this.egress.policy.admitResolved(resolved, port);
        if (admitted.length === 0) {
          if (this.state !== 'dialing') return;
          const detail = refused.map((x) => `${x.address} (${x.range})`).join(', ') || 'no usable address';
          const id = this.egress.recordBlock('rebinding', 'tcp', this.dst, port, d.dial.name, protocol === 'tls' ? 'sni' : 'host', detail);
          this.refuse(id, protocol, d.dial.name, 'rebinding');
          return;
        }
        // Whichever family the name resolved to on the host; the guest's own family first (issue 19).
        addresses = dialOrder(admitted, familyOf(this.dst));
      }
    } catch (err) {
      if (this.state !== 'dialing') return;
      if (err instanceof LiveLookupRefusedError && d.dial.kind === 'name') {
        // The name would be a new live lookup the budget cannot pay for: a refusal, recorded, not a dial.
        const id = this.egress.recordBlock(err.reason, 'tcp', this.dst, port, d.dial.name, via, err.message);
        this.refuse(id, protocol, d.dial.name, err.reason);
        return;
      }
      this.log.info('tcp flow failed', { dst: `${this.dst}:${port}`, name: d.name, reason: 'resolve-failed', error: (err as Error).message });
      this.tcp?.abort();
      this.finish();
      return;
    }
    // The lookup took time: if the rules changed meanwhile, decide again before dialing anything.
    if (this.state !== 'dialing') return;
    if (!this.egress.recheck(inFlight, 'while resolving').keep) {
      this.tcp?.abort();
      this.finish();
      return;
    }
    await this.pipeTo(addresses, d.name, { rule: d.rule, name: d.name });
  }

  private startDialing(): void {
    this.state = 'dialing';
    this.clearTimer();
    this.tcp?.pause(); // further bytes wait in the stack's receive buffer; its window closes
  }

  /** Audit mode: the refused connection goes through, to its name if it gave one that resolves, else where the guest sent it. */
  private async auditThrough(name: string | null, via: 'sni' | 'host' | null): Promise<void> {
    this.startDialing();
    const canonical = name === null ? null : canonicalHostname(name);
    let addresses: readonly string[] = [this.guestTarget];
    if (typeof canonical === 'string') {
      try {
        const resolved = this.egress.auditAddresses(await this.egress.targets.addressesFor(canonical), this.syn.dstPort);
        if (resolved.length > 0) addresses = resolved;
      } catch {
        // Not resolvable: the guest's own destination it is.
      }
    }
    if (this.state !== 'dialing') return;
    // Decided (as would-block) under the current rules: a reload with drop re-decides it like any other flow.
    const named = typeof canonical === 'string' && via !== null;
    this.inFlight = {
      version: this.egress.version,
      target: { kind: 'flow', flow: { proto: 'tcp', dst: this.dst, port: this.syn.dstPort, ...(named ? { peeked: { via, name: canonical } } : {}) } },
      dial: named ? { kind: 'name', name: canonical } : { kind: 'address', address: this.dst },
      via,
    };
    await this.pipeTo(addresses, named ? canonical : null);
  }

  /** `rule`: the rule that allowed the flow (its bytes are charged to its budget); null for audit pass-through. */
  private async pipeTo(addresses: readonly string[], name: string | null, tag?: FlowTag): Promise<void> {
    const port = this.syn.dstPort;
    let socket: Socket;
    try {
      socket = await this.host.connectFirst(addresses, port);
    } catch (err) {
      if (this.state !== 'dialing') return;
      this.log.info('tcp flow failed', { dst: `${this.dst}:${port}`, name, addresses, reason: 'dial-failed', error: (err as Error).message });
      this.tcp?.abort();
      this.finish();
      return;
    }
    if (this.state !== 'dialing' || this.tcp === undefined) {
      socket.destroy();
      return;
    }
    // Decided before it connected: the rules may have changed meanwhile (issue 14 finding 4).
    if (this.inFlight !== undefined && !this.egress.recheck(this.inFlight, 'while dialing', socket.remoteAddress).keep) {
      socket.destroy();
      this.tcp.abort();
      this.finish();
      return;
    }
    // A host with an --inject rule: Moat terminates the guest's TLS and injects (src/inject/) instead of piping.
    const injector = this.egress.options.injector;
    if (injector !== undefined && this.allowed && this.named === 'tls' && name !== null && injector.rulesFor(name, port).length > 0) {
      void this.intercept(socket, name, addresses, injector);
      return;
    }
    // The pipe takes over; the bytes that named the destination go first, through its watch like all later ones.
    const watch = this.named === null ? undefined : new FlowWatch(this.named, this.egress, { dst: this.dst, port });
    this.state = 'piped';
    const inFlight = this.inFlight;
    const connected = socket.remoteAddress;
    const pipe = this.host.adopt(this.syn, this.tcp, socket, (why) => inFlight === undefined || this.egress.recheck(inFlight, why, connected).keep, watch, tag ?? { rule: null, name });
    this.pipe = pipe;
    this.onDone(this);
    const held = this.held.splice(0);
    this.heldBytes = 0;
    for (const chunk of held) pipe.onData(chunk);
    if (this.guestEnded) pipe.onEnd();
    // A watch that holds the guest (an upgrade waiting for the server) or refused it resumes it itself, or never.
    if (watch === undefined || (!watch.holding && watch.refusal === null)) this.tcp.resume();
  }

  // --- intercepting (credential injection) ------------------------------

  /**
   * The upstream TLS first (verified; a failure refuses the guest with a TLS
   * alert and a record, reason upstream-tls), then the guest's bytes (the
   * held ClientHello first) go to the interceptor through a GuestStream.
   * The connection stays in the held table (it counts against maxHeld and is
   * closed with the NAT) until it ends.
   */
  private async intercept(raw: Socket, name: string, addresses: readonly string[], injector: Injector): Promise<void> {
    const port = this.syn.dstPort;
    let up: TLSSocket;
    try {
      up = await injector.connectUpstream(raw, name, this.alpn);
    } catch (err) {
      if (this.state !== 'dialing') return;
      const id = this.egress.recordBlock('upstream-tls', 'tcp', this.dst, port, name, 'sni', (err as Error).message.slice(0, 300), this.ech);
      // Never intercepted again: audit mode lets the refused connection through end to end, without the value.
      this.allowed = false;
      this.refuse(id, 'tls', name, 'upstream-tls');
      return;
    }
    if (this.state !== 'dialing' || this.tcp === undefined) {
      up.destroy();
      return;
    }
    this.state = 'intercepted';
    const guest = new GuestStream(this.tcp);
    this.pipe = guest.handlers;
    const held = this.held.splice(0);
    this.heldBytes = 0;
    for (const chunk of held) guest.handlers.onData(chunk);
    if (this.guestEnded) guest.handlers.onEnd();
    this.stopIntercept = injector.serve(
      guest,
      up,
      {
        host: name,
        port,
        // A new upstream connection (the server closed the kept-alive one) is decided again under the current rules.
        dial: async () => {
          if (this.inFlight !== undefined && !this.egress.recheck(this.inFlight, 'while open').keep) throw new Error('the allowlist no longer allows this host');
          return this.host.connectFirst(addresses, port);
        },
      },
      injectionReporter(this.egress, this.dst, port, name, 'sni', () => this.finish()),
    );
  }

  // --- refusing --------------------------------------------------------

  /**
   * Tells the client why, in its own protocol where we can speak it, then
   * closes. `reset` (or an unknown protocol) sends RST only.
   */
  private refuse(id: string, how: 'tls' | 'http' | 'reset', host: string | null = null, reason = ''): void {
    if (this.egress.audit && this.state !== 'closed' && this.tcp !== undefined) {
      void this.auditThrough(host, how === 'tls' ? 'sni' : how === 'http' ? 'host' : null);
      return;
    }
    this.clearTimer();
    this.held.length = 0;
    this.heldBytes = 0;
    const tcp = this.tcp;
    if (tcp === undefined || this.state === 'closed') return;
    if (how === 'reset') {
      tcp.abort();
      this.finish();
      return;
    }
    this.state = 'refusing';
    tcp.write(how === 'tls' ? TLS_ACCESS_DENIED_ALERT : forbiddenResponse({ host, reason, id, rules: this.egress.options.refusalDetails ? this.egress.policy.ruleTexts : null }));
    tcp.end();
    // A client that never closes its side must not hold the slot.
    this.timer = setTimeout(() => this.destroy(), this.egress.options.refusalLingerMs);
  }

  private peekTimedOut(): void {
    this.timer = undefined;
    if (this.state !== 'peeking') return;
    const id = this.egress.recordBlock('peek-timeout', 'tcp', this.dst, this.syn.dstPort, null, null, `no name within ${this.egress.options.peekTimeoutMs} ms (${this.heldBytes} bytes read)`);
    this.refuse(id, 'reset');
  }

  private guestClosed(_reason: TcpCloseReason): void {
    this.finish();
  }

  private clearTimer(): void {
    if (this.timer !== undefined) clearTimeout(this.timer);
    this.timer = undefined;
  }

  private finish(): void {
    if (this.state === 'closed') return;
    const wasPiped = this.state === 'piped';
    this.state = 'closed';
    this.asking?.abort();
    this.stopIntercept?.();
    this.clearTimer();
    this.held.length = 0;
    this.heldBytes = 0;
    if (!wasPiped) this.onDone(this);
  }
}

/** The canonical form of a name a client sent, or the name as sent when it is not a hostname. */
function canonicalOr(name: string): string {
  const c = canonicalHostname(name);
  return typeof c === 'string' ? c : name;
}
