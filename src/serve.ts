/**
 * `moat serve`: one guest network (src/network.ts) and, with --api, the
 * control API over its routes; logs the ready line once both listen.
 */
import { ApiServer, type AllowlistControl } from './api-server.js';
import type { DecisionLog } from './egress/decision-log.js';
import { describeConfig, type ServeConfig } from './config.js';
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

/** `moat serve`: one guest network and, with --api, the control API over it. */
export async function serve(config: ServeConfig, log: Logger, deps: Partial<ServeDeps> = {}, options: ServeOptions = {}): Promise<RunningServer> {
  log.info('moat starting', describeConfig(config));
  const network = await startGuestNetwork(config, log, deps, options);
  let api: ApiServer | undefined;
  if (config.apiSocket !== undefined) {
    api = new ApiServer(network.routes, log);
    try {
      await api.listen(config.apiSocket);
    } catch (e) {
      await network.close();
      throw e;
    }
  }
  log.info('moat ready', {
    listen: network.listen,
    api: config.apiSocket === undefined ? undefined : `unix://${config.apiSocket}`,
    forwards: network.forwards.list().map((f) => `${f.local}=${f.remote}/${f.protocol}`),
    pcap: config.pcapFile,
  });
  let closing: Promise<void> | undefined;
  const closeAll = async (): Promise<void> => {
    // The API first (nothing may drive a network being closed), then the network.
    try {
      await api?.close();
    } catch (e) {
      log.error('error while closing', { error: e });
    }
    await network.close();
  };
  return {
    listen: network.listen,
    apiSocket: config.apiSocket,
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

