/**
 * A proxy tunnel after the client was told "go ahead" (HTTP 200 to CONNECT,
 * SOCKS5 reply 0x00): peek, then dial, then pipe.
 *
 *   peeking  the client's first bytes go to a NamePeeker (bounded by
 *            maxPeekBytes, timed by peekTimeoutMs); nothing is dialed yet,
 *            so a tunnel whose SNI/Host is not the requested host never
 *            reaches any upstream (no domain fronting through an allowed
 *            CONNECT host).
 *   dialing  the client is paused; connectFirst() tries Moat's admitted
 *            addresses in order; the held bytes go first.
 *   piped    stream.pipe() both ways: each side's buffer is bounded by the
 *            socket high-water marks (backpressure pauses the reader), not
 *            by a queue of ours.
 *
 * A tunnel whose first bytes were TLS or HTTP stays watched once piped
 * (FlowWatch, as in `moat serve`): every later HTTP request must name the
 * CONNECT host too (else the server finishes what came before, then the
 * client gets a 403 and the close), and a second ClientHello the same SNI
 * and ECH presence (else both sides are reset). Watched tunnels are piped by
 * hand (write/drain) instead of stream.pipe(), so every client chunk passes
 * the watch first.
 *
 * Rate limits (the client address's) and the byte budget of the rule that
 * admitted the tunnel sit between the sockets as MeteredStreams
 * (src/traffic/metered-stream.ts): over the rate a side is simply not read;
 * a spent budget resets both sides, recorded (reason budget).
 * A TLS tunnel to a host with an --inject rule is handed to the interceptor
 * (src/inject/) instead of being piped.
 *
 * Refusals speak the client's protocol where we can: a TLS access_denied
 * alert, an HTTP 403 (forbiddenResponse, as `moat serve`), else a close.
 */
import type { Socket } from 'node:net';
import type { TLSSocket } from 'node:tls';
import type { Injector } from '../inject/interceptor.js';
import { injectionReporter } from '../inject/records.js';
import { canonicalHostname } from '../../dns/rules.js';
import { NamePeeker, type PeekResult } from '../../sni/peek.js';
import type { Egress, InFlight } from '../egress/egress.js';
import { FlowWatch } from '../egress/flow-watch.js';
import { forbiddenResponse, TLS_ACCESS_DENIED_ALERT } from '../egress/refusals.js';
import type { InspectVerdict } from '../nat/tcp-pipe.js';
import type { Logger } from '../log.js';
import { admittedInFlight, type PeekMode } from './targets.js';
import { MeteredStream } from '../traffic/metered-stream.js';
import { BUDGET_LINGER_MS } from '../nat/tcp-pipe.js';
import type { RateLimiter } from '../traffic/rate-limiter.js';
import type { FlowMeter } from '../traffic/byte-budgets.js';

/** How the proxy dials (TcpFlowTable.connectFirst in production). */
export interface Dialer {
  connectFirst(addresses: readonly string[], port: number): Promise<Socket>;
}

export interface TunnelPlan {
  /** Canonical name the tunnel's SNI/Host must equal, or null (address target). */
  name: string | null;
  addresses: readonly string[];
  port: number;
  peek: PeekMode;
  /** "name:port" for records. */
  dst: string;
  /** Egress.version the admission was decided under (targets.ts); undefined: never re-checked. */
  version?: number;
  /** The rule that admitted it: its byte budget is charged. */
  rule?: string | null;
}

export interface TunnelContext {
  egress: Egress;
  dialer: Dialer;
  log: Logger;
  /**
   * On a port a rule names (peek 'optional'), how long to wait for the
   * client's first bytes before dialing anyway: server-first protocols
   * (SMTP, MySQL...) never speak first.
   */
  serverFirstGraceMs: number;
  /** The client address's rate limits (--rate-egress/--rate-ingress), if any. */
  rate?: { egress: RateLimiter | undefined; ingress: RateLimiter | undefined } | undefined;
}

type State = 'peeking' | 'dialing' | 'piped' | 'refusing' | 'answering' | 'closed';

