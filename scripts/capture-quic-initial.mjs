#!/usr/bin/env node
/**
 * Captures a real QUIC client's first flight (its Initial datagrams, as
 * sent) into test/fixtures/quic/<name>.json for the sni/ QUIC reader tests.
 * Loopback only: a UDP listener on 127.0.0.1 that never answers, so the
 * client sends its Initial flight (and retransmissions, which are dropped
 * here: the fixture is the datagrams up to and including the one that
 * completes the hello, in arrival order).
 *
 *   npm run build && node scripts/capture-quic-initial.mjs chromium   # www.example.org, X25519MLKEM768: 2 packets
 *   node scripts/capture-quic-initial.mjs gtlsclient                   # ngtcp2 (Debian ngtcp2-client), v1, SNI localhost
 *   (ngtcp2 0.12 in Debian 12 knows only the v2 draft, not RFC 9369's 0x6b3343cf: v2 is covered by the RFC vector)
 */
import { spawn } from 'node:child_process';
import { createSocket } from 'node:dgram';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { QuicInitialReader } from '../dist/sni/quic-initial.js';
import { nodeQuicCrypto } from '../dist/src/egress/quic-crypto.js';

const which = process.argv[2] ?? 'chromium';
const out = new URL(`../test/fixtures/quic/${which}.json`, import.meta.url);
const sock = createSocket('udp4');
await new Promise((r) => sock.bind(0, '127.0.0.1', r));
const port = sock.address().port;

let sni;
let argv;
const profile = mkdtempSync(join(tmpdir(), 'moat-quic-capture-'));
if (which === 'chromium') {
  sni = 'www.example.org';
  argv = ['chromium', ['--no-sandbox', '--headless=new', `--user-data-dir=${profile}`, '--enable-quic', `--origin-to-force-quic-on=${sni}:443`, `--host-resolver-rules=MAP ${sni} 127.0.0.1:${port}`, '--disable-gpu', `https://${sni}/`]];
} else if (which === 'gtlsclient') {
  sni = 'localhost';
  argv = ['gtlsclient', ['-q', '--timeout=3s', 'localhost', String(port), `https://localhost:${port}/`]];
} else {
  console.error(`unknown client ${which}: chromium, gtlsclient`);
  process.exit(2);
}

const reader = new QuicInitialReader(nodeQuicCrypto);
const datagrams = [];
let result = { kind: 'need-more' };
const child = spawn(argv[0], argv[1], { stdio: 'ignore' });
const done = new Promise((resolve) => {
  sock.on('message', (msg, rinfo) => {
    if (result.kind !== 'need-more' || rinfo.address !== '127.0.0.1') return;
    datagrams.push(msg.toString('hex'));
    result = reader.push(msg);
    if (result.kind !== 'need-more') resolve();
  });
  setTimeout(resolve, 15_000);
});
await done;
const exited = new Promise((r) => child.once('exit', r));
child.kill('SIGKILL');
await exited;
sock.close();
rmSync(profile, { recursive: true, force: true });
if (result.kind !== 'found') {
  console.error(`no hello read from ${which}:`, result, `${datagrams.length} datagrams`);
  process.exit(1);
}
const meta = { client: which, command: `${argv[0]} ${argv[1].join(' ').replaceAll(String(port), 'PORT').replaceAll(profile, 'PROFILE')}`, sni: result.sni, alpn: result.alpn, version: result.version, packets: reader.packetsSeen, datagrams };
if (result.sni !== sni) console.error(`warning: expected SNI ${sni}, read ${result.sni}`);
writeFileSync(out, `${JSON.stringify(meta, null, 1)}\n`);
console.log(`${which}: ${datagrams.length} datagrams, ${reader.packetsSeen} Initial packets, sni ${result.sni}, ${result.version}, alpn ${result.alpn.join(',')}`);
