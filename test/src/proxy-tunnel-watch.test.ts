/**
 * One connection, one name inside a `moat proxy` tunnel (issue 14, finding
 * 6, "same inside proxy tunnels"): the Tunnel class with a real client
 * socket, a real upstream on 127.0.0.1 and the egress of an allowlist
 * runtime. After the tunnel was allowed for www.t.test, a second request or
 * a second ClientHello for another host is refused and never reaches the
 * upstream.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { createServer as createHttpServer } from 'node:http';
import { connect as netConnect, createServer as createNetServer, type AddressInfo, type Socket } from 'node:net';
import { createLogger } from '../../src/log.js';
import { Tunnel, type TunnelPlan } from '../../src/proxy/tunnel.js';
import { startEgressNat, type EgressNat } from './egress-nat-support.js';
import { waitFor } from './nat-fake-stack.js';
import { buildClientHello, buildServerHello, CHANGE_CIPHER_SPEC, concat, toRecords } from '../sni/support/hello-builder.js';

const cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
const hello = (sni: string, ech = false): Uint8Array => toRecords(buildClientHello({ sni, ech }));
const get = (host: string, path: string): string => `GET ${path} HTTP/1.1\r\nHost: ${host}\r\n\r\n`;

/** A TCP server whose connections are destroyed at cleanup (so a test that fails cannot hang the next). */
function netServer(handler: (s: Socket) => void): ReturnType<typeof createNetServer> {
  const conns = new Set<Socket>();
  const srv = createNetServer((s) => {
    conns.add(s);
    handler(s);
  });
  cleanups.push(() => {
    for (const c of conns) c.destroy();
    return new Promise<void>((r) => srv.close(() => r()));
  });
  return srv;
}

async function listen(srv: { listen(port: number, host: string, cb: () => void): unknown; address(): unknown; close(cb: () => void): unknown }): Promise<number> {
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  return (srv.address() as AddressInfo).port;
}

/** A client connected to a tunnel whose upstream is 127.0.0.1:`port`, planned for www.t.test. */
async function tunnelTo(port: number, peek: 'required' | 'optional' = 'required'): Promise<{ client: Socket; egress: EgressNat; data: () => string; closed: () => boolean; reset: () => boolean }> {
  const egress = await startEgressNat([`www.t.test:${port}`]);
  cleanups.push(() => egress.close());
  const plan: TunnelPlan = { name: 'www.t.test', addresses: ['127.0.0.1'], port, peek, dst: `www.t.test:${port}` };
  const log = createLogger({ level: 'error', format: 'json', stream: { write: () => {} } });
  const proxyConns = new Set<Socket>();
  const proxySide = createNetServer({ allowHalfOpen: true }, (s) => {
    proxyConns.add(s);
    const t = new Tunnel(s, plan, {
      egress: egress.runtime.egress,
      dialer: { connectFirst: (addresses, p) => new Promise((resolve, reject) => { const u = netConnect({ host: addresses[0]!, port: p, allowHalfOpen: true }, () => resolve(u)); u.once('error', reject); }) },
      log,
      serverFirstGraceMs: 100,
    }, () => {});
    t.start();
  });
  const proxyPort = await listen(proxySide);
  cleanups.push(() => {
    for (const c of proxyConns) c.destroy();
    return new Promise<void>((r) => proxySide.close(() => r()));
  });
  const client = netConnect({ host: '127.0.0.1', port: proxyPort });
  cleanups.push(() => { client.destroy(); });
  let got = '';
  let closed = false;
  let reset = false;
  client.on('data', (d) => (got += d.toString('latin1')));
  client.on('error', (e: NodeJS.ErrnoException) => { if (e.code === 'ECONNRESET') reset = true; });
  client.on('close', () => (closed = true));
  await new Promise<void>((r) => client.once('connect', () => r()));
  return { client, egress, data: () => got, closed: () => closed, reset: () => reset };
}