export class Tunnel {
  private state: State = 'peeking';
  private readonly peeker = new NamePeeker();
  private readonly held: Buffer[] = [];
  /** What admission decided, re-decided by Egress.recheck when the rules change (undefined: never). */
  private readonly inFlight: InFlight | undefined;
  private heldBytes = 0;
  private timer: NodeJS.Timeout | undefined;
  private upstream: Socket | undefined;
  private clientEnded = false;
  /** plan.peek, until an 'optional' peek sees TLS/HTTP begin and becomes 'required'. */
  private mode: PeekMode;
  /** Whether the ClientHello carried ECH (TLS tunnels), for the decision records. */
  private ech: boolean | undefined;
  /** The protocol whose name the peek read and accepted: the piped tunnel is watched in it. */
  private named: 'tls' | 'http' | null = null;
  /** The ALPN protocols the ClientHello offered (an intercepted tunnel offers them upstream). */
  private alpn: string[] = [];
  private stopIntercept: (() => void) | undefined;
  /** The upstream failed verification: in audit mode the tunnel goes through end to end, never intercepted. */
  private injectRefused = false;
  bytesUp = 0;
  bytesDown = 0;
  /** The budget of the admitting rule, if it has one. */
  private meter: FlowMeter | undefined;

  constructor(
    private readonly client: Socket,
    readonly plan: TunnelPlan,
    private readonly ctx: TunnelContext,
    private readonly onDone: (t: Tunnel) => void,
  ) {
    this.mode = plan.peek;
    this.inFlight = admittedInFlight(plan);
  }

  get phase(): State {
    return this.state;
  }

  /** Bytes held for the peek (bounded by maxPeekBytes). */
  get bufferedBytes(): number {
    return this.heldBytes;
  }

  /** `head`: bytes the client sent after its request, before we answered. */
  start(head?: Uint8Array): void {
    this.client.on('error', () => this.destroy());
    this.client.on('close', () => this.destroy());
    if (this.mode === 'none') {
      if (head !== undefined && head.length > 0) this.hold(Buffer.from(head));
      void this.dial();
      return;
    }
    const wait = this.mode === 'required' ? this.ctx.egress.options.peekTimeoutMs : Math.min(this.ctx.serverFirstGraceMs, this.ctx.egress.options.peekTimeoutMs);
    this.timer = setTimeout(() => this.timedOut(), wait);
    this.client.on('data', this.onPeekData);
    this.client.on('end', this.onPeekEnd);
    if (head !== undefined && head.length > 0) this.onPeekData(Buffer.from(head));
  }

  /** Closes both sides now (client gone, reload with drop, proxy closing). */
  destroy(): void {
    if (this.state === 'closed') return;
    this.state = 'closed';
    this.stopIntercept?.();
    this.clearTimer();
    this.held.length = 0;
    this.heldBytes = 0;
    this.client.destroy();
    this.upstream?.destroy();
    this.meter?.close();
    this.onDone(this);
  }

  /** The admitting rule's budget ran out: recorded, both sides reset. */
  private budgetCut(): void {
    if (this.state === 'closed') return;
    const rule = this.meter?.rule ?? this.plan.rule ?? '';
    this.ctx.egress.recordBudgetCut('tcp', this.dstHost, this.plan.port, rule, this.plan.name, 'target');
    this.client.resetAndDestroy();
    // The upstream gets what its socket already holds (charged), then FIN; reset if it has not closed within the linger.
    const up = this.upstream;
    this.upstream = undefined;
    if (up !== undefined && !up.destroyed) {
      up.end();
      up.resume();
      setTimeout(() => up.destroy(), BUDGET_LINGER_MS).unref();
    }
    this.destroy();
  }

  /**
   * Streams between the sockets for the rate limits and the budget, or
   * undefined (the sockets are piped directly) when neither applies.
   */
  private meters(): { up: MeteredStream; down: MeteredStream } | undefined {
    this.meter = this.ctx.egress.budgets?.open(this.plan.rule ?? null, () => this.budgetCut());
    const rate = this.ctx.rate;
    if (this.meter === undefined && rate?.egress === undefined && rate?.ingress === undefined) return undefined;
    const onCut = (): void => this.budgetCut();
    return {
      up: new MeteredStream({ limiter: rate?.egress, meter: this.meter, direction: 'egress', onCut }),
      down: new MeteredStream({ limiter: rate?.ingress, meter: this.meter, direction: 'ingress', onCut }),
    };
  }

  // --- peeking ---------------------------------------------------------

  private readonly onPeekData = (chunk: Buffer): void => {
    if (this.state !== 'peeking') return;
    if (this.heldBytes + chunk.length > this.ctx.egress.options.maxPeekBytes) {
      this.refuse(this.block('peek-too-large', null, null, `${this.heldBytes + chunk.length} bytes without a name`), 'close');
      return;
    }
    this.hold(chunk);
    this.examine(this.peeker.push(chunk));
  };

  private readonly onPeekEnd = (): void => {
    this.clientEnded = true;
    if (this.state === 'peeking') this.refuse(this.block('no-name', null, null, 'the client closed before naming a host'), 'close');
  };

