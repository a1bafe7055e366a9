// LISTEN_ADDR LISTEN_PORT TARGET_ADDR TARGET_PORT: the leanest relay Node
// allows: libuv TCP handles straight from process.binding('tcp_wrap') (no
// net.Socket, no streams, no events), each side reading into one static
// buffer (useUserBuffer: no allocation per read) and writing it with
// writeBuffer and a reused WriteWrap (a write that completes synchronously,
// as every small one does, binds no C++ request to it). A write libuv could
// not finish at once still points into the static buffer, so the reading
// side stops until it completes (that is also the backpressure).
// Prints "ready". One of the relays bench/relay-floor.ts measures.
const { TCP, TCPConnectWrap, constants } = process.binding('tcp_wrap');
const { WriteWrap, streamBaseState, kReadBytesOrError, kLastWriteWasAsync } = process.binding('stream_wrap');
const [la, lp, ta, tp] = process.argv.slice(2);

function pair(guest) {
  const host = new TCP(constants.SOCKET);
  const ends = [guest, host];
  let closed = false;
  const close = () => {
    if (closed) return;
    closed = true;
    for (const h of ends) { h.readStop(); h.close(); }
  };
  // One direction: reads of `src` go to `dst`.
  const pump = (src, dst) => {
    const buf = Buffer.allocUnsafe(65536);
    let req = new WriteWrap();
    const done = (status) => {
      if (status < 0) return close();
      req = new WriteWrap();
      if (!closed) src.readStart();
    };
    src.useUserBuffer(buf);
    src.onread = () => {
      const n = streamBaseState[kReadBytesOrError];
      if (n <= 0) { if (n < 0) close(); return; }
      req.handle = dst;
      req.oncomplete = done;
      const err = dst.writeBuffer(req, buf.subarray(0, n));
      if (err < 0) return close();
      if (streamBaseState[kLastWriteWasAsync]) src.readStop();
    };
  };
  guest.setNoDelay(true);
  host.setNoDelay(true);
  const creq = new TCPConnectWrap();
  creq.oncomplete = (status) => {
    if (status < 0) return close();
    pump(guest, host);
    pump(host, guest);
    guest.readStart();
    host.readStart();
  };
  const err = host.connect(creq, ta, Number(tp));
  if (err < 0) close();
}

const server = new TCP(constants.SERVER);
let err = server.bind(la, Number(lp));
if (err === 0) err = server.listen(511);
if (err !== 0) { console.error(`listen ${la}:${lp}: libuv error ${err}`); process.exit(1); }
server.onconnection = (status, guest) => { if (status === 0 && guest) pair(guest); };
console.log('ready');
