/**
 * Guest UDP flows to host sockets. A flow is the guest's four-tuple
 * (src, srcPort, dst, dstPort); each gets one node:dgram socket bound to an
 * ephemeral port and connected to the destination, so the kernel only hands
 * us datagrams from that destination. Replies go back to the guest from the
 * address it wrote to.
 *
 * Bounds: a flow closes after `idleTimeoutMs` without a datagram either way
 * (gvproxy uses 90 s); at most `maxFlows` flows exist. A new flow beyond it
 * closes the least recently used one if that one has been idle `evictIdleMs`
 * (a forgotten flow goes: better than refusing new flows until the idle
 * timeout when a guest leaks them), and is refused otherwise (the newest
 * work is refused, busy flows are never cut).
 * Datagrams that arrive while a flow's socket is still connecting wait in a
 * small bounded queue; beyond it they are dropped, as UDP allows.
 *
 * Rate limits and byte budgets (src/traffic/): a datagram cannot wait
 * without a queue that would add latency and need a bound anyway, so one
 * over the guest's rate is dropped (counted in /stats rate.*.droppedDatagrams);
 * UDP senders (QUIC's congestion control, iperf3 -u) treat that as loss and
 * slow down. A flow opened for a rule with a byte budget charges each
 * datagram whole; the datagram that does not fit is dropped and the flow
 * closed (its later datagrams open no new flow: the policy refuses the rule).
 */
import { createSocket, type Socket as UdpSocket } from 'node:dgram';
import { formatIp, type IpAddress } from '../../netstack/addr.js';
import type { FourTuple } from '../../netstack/api.js';
import type { Logger } from '../log.js';
import type { RateLimiter } from '../traffic/rate-limiter.js';
import type { ByteBudgets, FlowMeter } from '../traffic/byte-budgets.js';

export type SendToGuest = (from: IpAddress, fromPort: number, to: IpAddress, toPort: number, payload: Uint8Array) => void;

export interface UdpFlowTableOptions {
  idleTimeoutMs: number;
  maxFlows: number;
  pendingDatagrams: number;
  /**
   * At maxFlows, a new flow may close the least recently used one only if
   * that one has been idle this long; otherwise the new flow is refused.
   */
  evictIdleMs: number;
  /** A new flow refused at maxFlows (for the caller's rate-limited RefusalLog). */
  onLimit?: (fields: Record<string, unknown>) => void;
  /** The guest's rate limits: datagrams over them are dropped. */
  rate?: { egress?: RateLimiter | undefined; ingress?: RateLimiter | undefined };
  /** Byte budgets per rule: a flow opened for a rule is charged every datagram. */
  budgets?: ByteBudgets;
  /** A flow closed because its rule's budget ran out (the caller records it). */
  onBudgetSpent?: (tuple: FourTuple, rule: string) => void;
  /** A flow closed, with the payload bytes it carried each way and the rule it was opened for. */
  onClosed?: (tuple: FourTuple, rule: string | null, bytesUp: number, bytesDown: number) => void;
}

export interface UdpFlowStats {
  flows: number;
  opened: number;
  evicted: number;
  /** Datagrams that would have opened a flow beyond maxFlows (dropped). */
  refused: number;
  expired: number;
  datagramsToHost: number;
  datagramsToGuest: number;
  dropped: number;
}

interface UdpFlow {
  readonly key: string;
  readonly tuple: FourTuple;
  readonly socket: UdpSocket;
  /** When a datagram last went either way (performance.now()). */
  lastUsed: number;
  connected: boolean;
  pending: Buffer[];
  idleTimer: NodeJS.Timeout;
  closed: boolean;
  /** The budget of the rule that allowed it, if it has one. */
  meter: FlowMeter | undefined;
  readonly rule: string | null;
  bytesUp: number;
  bytesDown: number;
}

export function udpFlowKey(src: IpAddress, srcPort: number, dst: IpAddress, dstPort: number): string {
  if (typeof src === 'number') return `${src}:${srcPort}>${dst}:${dstPort}`;
  // An IPv6 address is a packed 8-code-unit string (netstack/addr.ts): its text form keeps the key readable and apart from IPv4's.
  return `${formatIp(src)}:${srcPort}>${formatIp(dst)}:${dstPort}`;
}