  private hold(chunk: Buffer): void {
    this.held.push(chunk);
    this.heldBytes += chunk.length;
  }

  private examine(r: PeekResult): void {
    switch (r.kind) {
      case 'need-more':
        if (this.mode === 'optional' && this.peeker.protocol !== null) this.extendToPeekTimeout();
        return;
      case 'unknown-protocol':
        if (this.mode === 'optional') {
          void this.dial();
          return;
        }
        this.refuse(this.block('not-tls-or-http', null, null), 'close');
        return;
      case 'malformed': {
        const protocol = this.peeker.protocol;
        this.refuse(this.block('malformed', null, protocol === 'tls' ? 'sni' : 'host', r.reason), protocol ?? 'close', null, `malformed (${r.reason})`);
        return;
      }
      case 'name': {
        const via = r.protocol === 'tls' ? 'sni' : 'host';
        if (r.protocol === 'tls') this.ech = r.ech;
        if (r.ech && this.ctx.egress.options.refuseEch === true) {
          this.refuse(this.block('ech', r.name?.slice(0, 256) ?? null, via, 'the ClientHello carries encrypted_client_hello'), 'tls', null, 'ech');
          return;
        }
        if (r.name === null) {
          this.refuse(this.block('no-name', null, via, `no ${via === 'sni' ? 'SNI' : 'Host'} in the tunnel`), r.protocol, null, 'no-name');
          return;
        }
        const canonical = canonicalHostname(r.name);
        const expected = this.plan.name;
        if (typeof canonical !== 'string' || expected === null || canonical !== expected) {
          const reason = via === 'sni' ? 'sni-mismatch' : 'host-mismatch';
          const shown = r.name.slice(0, 256);
          this.refuse(this.block(reason, shown, via, `the tunnel was requested for ${this.plan.dst}`), r.protocol, shown, reason);
          return;
        }
        this.named = r.protocol;
        this.alpn = r.alpn;
        void this.dial();
        return;
      }
    }
  }

  /** An 'optional' peek that saw the start of TLS/HTTP waits for the whole name, like a required one. */
  private extendToPeekTimeout(): void {
    if (this.timer === undefined || this.mode !== 'optional') return;
    this.clearTimer();
    this.timer = setTimeout(() => this.timedOut(true), this.ctx.egress.options.peekTimeoutMs);
    this.mode = 'required';
  }

  private timedOut(force = false): void {
    this.timer = undefined;
    if (this.state !== 'peeking') return;
    if (this.mode === 'optional' && !force && this.heldBytes === 0) {
      void this.dial(); // the server speaks first
      return;
    }
    this.refuse(
      this.block('peek-timeout', null, null, `no name within ${this.ctx.egress.options.peekTimeoutMs} ms (${this.heldBytes} bytes read)`),
      'close',
    );
  }

  private block(reason: string, name: string | null, via: string | null, detail?: string): string {
    return this.ctx.egress.recordBlock(reason, 'tcp', this.dstHost, this.plan.port, name ?? this.plan.name, via, detail, this.ech);
  }

  /** plan.dst without its port, as the records show destinations. */
  private get dstHost(): string {
    return this.plan.dst.slice(0, this.plan.dst.lastIndexOf(':'));
  }

  // --- dialing and piping ----------------------------------------------

