// LISTEN_ADDR LISTEN_PORT TARGET_ADDR TARGET_PORT [raw]: Moat's host-socket
// pattern as a relay. net.Socket both sides, each read into one static buffer
// (the onread option, as Moat reads host sockets), each chunk copied and
// written with write(); with "raw", the copy is instead written with the
// socket's libuv handle directly (writeBuffer, reused WriteWrap) whenever
// net.Socket holds nothing queued (the write half of the node-raw relay on
// net.Socket's reads): what the write path alone costs. Prints "ready".
// One of the relays bench/relay-floor.ts measures.
const net = require('node:net');
const { WriteWrap, streamBaseState, kLastWriteWasAsync } = process.binding('stream_wrap');
const [la, lp, ta, tp, mode] = process.argv.slice(2);
const raw = mode === 'raw';

function rawWriter(sock) {
  let req = new WriteWrap();
  let pending = 0;
  const done = (status) => {
    pending--;
    if (status < 0) sock.destroy(new Error(`write: libuv error ${status}`));
  };
  return (chunk) => {
    const h = sock._handle;
    if (pending > 0 || h == null || sock.writableLength > 0 || sock.connecting) return sock.write(chunk);
    req.handle = h;
    req.oncomplete = done;
    req.buffer = chunk; // kept alive while libuv may still point into it
    const err = h.writeBuffer(req, chunk);
    if (err < 0) { sock.destroy(new Error(`write: libuv error ${err}`)); return false; }
    if (streamBaseState[kLastWriteWasAsync]) { pending++; req = new WriteWrap(); }
    return true;
  };
}

net.createServer({ noDelay: true }, (g) => {
  let h;
  const wg = raw ? rawWriter(g) : (c) => g.write(c);
  const gbuf = Buffer.allocUnsafe(65536);
  h = net.connect({ host: ta, port: Number(tp), noDelay: true, onread: { buffer: Buffer.allocUnsafe(65536), callback: (n, b) => { wg(Buffer.from(b.subarray(0, n))); } } });
  const wh = raw ? rawWriter(h) : (c) => h.write(c);
  // The guest side came from the server: onread is not available there, so read it the same way by hand.
  g.pause();
  g._handle.useUserBuffer(gbuf);
  g.on('data', () => {}); // never called with a user buffer
  g.removeAllListeners('data');
  g[Object.getOwnPropertySymbols(g).find((s) => s.description === 'kBuffer')] = gbuf;
  g[Object.getOwnPropertySymbols(g).find((s) => s.description === 'kBufferCb')] = (n, b) => { wh(Buffer.from(b.subarray(0, n))); };
  g.resume();
  g.on('error', () => {}); h.on('error', () => {});
  g.on('close', () => h.destroy()); h.on('close', () => g.destroy());
}).listen(Number(lp), la, () => console.log('ready'));
