/**
 * The NAT with an allowlist, "the internet" on 127.0.0.1 and a resolver that
 * maps every test name there: the setup of egress-nat.test.ts, shared with
 * the tests that drive a flow after it was allowed (egress-flow-watch.test.ts).
 * Host sockets are opened through a connectHost hook that refuses anything
 * but loopback, so a policy bug cannot send a packet anywhere else.
 */
import { connect as netConnect, type NetConnectOpts, type Socket } from 'node:net';
import { ipv4, parseIPv4, type IPv4 } from '../../netstack/addr.js';
import { parseRules } from '../../dns/rules.js';
import type { ResolvedAddresses, Resolver } from '../../dns/preresolve.js';
import { AllowlistRuntime, type AllowlistIpv6Options } from '../../src/egress/allowlist-runtime.js';
import { DEFAULT_EGRESS_OPTIONS, type EgressOptions } from '../../src/egress/egress.js';
import { createLogger } from '../../src/log.js';
import type { LiveLookupSettings } from '../../src/allowlist/live-lookup-flags.js';
import { Nat, type NatOptions } from '../../src/nat/index.js';
import type { AskSettings } from '../../src/egress/ask-gate.js';
import { FakePendingTcp, FakeStack, type FakeTcpSocket } from './nat-fake-stack.js';
import type { BudgetDirection, BudgetSpec } from '../../src/traffic/byte-budgets.js';

export const GUEST = ipv4(192, 168, 127, 2);
/** A destination the guest "chooses": never dialed (connectHost throws for it). */
export const FRONTED = '198.51.100.7';

export class MapResolver implements Resolver {
  calls: string[] = [];
  /** `aaaa`: the names' IPv6 answers (an IPv6 guest network asks both). */
  constructor(
    private readonly a: Record<string, string[]>,
    private readonly aaaa: Record<string, string[]> = {},
  ) {}
  async resolve4(name: string): Promise<ResolvedAddresses> {
    this.calls.push(name);
    const addresses = this.a[name];
    if (addresses === undefined) throw Object.assign(new Error(`${name}: not found`), { code: 'ENOTFOUND' });
    return { addresses, ttl: 60 };
  }
  async resolve6(name: string): Promise<ResolvedAddresses> {
    return { addresses: this.aaaa[name] ?? [], ttl: 60 };
  }
}

export interface EgressNat {
  nat: Nat;
  stack: FakeStack;
  runtime: AllowlistRuntime;
  dialed: string[];
  logLines: Record<string, unknown>[];
  close(): Promise<void>;
}

export async function startEgressNat(
  rules: string[],
  opts: {
    admit?: string[];
    egress?: Partial<EgressOptions>;
    names?: Record<string, string[]>;
    names6?: Record<string, string[]>;
    ipv6?: AllowlistIpv6Options;
    liveLookups?: LiveLookupSettings;
    quic?: NatOptions['quic'];
    budgets?: BudgetSpec[];
    budgetDirection?: BudgetDirection;
    nat?: Partial<NatOptions>;
    ask?: AskSettings;
  } = {},
): Promise<EgressNat> {
  const resolver = new MapResolver(opts.names ?? { 'www.t.test': ['127.0.0.1'], 'api.t.test': ['127.0.0.1'], 'blocked.test': ['127.0.0.1'] }, opts.names6);
  const logLines: Record<string, unknown>[] = [];
  const log = createLogger({ level: 'debug', format: 'json', stream: { write: (l: string) => logLines.push(JSON.parse(l) as Record<string, unknown>) } });
  const runtime = await AllowlistRuntime.start(
    {
      rules: parseRules(rules),
      resolver,
      gatewayIpv4: '192.168.127.1',
      hostAliasIpv4: '192.168.127.254',
      sinkhole: 'zero',
      guestSubnet: { network: '192.168.127.0', prefix: 24 },
      admitResolved: opts.admit ?? ['127.0.0.0/8'],
      hostAliasExempt: false,
      allowLinkLocal: false,
      egress: { ...DEFAULT_EGRESS_OPTIONS, ...opts.egress },
      now: () => performance.now(),
      ...(opts.liveLookups ? { liveLookups: opts.liveLookups } : {}),
      ...(opts.budgets ? { budgets: opts.budgets } : {}),
      ...(opts.budgetDirection ? { budgetDirection: opts.budgetDirection } : {}),
      ...(opts.ask ? { ask: { settings: opts.ask } } : {}),
      ...(opts.ipv6 ? { ipv6: opts.ipv6 } : {}),
    },
    log,
  );
  const dialed: string[] = [];
  const connectHost = (o: NetConnectOpts): Socket => {
    const host = (o as { host?: string }).host ?? '';
    dialed.push(`${host}:${(o as { port?: number }).port}`);
    if (!host.startsWith('127.') && host !== '::1') throw new Error(`test refused to dial ${host}`);
    return netConnect(o);
  };
  const nat = new Nat({ dnsUpstreams: [{ host: '127.0.0.1', port: 9 }], connectHost, ...(opts.quic ? { quic: opts.quic } : {}), ...opts.nat }, log, runtime.dns, runtime.egress);
  const stack = new FakeStack();
  nat.attach(stack);
  return {
    nat,
    stack,
    runtime,
    dialed,
    logLines,
    close: async () => {
      await nat.close();
      await runtime.close();
    },
  };
}

let nextPort = 42000;
export function syn(dst: string, dstPort: number): FakePendingTcp {
  return new FakePendingTcp({ src: GUEST, srcPort: nextPort++, dst: parseIPv4(dst)! as IPv4, dstPort });
}

export async function acceptedSocket(p: FakePendingTcp): Promise<FakeTcpSocket> {
  const o = await p.decided;
  if (o.kind !== 'accepted') throw new Error(`expected accept, got ${o.kind}`);
  return o.socket;
}

/** What the guest has received so far (consuming it). */
export function received(s: FakeTcpSocket): string {
  s.consume();
  return s.receivedConcat().toString('latin1');
}

export function decisions(s: EgressNat): Record<string, unknown>[] {
  return s.logLines.filter((l) => l['msg'] === 'egress decision');
}