  private async dial(): Promise<void> {
    if (this.state !== 'peeking') return;
    this.state = 'dialing';
    this.clearTimer();
    this.client.off('data', this.onPeekData);
    this.client.off('end', this.onPeekEnd);
    this.client.pause();
    // The peek took time: if the rules changed meanwhile, decide again before dialing anything.
    if (!this.stillAdmitted(undefined, 'while peeking')) {
      this.destroy();
      return;
    }
    let up: Socket;
    try {
      up = await this.ctx.dialer.connectFirst(this.plan.addresses, this.plan.port);
    } catch (err) {
      if (this.state !== 'dialing') return;
      this.ctx.log.info('proxy tunnel dial failed', { dst: this.plan.dst, addresses: this.plan.addresses, error: (err as Error).message });
      this.destroy();
      return;
    }
    if (this.state !== 'dialing') {
      up.destroy();
      return;
    }
    // Admitted before it connected: the allowlist may have changed meanwhile (issue 14 finding 4).
    if (!this.stillAdmitted(up.remoteAddress, 'while dialing')) {
      up.destroy();
      this.destroy();
      return;
    }
    this.upstream = up;
    this.state = 'piped';
    // A CONNECT to a host with an --inject rule: Moat terminates the client's TLS and injects (src/inject/).
    const injector = this.ctx.egress.options.injector;
    if (injector !== undefined && !this.injectRefused && this.named === 'tls' && this.plan.name !== null && injector.rulesFor(this.plan.name, this.plan.port).length > 0) {
      void this.intercept(up, this.plan.name, injector);
      return;
    }
    up.on('error', () => this.destroy());
    // While answering a refusal, the client side closes itself once the answer is out (or the linger timer fires).
    up.on('close', () => (this.state === 'answering' ? undefined : this.destroy()));
    const m = this.meters();
    // Only a tunnel whose first bytes named the host is watched: server-first and other protocols on a named port are not HTTP or TLS.
    if (this.named !== null) {
      this.pipeWatched(up, new FlowWatch(this.named, this.ctx.egress, { dst: this.dstHost, port: this.plan.port }), m);
      return;
    }
    // With meters: client -> up meter -> upstream, upstream -> down meter -> client.
    const toUp: NodeJS.WritableStream = m?.up ?? up;
    if (m !== undefined) {
      m.up.pipe(up);
      m.up.on('error', () => this.destroy());
      m.down.on('error', () => this.destroy());
    }
    for (const chunk of this.held) {
      this.bytesUp += chunk.length;
      toUp.write(chunk);
    }
    this.held.length = 0;
    this.heldBytes = 0;
    this.client.on('data', (c: Buffer) => (this.bytesUp += c.length));
    up.on('data', (c: Buffer) => (this.bytesDown += c.length));
    // pipe() ends the destination when the source ends: half-close passes through (both sockets allowHalfOpen).
    this.client.pipe(toUp);
    if (m !== undefined) up.pipe(m.down).pipe(this.client);
    else up.pipe(this.client);
    if (this.clientEnded) toUp.end();
    this.client.resume();
  }

  /** As HeldConnection.intercept: verified upstream TLS first (else a TLS alert, reason upstream-tls), then the held ClientHello and the rest of the client's bytes to the interceptor. */
  private async intercept(raw: Socket, name: string, injector: Injector): Promise<void> {
    let up: TLSSocket;
    try {
      up = await injector.connectUpstream(raw, name, this.alpn);
    } catch (err) {
      if (this.state !== 'piped') return;
      const id = this.block('upstream-tls', name, 'sni', (err as Error).message.slice(0, 300));
      this.injectRefused = true;
      this.upstream = undefined;
      this.state = 'peeking'; // refuse() answers only a tunnel not yet piped
      this.refuse(id, 'tls', name, 'upstream-tls');
      return;
    }
    if (this.state !== 'piped') {
      up.destroy();
      return;
    }
    this.upstream = up;
    const held = this.held.splice(0);
    this.heldBytes = 0;
    if (held.length > 0) this.client.unshift(Buffer.concat(held));
    this.stopIntercept = injector.serve(
      this.client,
      up,
      {
        host: name,
        port: this.plan.port,
        // A new upstream connection (the server closed the kept-alive one) is admitted again under the current rules.
        dial: async () => {
          if (!this.stillAdmitted(undefined, 'while open')) throw new Error('the allowlist no longer allows this host');
          return this.ctx.dialer.connectFirst(this.plan.addresses, this.plan.port);
        },
      },
      injectionReporter(this.ctx.egress, this.dstHost, this.plan.port, name, 'sni', () => this.destroy()),
    );
  }

