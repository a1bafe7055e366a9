/**
 * `moat serve`: one guest network (src/network.ts) and, with --api, the
 * control API over its routes; logs the ready line once both listen.
 */
import { ApiServer, type AllowlistControl } from './api-server.js';
import type { DecisionLog } from './egress/decision-log.js';
import { describeConfig, type ListenAddress, type ServeConfig } from './config.js';
import type { LocalZone } from './local-zones.js';
import type { Logger } from './log.js';
import type { NetStack } from '../netstack/api.js';
import { startGuestNetwork, type ServeDeps, type ServeOptions } from './network.js';

export {
  DEFAULT_SERVE_DEPS,
  limitsOf,
  natOptionsFor,
  stackConfigFor,
  startGuestNetwork,
  UnavailablePortForwards,
  type GuestNetwork,
  type GuestNetworkOptions,
  type NatLike,
  type NetworkState,
  type PortForwardsContext,
  type PortForwardsFactory,
  type ServeDeps,
  type ServeOptions,
} from './network.js';

export interface RunningServer {
  /** The guest listen addresses as bound (tcp with the real port). */
  readonly listen: readonly string[];
  readonly apiSocket: string | undefined;
  /** Every address the API listens on (--api, and `moat gvproxy`'s -listen/-services). */
  readonly apis: readonly string[];
  readonly stack: NetStack;
  stats(): Record<string, unknown>;
  /** The running allowlist (undefined without --allow): its rules and reload. */
  readonly allowlist: AllowlistControl | undefined;
  /** The allowlist's decision log (undefined without --allow): subscribe() for every decision as an event. */
  readonly decisions: DecisionLog | undefined;
  /**
   * Resolves (with why) if the guest link ends for good: a --tap-fd device
   * that disappeared. Never resolves for --listen-qemu, where the next guest
   * may connect. The CLI shuts down when it does.
   */
  readonly linkLost: Promise<string>;
  /** Closes everything; safe to call more than once. */
  close(): Promise<void>;
}

/** What `moat gvproxy` adds to a serve: more API addresses, and the DNS zones gvproxy starts with. */
export interface ServeExtras extends ServeOptions {
  /** API addresses besides --api (gvproxy's -listen and -services). */
  apiListen?: readonly ListenAddress[];
  dnsZones?: readonly LocalZone[];
}

/** `moat serve`: one guest network and, with --api, the control API over it. */
export async function serve(config: ServeConfig, log: Logger, deps: Partial<ServeDeps> = {}, options: ServeExtras = {}): Promise<RunningServer> {
  log.info('moat starting', describeConfig(config));
  const network = await startGuestNetwork(config, log, deps, options);
  const apiAddrs: ListenAddress[] = [
    ...(config.apiSocket === undefined ? [] : [{ kind: 'unix' as const, path: config.apiSocket, url: `unix://${config.apiSocket}` }]),
    ...(options.apiListen ?? []),
  ];
  const apiServers: ApiServer[] = [];
  const apis: string[] = [];
  try {
    for (const addr of apiAddrs) {
      const api = new ApiServer(network.routes, log);
      apiServers.push(api);
      apis.push(await api.listenAt(addr));
    }
  } catch (e) {
    for (const a of apiServers) await a.close().catch(() => {});
    await network.close();
    throw e;
  }
  // Everything listens: the --notification listener hears "ready" (gvproxy sends it once its API listens).
  network.notify({ notification_type: 'ready' });
  log.info('moat ready', {
    listen: network.listen,
    api: apis.length === 0 ? undefined : apis.length === 1 ? apis[0] : apis,
    forwards: network.forwards.list().map((f) => `${f.local}=${f.remote}/${f.protocol}`),
    pcap: config.pcapFile,
  });
  let closing: Promise<void> | undefined;
  const closeAll = async (): Promise<void> => {
    // The API first (nothing may drive a network being closed), then the network.
    for (const api of apiServers) {
      try {
        await api.close();
      } catch (e) {
        log.error('error while closing', { error: e });
      }
    }
    await network.close();
  };
  return {
    listen: network.listen,
    apiSocket: config.apiSocket,
    apis,
    stack: network.stack,
    stats: () => network.stats(),
    allowlist: network.allowlist,
    decisions: network.decisions,
    linkLost: network.ended,
    close: () => {
      closing ??= closeAll().then(() => {
        log.info('moat stopped');
        log.flush?.(); // the main log's last "log lines suppressed" summary
      });
      return closing;
    },
  };
}

