/**
 * The `moat` package root: the service and the proxy, embeddable (serve, proxy), and the
 * allowlist learner. The pure libraries have their own entries, which never
 * import this folder: `moat/netstack` (TCP/IP stack), `moat/dns` (rules,
 * zone table, responder) and `moat/sni` (ClientHello/Host peeking, egress
 * policy, pins).
 */
export {
  flagsToArgs,
  proxy,
  serve,
  type MoatProxy,
  type ProxyEmbedOptions,
  type AllowlistUpdate,
  type EmbedOptions,
  type MoatServer,
  type ServeFlags,
  type ServeFlagValue,
  type SetAllowlistOptions,
} from './embed.js';
export { ConfigError, type ServeConfig } from './config.js';
export type { DecisionProto, DecisionRecord, DecisionVerdict } from './egress/decision-log.js';
export {
  DEFAULT_HOST_ALIAS,
  DEFAULT_WILDCARD_MIN,
  formatRules,
  learnAllowlist,
  parseDecisionLine,
  readDecisionRecords,
  type LearnFormat,
  type LearnOptions,
  type LearnRecord,
  type LearnResult,
} from './learn.js';
export { createLogger, NULL_LOGGER, type LogFormat, type Logger, type LogLevel, type LogStream } from './log.js';