const decisions = (s: EgressNat): Record<string, unknown>[] => s.logLines.filter((l) => l['msg'] === 'egress decision');

describe('moat proxy tunnel: one connection, one name', () => {
  it('a second request for blocked.test on a kept-alive tunnel: the first is answered, then a 403; the upstream never sees it', async () => {
    const requests: string[] = [];
    const srv = createHttpServer((req, res) => {
      requests.push(`${req.headers.host} ${req.url}`);
      res.end(`vhost ${req.headers.host} ${req.url}\n`);
    });
    const port = await listen(srv);
    cleanups.push(() => new Promise<void>((r) => { srv.closeAllConnections(); srv.close(() => r()); }));
    const t = await tunnelTo(port);
    t.client.write(get('www.t.test', '/one'));
    await waitFor(() => t.data().includes('vhost www.t.test /one'), 'the first answer');
    t.client.write(get('blocked.test', '/two'));
    await waitFor(() => t.closed(), 'the close');
    expect(t.data()).toContain('x-moat-reason: second-name');
    expect(t.data().indexOf('403')).toBeGreaterThan(t.data().indexOf('vhost www.t.test /one'));
    await sleep(100);
    expect(requests).toEqual(['www.t.test /one']);
    expect(decisions(t.egress).at(-1)).toMatchObject({ decision: 'blocked', reason: 'second-name', name: 'blocked.test', via: 'host' });
  });

  it('after a HelloRetryRequest, a second ClientHello for blocked.test resets the tunnel; the upstream never gets it', async () => {
    const got: Buffer[] = [];
    const srv = netServer((s) => {
      let answered = false;
      s.on('error', () => {});
      s.on('data', (d) => {
        got.push(d);
        if (!answered) {
          answered = true;
          s.write(toRecords(buildServerHello({ hrr: true }), [16_384], 0x0303));
        }
      });
    });
    const port = await listen(srv);
    const t = await tunnelTo(port);
    t.client.write(hello('www.t.test'));
    await waitFor(() => t.data().length > 0, 'the HRR');
    t.client.write(concat([CHANGE_CIPHER_SPEC, hello('blocked.test')]));
    await waitFor(() => t.closed(), 'the reset');
    expect(t.reset()).toBe(true);
    await sleep(100);
    expect(Buffer.concat(got).includes('blocked.test')).toBe(false);
    expect(decisions(t.egress).at(-1)).toMatchObject({ decision: 'blocked', reason: 'second-name', name: 'blocked.test', via: 'sni', ech: false });
  });

  it('a tunnel whose hello carries ECH is refused with reason ech when refuseEch is set', async () => {
    const srv = netServer((s) => s.on('error', () => {}));
    const port = await listen(srv);
    const t = await tunnelTo(port);
    t.egress.runtime.egress.options.refuseEch = true;
    t.client.write(hello('www.t.test', true));
    await waitFor(() => t.closed(), 'the refusal');
    expect([...Buffer.from(t.data(), 'latin1')]).toEqual([0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x31]);
    expect(decisions(t.egress).at(-1)).toMatchObject({ decision: 'blocked', reason: 'ech', ech: true });
  });

  it('a tunnel on a port a rule names, whose bytes are neither TLS nor HTTP (SSH), is not watched: it just works', async () => {
    const srv = netServer((s) => {
      s.on('error', () => {});
      s.on('data', (d) => s.write(d)); // echo
    });
    const port = await listen(srv);
    const t = await tunnelTo(port, 'optional');
    // 'S' starts like an HTTP method, then '-' and '2' say it is not one.
    t.client.write('SSH-2.0-OpenSSH_9.2\r\n');
    await waitFor(() => t.data().includes('SSH-2.0-OpenSSH_9.2'), 'the echo');
    t.client.write('GET / HTTP/1.1\r\nHost: blocked.test\r\n\r\n');
    await waitFor(() => t.data().includes('blocked.test'), 'the second echo');
    expect(t.closed()).toBe(false);
  });
});
