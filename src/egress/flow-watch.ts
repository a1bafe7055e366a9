/**
 * FlowWatch: "one connection, one name" for a flow that was allowed by its
 * first SNI/Host. It keeps checking what the guest sends after the decision
 * (sni/http-stream.ts: every HTTP request's Host; sni/tls-watch.ts: a second
 * ClientHello) and turns a mismatch into a decision record and a refusal:
 *   - HTTP: the offending request never reaches the server (the requests
 *     before it do, and their answers reach the client); then a 403 and a
 *     close ('answer').
 *   - TLS: both sides reset ('reset').
 * In audit mode the mismatch is recorded as would-block and the flow goes on
 * unwatched.
 *
 * It is the FlowInspector of the NAT's TcpPipe (src/nat/tcp-pipe.ts) and is
 * driven the same way by the proxy's tunnel (src/proxy/tunnel.ts).
 */
import { HttpRequestStream } from '../../sni/http-stream.js';
import { TlsHandshakeWatcher } from '../../sni/tls-watch.js';
import type { FlowInspector, InspectVerdict } from '../nat/tcp-pipe.js';
import type { Egress } from './egress.js';
import { forbiddenResponse } from './refusals.js';

export interface FlowWatchTarget {
  /** For the decision record: the destination as the flow's other records show it. */
  dst: string;
  port: number;
}

/** The longest name a refusal record or body repeats (it comes from the guest). */
const MAX_NAME_SHOWN = 256;

export class FlowWatch implements FlowInspector {
  answer: Uint8Array | null = null;
  private http: HttpRequestStream | null;
  private tls: TlsHandshakeWatcher | null;
  private refusedWith: string | null = null;

  constructor(
    readonly protocol: 'tls' | 'http',
    private readonly egress: Egress,
    private readonly target: FlowWatchTarget,
  ) {
    this.http = protocol === 'http' ? new HttpRequestStream({ maxParkedBytes: Math.max(egress.options.maxPeekBytes, 1) }) : null;
    this.tls = protocol === 'tls' ? new TlsHandshakeWatcher() : null;
  }

  get lingerMs(): number {
    return this.egress.options.refusalLingerMs;
  }

  get watchingHost(): boolean {
    if (this.tls !== null) return this.tls.watchingServer;
    return this.http !== null && this.http.awaitingServer;
  }

  /** Guest bytes are held until the server answers an upgrade request. */
  get holding(): boolean {
    return this.http !== null && this.http.awaitingServer;
  }

  /** The decision id of the refusal, once refused. */
  get refusal(): string | null {
    return this.refusedWith;
  }

  guest(data: Uint8Array, forward: (bytes: Uint8Array) => void): InspectVerdict {
    if (this.tls !== null) {
      const v = this.tls.fromClient(data);
      if (v === 'mismatch' || v === 'malformed') return this.refuseTls(data, forward);
      forward(data);
      return v === 'done' ? this.finished() : 'pass';
    }
    if (this.http === null) {
      forward(data);
      return 'done';
    }
    switch (this.http.push(data, forward)) {
      case 'watching':
        return 'pass';
      case 'await-server':
        return 'hold';
      case 'opaque':
        return this.finished();
      default:
        return this.refuseHttp(forward);
    }
  }

  host(data: Uint8Array, forward: (bytes: Uint8Array) => void): InspectVerdict {
    if (this.tls !== null) return this.tls.fromServer(data) === 'done' ? this.finished() : 'pass';
    if (this.http === null) return 'done';
    switch (this.http.server(data, forward)) {
      case 'await-server':
        return 'pass';
      case 'watching':
        return 'release'; // the server did not switch: back to checking requests
      case 'opaque':
        return this.finished();
      default:
        return this.refuseHttp(forward);
    }
  }

  private finished(): InspectVerdict {
    this.http = null;
    this.tls = null;
    return 'done';
  }

  private refuseTls(data: Uint8Array, forward: (bytes: Uint8Array) => void): InspectVerdict {
    const w = this.tls!;
    const first = w.first;
    const second = w.second;
    const mismatch = w.state === 'mismatch';
    const id = mismatch
      ? this.record('second-name', second?.sni ?? null, 'sni', `first ClientHello ${describeHello(first)}, then ${describeHello(second)}`, first?.ech)
      : this.record('malformed', first?.sni ?? null, 'sni', `${w.reason} after the first ClientHello`, first?.ech);
    this.refusedWith = id;
    this.finished();
    if (this.egress.audit) {
      forward(data);
      return 'done';
    }
    return 'reset';
  }

  private refuseHttp(forward: (bytes: Uint8Array) => void): InspectVerdict {
    const s = this.http!;
    const mismatch = s.reason === 'second-name';
    const second = s.secondName === null ? null : s.secondName.slice(0, MAX_NAME_SHOWN);
    const first = s.name === null ? null : s.name.slice(0, MAX_NAME_SHOWN);
    const id = mismatch
      ? this.record('second-name', second, 'host', `request ${s.requestCount} names ${second ?? '(no host)'}; the connection was allowed for ${first ?? '(no host)'}`)
      : this.record('malformed', first, 'host', `${s.reason} in request ${s.requestCount + 1}`);
    this.refusedWith = id;
    const unsent = s.unsent();
    this.finished();
    if (this.egress.audit) {
      if (unsent.length > 0) forward(unsent);
      return 'done';
    }
    const reason = mismatch ? 'second-name' : 'malformed';
    this.answer = forbiddenResponse({ host: mismatch ? second : first, reason, id, rules: this.egress.options.refusalDetails ? this.egress.policy.ruleTexts : null });
    return 'answer';
  }

  private record(reason: string, name: string | null, via: 'sni' | 'host', detail: string, ech?: boolean): string {
    return this.egress.recordBlock(reason, 'tcp', this.target.dst, this.target.port, name, via, detail, ech);
  }
}

function describeHello(h: { sni: string | null; ech: boolean } | null): string {
  if (h === null) return '(none)';
  const name = h.sni === null ? '(no SNI)' : h.sni.slice(0, MAX_NAME_SHOWN);
  return h.ech ? `${name} with ECH` : name;
}