export class UdpFlowTable {
  /** Insertion order = recency order: a used flow is moved to the end. */
  private readonly flows = new Map<string, UdpFlow>();
  private readonly counters = { opened: 0, evicted: 0, refused: 0, expired: 0, datagramsToHost: 0, datagramsToGuest: 0, dropped: 0 };

  constructor(
    private readonly opts: UdpFlowTableOptions,
    private readonly sendToGuest: SendToGuest,
    private readonly log: Logger,
  ) {}

  get size(): number {
    return this.flows.size;
  }

  stats(): UdpFlowStats {
    return { flows: this.flows.size, ...this.counters };
  }

  /** Is there a flow for this four-tuple (its first datagram was already let through)? */
  has(tuple: FourTuple): boolean {
    return this.flows.has(udpFlowKey(tuple.src, tuple.srcPort, tuple.dst, tuple.dstPort));
  }

  /** Sends one guest datagram on the flow's own socket; never opens one (false, dropped, when there is none). */
  sendOnFlow(tuple: FourTuple, payload: Uint8Array): boolean {
    const flow = this.flows.get(udpFlowKey(tuple.src, tuple.srcPort, tuple.dst, tuple.dstPort));
    if (flow === undefined) return false;
    this.send(tuple, '', payload); // the address is only used to open a flow
    return true;
  }

  /** Sends one guest datagram to `hostAddress:dstPort`, opening the flow if needed (charged to `rule`'s budget, if it has one). */
  send(tuple: FourTuple, hostAddress: string, payload: Uint8Array, rule: string | null = null): void {
    const key = udpFlowKey(tuple.src, tuple.srcPort, tuple.dst, tuple.dstPort);
    let flow = this.flows.get(key);
    if (this.opts.rate?.egress !== undefined && !this.opts.rate.egress.admitDatagram(payload.length)) return;
    if (flow === undefined) {
      if (!this.makeRoom(tuple)) return;
      flow = this.open(key, tuple, hostAddress, rule);
    } else {
      this.flows.delete(key);
      this.flows.set(key, flow);
      flow.idleTimer.refresh();
      flow.lastUsed = performance.now();
    }
    if (flow.meter !== undefined && !this.charge(flow, payload.length, 'egress')) return;
    this.counters.datagramsToHost++;
    flow.bytesUp += payload.length;
    const copy = Buffer.from(payload); // the view dies with the callback
    if (!flow.connected) {
      if (flow.pending.length >= this.opts.pendingDatagrams) {
        this.counters.dropped++;
        return;
      }
      flow.pending.push(copy);
      return;
    }
    this.write(flow, copy);
  }

  /** Closes every flow `keep` says no to; returns how many. */
  closeWhere(keep: (tuple: FourTuple) => boolean): number {
    let closed = 0;
    for (const flow of [...this.flows.values()]) {
      if (keep(flow.tuple)) continue;
      this.close(flow, 'reset');
      closed++;
    }
    return closed;
  }

  /** Closes every flow (guest gone, or shutdown). */
  closeAll(): void {
    for (const flow of [...this.flows.values()]) this.close(flow, 'reset');
  }

  /**
   * At maxFlows: closes the least recently used flow if it has been idle
   * evictIdleMs (a guest that leaks flows recycles its forgotten ones), else
   * refuses the new flow: busy flows are never cut for a newcomer.
   */
  private makeRoom(tuple: FourTuple): boolean {
    while (this.flows.size >= this.opts.maxFlows) {
      const oldest = this.flows.values().next().value as UdpFlow;
      if (performance.now() - oldest.lastUsed < this.opts.evictIdleMs) {
        this.counters.refused++;
        if (this.opts.onLimit !== undefined) this.opts.onLimit({ ...describe(tuple), max: this.opts.maxFlows });
        else this.log.debug('udp flow refused', { ...describe(tuple), reason: 'too-many-flows' });
        return false;
      }
      this.counters.evicted++;
      this.close(oldest, 'evicted');
    }
    return true;
  }

