/**
 * TlsHandshakeWatcher (sni/tls-watch.ts): a second ClientHello (after a
 * HelloRetryRequest, or pipelined before the server answered) must name the
 * same host with the same ECH presence; watching ends once the server's
 * first message says no second hello can follow in the clear.
 */
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { TlsHandshakeWatcher, type TlsWatchVerdict } from '../../sni/tls-watch.js';
import { MAX_CLIENT_HELLO_BYTES } from '../../sni/clienthello.js';
import { buildClientHello, buildServerHello, CHANGE_CIPHER_SPEC, concat, record, splitAt, toRecords } from './support/hello-builder.js';

const hello = (sni: string | null, ech = false, sizes?: number[]): Uint8Array => toRecords(buildClientHello({ sni, ech }), sizes);
const appData = (n: number, fill = 0x01): Uint8Array => record(23, new Uint8Array(n).fill(fill));
const feedClient = (w: TlsHandshakeWatcher, ...chunks: Uint8Array[]): TlsWatchVerdict[] => chunks.map((c) => w.fromClient(c));

describe('TlsHandshakeWatcher', () => {
  it('TLS 1.3 with HRR: a compat CCS, then a second hello for the same host -> done', () => {
    const w = new TlsHandshakeWatcher();
    expect(w.fromClient(hello('www.t.test'))).toBe('watching');
    expect(w.first).toEqual({ sni: 'www.t.test', ech: false });
    expect(w.watchingServer).toBe(true);
    expect(w.fromServer(toRecords(buildServerHello({ hrr: true })))).toBe('watching');
    expect(w.watchingServer).toBe(false);
    expect(feedClient(w, CHANGE_CIPHER_SPEC, hello('WWW.t.test.'))).toEqual(['watching', 'done']);
  });

  it('the attack: after an HRR the second hello names another host -> mismatch', () => {
    const w = new TlsHandshakeWatcher();
    w.fromClient(hello('www.t.test'));
    w.fromServer(toRecords(buildServerHello({ hrr: true })));
    expect(feedClient(w, CHANGE_CIPHER_SPEC, hello('blocked.test'))).toEqual(['watching', 'mismatch']);
    expect(w.second).toEqual({ sni: 'blocked.test', ech: false });
    expect(w.reason).toBe('second-name');
  });

  it('a second hello pipelined behind the first, before the server answered, is checked too', () => {
    const w = new TlsHandshakeWatcher();
    expect(w.fromClient(concat([hello('www.t.test'), hello('blocked.test')]))).toBe('mismatch');
  });

  it('skipped 0-RTT records before the second hello do not end the watch (RFC 8446 4.2.10)', () => {
    const w = new TlsHandshakeWatcher();
    w.fromClient(concat([hello('www.t.test'), appData(300), appData(16_000)]));
    w.fromServer(toRecords(buildServerHello({ hrr: true })));
    expect(feedClient(w, appData(100), CHANGE_CIPHER_SPEC, hello('blocked.test'))).toEqual(['watching', 'watching', 'mismatch']);
  });

  it('ECH presence must match: dropping or adding ECH in the second hello is a mismatch', () => {
    const a = new TlsHandshakeWatcher();
    a.fromClient(hello('public.t.test', true));
    a.fromServer(toRecords(buildServerHello({ hrr: true })));
    expect(a.fromClient(hello('public.t.test', false))).toBe('mismatch');
    const b = new TlsHandshakeWatcher();
    b.fromClient(hello('public.t.test', false));
    b.fromServer(toRecords(buildServerHello({ hrr: true })));
    expect(b.fromClient(hello('public.t.test', true))).toBe('mismatch');
  });

  it('a server that does not ask for a retry ends the watch: TLS 1.2 encrypted Finished after CCS is never parsed', () => {
    const w = new TlsHandshakeWatcher();
    w.fromClient(hello('www.t.test'));
    expect(w.fromServer(toRecords(buildServerHello()))).toBe('done');
    // An encrypted Finished that happens to start like a ClientHello for another host: not looked at.
    expect(w.fromClient(concat([CHANGE_CIPHER_SPEC, hello('blocked.test')]))).toBe('done');
  });

  it('a server alert (or anything but a handshake record) first ends the watch', () => {
    const w = new TlsHandshakeWatcher();
    w.fromClient(hello('www.t.test'));
    expect(w.fromServer(Uint8Array.of(21, 3, 3, 0, 2, 2, 40))).toBe('done');
  });

  it('after an HRR, any other handshake message instead of the second hello is malformed', () => {
    const w = new TlsHandshakeWatcher();
    w.fromClient(hello('www.t.test'));
    w.fromServer(toRecords(buildServerHello({ hrr: true })));
    expect(w.fromClient(record(22, Uint8Array.of(16, 0, 0, 1, 0)))).toBe('malformed');
    expect(w.reason).toBe('tls:expected-second-hello');
  });

  it('a record of a type TLS does not have, or a record interleaved inside a hello, is malformed', () => {
    const w = new TlsHandshakeWatcher();
    w.fromClient(hello('www.t.test'));
    expect(w.fromClient(record(99, Uint8Array.of(1)))).toBe('malformed');
    const v = new TlsHandshakeWatcher();
    v.fromClient(hello('www.t.test'));
    const second = hello('www.t.test', false, [20]);
    expect(v.fromClient(concat([second.subarray(0, 25), appData(5)]))).toBe('malformed');
    expect(v.reason).toBe('tls:interleaved-record');
  });

  it('bounded: a second hello announcing the maximum size and trickling in holds what arrived, never more than the bound', () => {
    const w = new TlsHandshakeWatcher();
    w.fromClient(hello('www.t.test'));
    w.fromServer(toRecords(buildServerHello({ hrr: true })));
    const big = buildClientHello({ sni: 'www.t.test', cipherSuiteCount: 32_000, padTo: 128_000 });
    let max = 0;
    for (const r of splitAt(toRecords(big, [1000]), Array.from({ length: 140 }, (_, i) => i * 1000))) {
      w.fromClient(r);
      max = Math.max(max, w.heldBytes);
    }
    expect(w.state).toBe('done');
    expect(max).toBeLessThanOrEqual(MAX_CLIENT_HELLO_BYTES);
    const over = new Uint8Array(4);
    over[0] = 1;
    over[1] = 0x03; // 196,608 + 4 > the largest hello (131,400)
    const x = new TlsHandshakeWatcher();
    x.fromClient(hello('www.t.test'));
    expect(x.fromClient(record(22, over))).toBe('malformed');
    expect(x.reason).toBe('tls:hello-too-large');
  });

  it('property: any record fragmentation and TCP chunking of (hello, HRR, CCS, hello) gives the same verdict', () => {
    fc.assert(
      fc.property(
        fc.constantFrom('www.t.test', 'blocked.test', 'WWW.T.TEST'),
        fc.boolean(),
        fc.array(fc.integer({ min: 1, max: 400 }), { minLength: 1, maxLength: 4 }),
        fc.array(fc.nat(), { maxLength: 20 }),
        fc.array(fc.nat(), { maxLength: 6 }),
        (second, ccs, sizes, cuts, serverCuts) => {
          const w = new TlsHandshakeWatcher();
          const c1 = hello('www.t.test', false, sizes);
          const c2 = concat([ccs ? CHANGE_CIPHER_SPEC : new Uint8Array(0), hello(second, false, sizes)]);
          for (const c of splitAt(c1, cuts.map((x) => x % (c1.length + 1)))) expect(w.fromClient(c)).toBe('watching');
          const sh = toRecords(buildServerHello({ hrr: true }), [7]);
          for (const c of splitAt(sh, serverCuts.map((x) => x % (sh.length + 1)))) w.fromServer(c);
          let last: TlsWatchVerdict = 'watching';
          for (const c of splitAt(c2, cuts.map((x) => x % (c2.length + 1)))) last = w.fromClient(c);
          expect(last).toBe(second === 'blocked.test' ? 'mismatch' : 'done');
        },
      ),
      { numRuns: 300 },
    );
  });
});