  /** Client -> upstream through the watch (by hand, with backpressure); upstream -> client piped. */
  private pipeWatched(up: Socket, watch: FlowWatch, m: { up: MeteredStream; down: MeteredStream } | undefined): void {
    // With meters the client's bytes go through the up meter, and the upstream's answers through the down meter.
    const toUp: NodeJS.WritableStream & { destroyed: boolean; writableEnded: boolean } = m?.up ?? up;
    const fromUp: NodeJS.ReadableStream = m?.down ?? up;
    if (m !== undefined) {
      m.up.pipe(up);
      up.pipe(m.down);
      m.up.on('error', () => this.destroy());
      m.down.on('error', () => this.destroy());
    }
    let inspecting: FlowWatch | null = watch;
    let heldForWatch = false;
    let pausedForUpstream = false;
    let endPending = false;
    const forward = (b: Uint8Array): void => {
      if (up.destroyed || up.writableEnded || toUp.destroyed || toUp.writableEnded) return;
      this.bytesUp += b.length;
      // Views of the client's own chunks (never reused) or of the watch's released buffers.
      if (!toUp.write(b) && !pausedForUpstream) {
        pausedForUpstream = true;
        this.client.pause();
        toUp.once('drain', () => {
          pausedForUpstream = false;
          if (!heldForWatch && this.state === 'piped') this.client.resume();
        });
      }
    };
    const endUpstream = (): void => {
      if (heldForWatch) endPending = true;
      else if (!toUp.destroyed) toUp.end();
    };
    const apply = (v: InspectVerdict): void => {
      switch (v) {
        case 'pass':
          return;
        case 'hold':
          heldForWatch = true;
          this.client.pause();
          return;
        case 'release':
        case 'done':
          if (v === 'done') inspecting = null;
          if (heldForWatch) {
            heldForWatch = false;
            if (!pausedForUpstream) this.client.resume();
            if (endPending) toUp.end();
          }
          return;
        case 'reset':
          inspecting = null;
          this.client.resetAndDestroy();
          up.resetAndDestroy();
          this.destroy();
          return;
        case 'answer':
          inspecting = null;
          this.answerAfterUpstream(up, watch, fromUp);
          return;
      }
    };
    const fromClient = (c: Buffer): void => {
      if (this.state !== 'piped') return; // refused: the rest is dropped
      if (inspecting === null) forward(c);
      else apply(inspecting.guest(c, forward));
    };
    up.on('data', (c: Buffer) => {
      this.bytesDown += c.length;
      if (inspecting !== null && inspecting.watchingHost) apply(inspecting.host(c, forward));
    });
    // The upstream's answers go to the client; its end is passed on by hand (a refusal may have to follow it).
    fromUp.pipe(this.client, { end: false });
    fromUp.on('end', () => {
      if (this.state === 'answering') this.endClientWith(watch.answer);
      else if (this.state === 'piped') this.client.end();
    });
    const held = this.held.splice(0);
    this.heldBytes = 0;
    for (const chunk of held) fromClient(chunk);
    this.client.on('data', fromClient);
    this.client.on('end', endUpstream);
    if (this.clientEnded) endUpstream();
    if (this.state === 'piped' && !heldForWatch) this.client.resume();
  }

  /** A refused request on a watched HTTP tunnel: the upstream finishes what it was sent, then the 403 and the close. */
  private answerAfterUpstream(up: Socket, watch: FlowWatch, fromUp: NodeJS.ReadableStream): void {
    this.state = 'answering';
    this.client.pause();
    if (!up.destroyed) up.end();
    if ((fromUp as Socket).readableEnded) this.endClientWith(watch.answer);
    this.timer = setTimeout(() => this.destroy(), this.ctx.egress.options.refusalLingerMs);
  }

  private endClientWith(bytes: Uint8Array | null): void {
    if (bytes === null) this.client.end();
    else this.client.end(bytes);
  }

  private stillAdmitted(connected: string | undefined, why: string): boolean {
    return this.inFlight === undefined || this.ctx.egress.recheck(this.inFlight, why, connected).keep;
  }

  /**
   * An allowlist reload with ?drop=1: is this tunnel still allowed by the
   * current rules, whatever its phase? A refused one is closed now, with a
   * decision record (Egress.recheck); returns false for it.
   */
  recheck(): boolean {
    const why = this.state === 'peeking' ? 'while peeking' : this.state === 'dialing' ? 'while dialing' : this.state === 'piped' ? 'while open' : null;
    if (why === null || this.stillAdmitted(this.upstream?.remoteAddress, why)) return true;
    this.destroy();
    return false;
  }

  // --- refusing --------------------------------------------------------

  private refuse(id: string, how: 'tls' | 'http' | 'close', host: string | null = null, reason = ''): void {
    // Audit: the refusal is on record (would-block); the tunnel goes through to what was asked for.
    if (this.ctx.egress.audit && this.state === 'peeking') {
      void this.dial();
      return;
    }
    this.clearTimer();
    this.held.length = 0;
    this.heldBytes = 0;
    if (this.state === 'closed') return;
    this.client.off('data', this.onPeekData);
    if (how === 'close') {
      this.destroy();
      return;
    }
    this.state = 'refusing';
    const bytes = how === 'tls' ? TLS_ACCESS_DENIED_ALERT : forbiddenResponse({ host, reason, id, rules: this.ctx.egress.options.refusalDetails ? this.ctx.egress.policy.ruleTexts : null });
    this.client.end(bytes);
    this.client.resume(); // drain whatever else arrives; the linger timer bounds it
    this.timer = setTimeout(() => this.destroy(), this.ctx.egress.options.refusalLingerMs);
  }

  private clearTimer(): void {
    if (this.timer !== undefined) clearTimeout(this.timer);
    this.timer = undefined;
  }
}
