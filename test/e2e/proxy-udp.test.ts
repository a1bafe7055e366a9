/**
 * `moat proxy` SOCKS5 UDP ASSOCIATE to an address beyond loopback (issue
 * 14, finding 10). A client on 127.0.0.1 gets a relay it can reach there;
 * the relay must still reach what the rules allow elsewhere (here an
 * address in a namespace this test made), and count only datagrams the
 * kernel really took.
 *
 *   test process (root ns): moat proxy, SOCKS5 on 127.0.0.1, and the client
 *   remote ns (createTopology): a UDP echo on internetAddrs[0]:7001 and [1]:7001
 *   root ns: an `unreachable` route for one more address of the topology's
 *            own /24, so that a send fails in the kernel
 *
 * Network safety: both echo addresses are on the remote namespace's lo and
 * route from the root namespace via the topology's veth (assertRoutes checks
 * it before any datagram is sent); the third has no route at all (checked:
 * `ip route get` fails), so nothing can leave for it. Cleanup by PID,
 * namespace name and route.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createSocket, type Socket as UdpSocket } from 'node:dgram';
import { connect, type Socket } from 'node:net';
import { NULL_LOGGER } from '../../src/log.js';
import { parseProxyArgs } from '../../src/proxy/config.js';
import { startProxy, type RunningProxy } from '../../src/proxy/index.js';
import { createTopology, e2eGate, hostExec, hostRun, killTracked, nsSpawn, onCleanup, waitFor, type Topology, type TrackedProcess } from './harness.js';

const gate = e2eGate(['ip']);
const PORT = 7001;

/** A UDP echo on ADDR:PORT that prints "got <text>" per datagram. */
const UDP_ECHO_JS = `
const s = require('node:dgram').createSocket('udp4');
s.on('message', (m, from) => { console.log('got ' + m.toString()); s.send(m, from.port, from.address); });
s.bind(Number(process.argv[2]), process.argv[1], () => console.log('ready'));
`;

describe.skipIf(gate.skip)('moat proxy SOCKS5 UDP to an address beyond loopback', () => {
  let topo: Topology;
  let echoes: TrackedProcess[] = [];
  let proxy: RunningProxy;
  let allowed: string;
  let refused: string;
  let unreachable: string;
  const dropRoute = () => hostRun('ip', ['route', 'del', 'unreachable', `${unreachable}/32`]);

  beforeAll(async () => {
    topo = createTopology({ prefix: 'mzpu-', internetAddresses: 2 });
    [allowed, refused] = topo.internetAddrs as [string, string];
    topo.assertRoutes([allowed, refused]);
    unreachable = topo.internetSubnet.replace(/0\/24$/, '200');
    onCleanup(dropRoute);
    hostExec('ip', ['route', 'add', 'unreachable', `${unreachable}/32`]);
    expect(hostRun('ip', ['route', 'get', unreachable]).status).not.toBe(0); // no way out for it
    echoes = [allowed, refused].map((a) => nsSpawn(topo.remoteNs, process.execPath, ['-e', UDP_ECHO_JS, a, String(PORT)]));
    for (const e of echoes) await waitFor('udp echo ready', () => e.stdout().includes('ready'), { timeoutMs: 10_000 });
    const parsed = parseProxyArgs(['--listen', '127.0.0.1:0', '--socks', '127.0.0.1:0', '--allow', `${allowed}:${PORT}`, '--allow', `${unreachable}:${PORT}`, '--resolver', '127.0.0.1:9']);
    if (parsed.kind !== 'config') throw new Error('expected a config');
    proxy = await startProxy(parsed.config, NULL_LOGGER);
  });

  afterAll(async () => {
    await proxy?.close();
    for (const e of echoes) await killTracked(e);
    if (unreachable !== undefined) dropRoute();
    topo?.destroy();
  });

  it('the relay the client reaches on 127.0.0.1 delivers allowed datagrams beyond loopback, and their replies', async () => {
    const colon = proxy.socks!.lastIndexOf(':');
    const control: Socket = connect(Number(proxy.socks!.slice(colon + 1)), '127.0.0.1');
    const client: UdpSocket = createSocket('udp4');
    try {
      const bound = await new Promise<{ address: string; port: number }>((resolve, reject) => {
        let got = Buffer.alloc(0);
        control.on('data', (c: Buffer) => {
          got = Buffer.concat([got, c]);
          if (got.length >= 12) resolve({ address: `${got[6]}.${got[7]}.${got[8]}.${got[9]}`, port: got.readUInt16BE(10) });
        });
        control.once('error', reject);
        control.write(Uint8Array.from([5, 1, 0, 5, 3, 0, 1, 0, 0, 0, 0, 0, 0]));
      });
      expect(bound.address).toBe('127.0.0.1'); // where this client can reach it
      await new Promise<void>((r) => client.bind(0, '127.0.0.1', () => r()));
      const replies: Buffer[] = [];
      client.on('message', (m) => replies.push(m));
      const send = (to: string, text: string) =>
        client.send(Buffer.concat([Buffer.from([0, 0, 0, 1, ...to.split('.').map(Number), PORT >> 8, PORT & 0xff]), Buffer.from(text)]), bound.port, bound.address);
      send(allowed, 'beyond-loopback');
      send(refused, 'not-allowed');
      await waitFor('a reply through the relay', () => replies.length >= 1, { timeoutMs: 5_000 }).catch(() => undefined);
      await new Promise((r) => setTimeout(r, 200)); // the refused datagram had as long to arrive
      expect(echoes[0]!.stdout()).toContain('got beyond-loopback');
      expect(replies.map((r) => r.subarray(10).toString())).toEqual(['beyond-loopback']);
      expect([...replies[0]!.subarray(0, 10)]).toEqual([0, 0, 0, 1, ...allowed.split('.').map(Number), PORT >> 8, PORT & 0xff]);
      expect(echoes[1]!.stdout()).not.toContain('got');
      const s = proxy.stats();
      expect(s.udpOut).toBe(1);
      expect(s.udpIn).toBe(1);
      expect(s.udpSendErrors).toBe(0);

      // An allowed destination the kernel cannot send to: counted as a send error, not as sent.
      send(unreachable, 'nowhere');
      await waitFor('the failed send to be counted', () => proxy.stats().udpSendErrors >= 1, { timeoutMs: 5_000 });
      expect(proxy.stats().udpOut).toBe(1);
      expect(proxy.stats().udpSendErrors).toBe(1);
    } finally {
      control.destroy();
      client.close();
    }
  });
});