  /**
   * Charges a datagram whole to the flow's budget; false: it does not fit
   * and is dropped. Once the budget is spent the flow is closed (after this
   * datagram, when it still fitted).
   */
  private charge(flow: UdpFlow, n: number, dir: 'egress' | 'ingress'): boolean {
    const m = flow.meter!;
    const fits = m.charge(n, dir) === n;
    if (!fits) this.counters.dropped++;
    if (m.ended) queueMicrotask(() => this.budgetSpent(flow));
    return fits;
  }

  private budgetSpent(flow: UdpFlow): void {
    if (flow.closed) return;
    const rule = flow.meter?.rule;
    this.close(flow, 'budget');
    if (rule !== undefined) this.opts.onBudgetSpent?.(flow.tuple, rule);
  }

  private open(key: string, tuple: FourTuple, hostAddress: string, rule: string | null = null): UdpFlow {
    // The host side's family is the destination's (an IPv6 guest may reach an IPv4-only host by name, and the reverse).
    const socket = createSocket(hostAddress.includes(':') ? 'udp6' : 'udp4');
    const flow: UdpFlow = {
      key,
      tuple,
      socket,
      lastUsed: performance.now(),
      connected: false,
      pending: [],
      idleTimer: setTimeout(() => {
        this.counters.expired++;
        this.close(flow, 'idle');
      }, this.opts.idleTimeoutMs),
      closed: false,
      meter: undefined,
      rule,
      bytesUp: 0,
      bytesDown: 0,
    };
    flow.meter = this.opts.budgets?.open(rule, () => this.budgetSpent(flow));
    flow.idleTimer.unref();
    this.flows.set(key, flow);
    this.counters.opened++;
    socket.on('message', (msg) => {
      if (flow.closed) return;
      flow.idleTimer.refresh();
      flow.lastUsed = performance.now();
      if (this.flows.get(key) === flow) {
        this.flows.delete(key);
        this.flows.set(key, flow);
      }
      if (this.opts.rate?.ingress !== undefined && !this.opts.rate.ingress.admitDatagram(msg.length)) return;
      if (flow.meter !== undefined && !this.charge(flow, msg.length, 'ingress')) return;
      this.counters.datagramsToGuest++;
      flow.bytesDown += msg.length;
      this.sendToGuest(tuple.dst, tuple.dstPort, tuple.src, tuple.srcPort, msg);
    });
    socket.on('error', (err) => {
      if (!flow.connected) {
        this.log.info('udp flow refused', { ...describe(tuple), reason: 'connect-failed', error: err.message });
        this.close(flow, 'connect-failed');
        return;
      }
      // ECONNREFUSED (ICMP port unreachable) and friends: UDP is lossy, the
      // guest's application sees a timeout as it would on a filtered path.
      this.log.debug('udp flow error', { ...describe(tuple), error: err.message });
    });
    socket.bind(0, () => {
      if (flow.closed) return;
      // connect() reports failure through 'error' (flow still unconnected there).
      socket.connect(tuple.dstPort, hostAddress, () => {
        if (flow.closed) return;
        flow.connected = true;
        const queued = flow.pending;
        flow.pending = [];
        for (const p of queued) this.write(flow, p);
      });
    });
    this.log.debug('udp flow open', describe(tuple));
    return flow;
  }

  private write(flow: UdpFlow, payload: Buffer): void {
    flow.socket.send(payload, (err) => {
      if (err) this.counters.dropped++;
    });
  }

  private close(flow: UdpFlow, why: string): void {
    if (flow.closed) return;
    flow.closed = true;
    flow.meter?.close();
    this.opts.onClosed?.(flow.tuple, flow.rule, flow.bytesUp, flow.bytesDown);
    clearTimeout(flow.idleTimer);
    if (this.flows.get(flow.key) === flow) this.flows.delete(flow.key);
    try {
      flow.socket.close();
    } catch {
      // already closed
    }
    this.log.debug('udp flow close', { ...describe(flow.tuple), reason: why });
  }
}

export function describe(t: FourTuple): Record<string, unknown> {
  return { src: `${formatIp(t.src)}:${t.srcPort}`, dst: `${formatIp(t.dst)}:${t.dstPort}` };
}
