import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { request } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { NetStack, PendingTcp, StackConfig, StackEvents, UdpDatagram } from '../../netstack/api.js';
import { parseServeArgs, type ServeConfig } from '../../src/config.js';
import { serve, type NatLike } from '../../src/serve.js';
import { captureLogger, FakeForwards, FakeStack, frameStream, outputBatch, waitFor } from './shell-fakes.js';

let dir: string;
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'mv6-serve-'));
});
afterEach(() => {
  rmSync(dir, { recursive: true, force: true });
});

class FakeNat implements NatLike {
  attached: NetStack | undefined;
  resets = 0;
  closed = false;
  syns: PendingTcp[] = [];
  udp: UdpDatagram[] = [];
  attach(stack: NetStack): void {
    this.attached = stack;
  }
  onTcpSyn(p: PendingTcp): void {
    this.syns.push(p);
  }
  onUdp(d: UdpDatagram): void {
    this.udp.push(d);
  }
  onIcmp(): void {}
  resetGuest(): void {
    this.resets++;
  }
  async close(): Promise<void> {
    this.closed = true;
  }
  stats(): object {
    return { tcpFlows: 7 };
  }
  claimGatewayUdp(): () => void {
    return () => {};
  }
}

function config(extra: string[] = []): ServeConfig {
  const r = parseServeArgs(
    [
      '--listen-qemu', `unix://${join(dir, 'q.sock')}`,
      '--api', `unix://${join(dir, 'api.sock')}`,
      '--pcap', join(dir, 'cap.pcap'),
      '--forward', '127.0.0.1:2222=192.168.127.2:22',
      '--mtu', '9000',
      '--dns-upstream', '127.0.0.1:5300',
      ...extra,
    ],
    { readFile: () => '', readResolvConf: () => undefined },
  );
  if (r.kind !== 'config') throw new Error('config expected');
  return r.config;
}

function getJson(socketPath: string, path: string): Promise<unknown> {
  return new Promise((resolve, reject) => {
    request({ socketPath, path }, (res) => {
      const parts: Buffer[] = [];
      res.on('data', (d: Buffer) => parts.push(d));
      res.on('end', () => resolve(JSON.parse(Buffer.concat(parts).toString())));
    })
      .on('error', reject)
      .end();
  });
}

describe('serve() wiring', () => {
  it('connects guest socket, stack, NAT, forwards, API and pcap, logs ready, and closes everything', async () => {
    const { log, lines } = captureLogger();
    const nat = new FakeNat();
    const forwards = new FakeForwards();
    let stack: FakeStack | undefined;
    let stackConfig: StackConfig | undefined;
    let events: StackEvents | undefined;
    const running = await serve(config(), log, {
      createStack: (c, e) => {
        stackConfig = c;
        events = e;
        stack = new FakeStack(c, e);
        // Echo: every input batch comes straight back as output.
        stack.onInput = (frames) => e.onOutput(outputBatch(frames.map((f) => new Uint8Array(f))));
        return stack;
      },
      createNat: () => nat,
      createPortForwards: () => forwards,
    });
    try {
      expect(stackConfig).toMatchObject({ mtu: 9000, dnsServers: [stackConfig!.gatewayIp] });
      expect(nat.attached).toBe(stack);
      expect(forwards.list()).toEqual([{ local: '127.0.0.1:2222', remote: '192.168.127.2:22', protocol: 'tcp' }]);
      const ready = lines.filter((l) => l.msg === 'moat ready');
      expect(ready).toHaveLength(1);
      expect(ready[0]).toMatchObject({ listen: [`unix://${join(dir, 'q.sock')}`], api: `unix://${join(dir, 'api.sock')}` });

      // Stack events reach the NAT.
      events!.onUdp({ src: 1, srcPort: 2, dst: 3, dstPort: 4, payload: new Uint8Array(1) });
      expect(nat.udp).toHaveLength(1);

      // Guest frames reach the stack; its output reaches the guest.
      const guest: Socket = await new Promise((resolve) => {
        const s = connect(join(dir, 'q.sock'), () => resolve(s));
      });
      const received: Buffer[] = [];
      guest.on('data', (d: Buffer) => received.push(d));
      const frame = new Uint8Array(60).fill(0xab);
      guest.write(frameStream([frame, frame]));
      await waitFor(() => Buffer.concat(received).length === 128);
      expect(Buffer.concat(received).equals(Buffer.from(frameStream([frame, frame])))).toBe(true);
      expect(stack!.inputs).toEqual([[frame, frame]]);

      const stats = (await getJson(join(dir, 'api.sock'), '/stats')) as Record<string, any>;
      expect(stats.frames).toEqual({ in: 2, out: 2 });
      expect(stats.bytes).toEqual({ in: 120, out: 120 });
      expect(stats.nat).toEqual({ tcpFlows: 7 });
      expect(stats.flows.forwards).toBe(1);
      expect(stats.pcap.framesWritten).toBe(4);
      expect(await getJson(join(dir, 'api.sock'), '/healthz')).toEqual({ status: 'ok', guestConnected: true });

      // The guest leaves: stack and NAT forget it.
      guest.destroy();
      await waitFor(() => stack!.resets === 1);
      expect(nat.resets).toBe(1);
    } finally {
      await running.close();
    }
    expect(nat.closed).toBe(true);
    expect(forwards.closed).toBe(true);
    expect(existsSync(join(dir, 'q.sock'))).toBe(false);
    expect(existsSync(join(dir, 'api.sock'))).toBe(false);
    expect(existsSync(join(dir, 'cap.pcap'))).toBe(true);
    expect(lines.some((l) => l.msg === 'moat stopped')).toBe(true);
    await running.close(); // twice is fine
  });

  it('undoes what it opened when a part fails to start', async () => {
    const { log } = captureLogger();
    const nat = new FakeNat();
    const forwards = new FakeForwards();
    forwards.failNext = Object.assign(new Error('listen EADDRINUSE'), { code: 'EADDRINUSE' });
    await expect(
      serve(config(), log, {
        createStack: (c, e) => new FakeStack(c, e),
        createNat: () => nat,
        createPortForwards: () => forwards,
      }),
    ).rejects.toThrow(/^--forward 127.0.0.1:2222=192.168.127.2:22\/tcp: listen EADDRINUSE/);
    expect(nat.closed).toBe(true);
    expect(forwards.closed).toBe(true);
    expect(existsSync(join(dir, 'q.sock'))).toBe(false);
  });
});
