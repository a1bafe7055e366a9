/**
 * `--notification unix:///PATH`: lifecycle events as JSON lines to a unix
 * socket someone else listens on, as gvproxy's notification sender does
 * (gvisor-tap-vsock pkg/notification/sender.go, pkg/types/handshake.go):
 * one connection per event, one JSON object and a newline, then close.
 *
 *   {"notification_type":"ready"}
 *   {"notification_type":"connection_established","mac_address":"5a:94:ef:e4:0c:ee"}
 *   {"notification_type":"connection_closed","mac_address":"5a:94:ef:e4:0c:ee"}
 *   {"notification_type":"allowlist_reloaded","rules":3}          (Moat's own)
 *   {"notification_type":"limit_hit","limit":"tcpFlows"}           (Moat's own)
 *
 * gvproxy's names and fields are kept; Moat's own events add their own
 * `notification_type` and fields beside them (a gvproxy consumer switches on
 * the type and ignores the ones it does not know).
 *
 * Never fatal: a listener that is absent, slow or gone costs a log line (the
 * first failure of a run of failures, then one line when it works again),
 * never the service. The queue is bounded (gvproxy's 100): an event beyond
 * it is dropped and counted, as gvproxy drops it ("unable to send
 * notification"). Events go out one at a time, in order.
 */
import { connect } from 'node:net';
import type { Logger } from './log.js';

/** gvproxy's notification types (pkg/types/handshake.go) and Moat's own. */
export type NotificationType =
  | 'ready'
  | 'connection_established'
  | 'connection_closed'
  | 'hypervisor_error'
  | 'allowlist_reloaded'
  | 'limit_hit';

export interface NotificationMessage {
  notification_type: NotificationType;
  /** The guest's MAC (connection_established / connection_closed), as gvproxy. */
  mac_address?: string;
  [field: string]: unknown;
}

/** Where events go: the real sender, or nothing (no --notification). */
export interface Notifier {
  send(msg: NotificationMessage): void;
}

export const NO_NOTIFIER: Notifier = { send: () => {} };

export interface NotificationSenderOptions {
  /** Events waiting to be sent at most (gvproxy: a channel of 100). */
  maxQueue: number;
  /** One delivery may take this long (connect + write) before it is abandoned. */
  timeoutMs: number;
}

export const DEFAULT_NOTIFICATION_OPTIONS: NotificationSenderOptions = { maxQueue: 100, timeoutMs: 2_000 };

export interface NotificationStats {
  sent: number;
  failed: number;
  dropped: number;
  queued: number;
}

export class NotificationSender implements Notifier {
  private readonly queue: NotificationMessage[] = [];
  private readonly options: NotificationSenderOptions;
  private sending = false;
  private closed = false;
  /** A failure was logged and nothing has been delivered since: stay quiet until one is. */
  private failing = false;
  /** Events were dropped since the queue last ran empty (one log line per burst). */
  private dropping = false;
  private idle: (() => void)[] = [];
  readonly stats: NotificationStats = { sent: 0, failed: 0, dropped: 0, queued: 0 };

  constructor(
    readonly path: string,
    private readonly log: Logger,
    options: Partial<NotificationSenderOptions> = {},
  ) {
    this.options = { ...DEFAULT_NOTIFICATION_OPTIONS, ...options };
  }

  send(msg: NotificationMessage): void {
    if (this.closed) return;
    if (this.queue.length >= this.options.maxQueue) {
      this.stats.dropped++;
      // The first drop of a burst is logged; the count is in the stats.
      if (!this.dropping) {
        this.dropping = true;
        this.log.warn('notification queue full: event dropped', { type: msg.notification_type, max: this.options.maxQueue, droppedTotal: this.stats.dropped });
      }
      return;
    }
    this.queue.push(msg);
    this.stats.queued = this.queue.length;
    if (!this.sending) void this.drain();
  }

  /** Resolves once every queued event has been tried (tests, shutdown). */
  flushed(): Promise<void> {
    if (!this.sending && this.queue.length === 0) return Promise.resolve();
    return new Promise((resolve) => this.idle.push(resolve));
  }

  /** Tries what is queued for at most `timeoutMs`, then drops the rest. */
  async close(timeoutMs = this.options.timeoutMs): Promise<void> {
    if (this.closed) return;
    await Promise.race([this.flushed(), new Promise((r) => setTimeout(r, timeoutMs).unref())]);
    this.closed = true;
    this.queue.length = 0;
  }

  private async drain(): Promise<void> {
    this.sending = true;
    while (this.queue.length > 0 && !this.closed) {
      const msg = this.queue.shift()!;
      this.stats.queued = this.queue.length;
      try {
        await this.deliver(`${JSON.stringify(msg)}\n`);
        this.stats.sent++;
        if (this.failing) {
          this.failing = false;
          this.log.info('notification socket reachable again', { path: this.path });
        }
      } catch (e) {
        this.stats.failed++;
        if (!this.failing) {
          this.failing = true;
          this.log.warn('notification not delivered (further failures are not logged until one succeeds)', {
            path: this.path,
            type: msg.notification_type,
            error: (e as Error).message,
          });
        }
      }
    }
    this.sending = false;
    this.dropping = false;
    for (const r of this.idle.splice(0)) r();
  }

  private deliver(line: string): Promise<void> {
    return new Promise((resolve, reject) => {
      const socket = connect(this.path);
      const timer = setTimeout(() => socket.destroy(new Error(`no delivery in ${this.options.timeoutMs} ms`)), this.options.timeoutMs);
      timer.unref();
      socket.once('error', (e) => {
        clearTimeout(timer);
        reject(e);
      });
      socket.once('connect', () => {
        socket.end(line, () => {
          clearTimeout(timer);
          resolve();
        });
      });
      // The listener may close first; nothing is read from it.
      socket.resume();
    });
  }
}

/**
 * Limit notifications at the pace of the limits' log: the first refusal by
 * a limit, then at most one per `intervalMs` while refusals go on.
 */
export function limitNotifier(notifier: Notifier, intervalMs: number, now: () => number = () => performance.now()): (limit: string) => void {
  const last = new Map<string, number>();
  return (limit) => {
    const t = now();
    const prev = last.get(limit);
    if (prev !== undefined && t - prev < intervalMs) return;
    last.set(limit, t);
    notifier.send({ notification_type: 'limit_hit', limit });
  };
}
