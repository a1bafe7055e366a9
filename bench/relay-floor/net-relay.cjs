// LISTEN_ADDR LISTEN_PORT TARGET_ADDR TARGET_PORT: the ordinary Node TCP relay
// (net.Socket, 'data' events, write()), Nagle off both ways. Prints "ready".
// One of the relays bench/relay-floor.ts measures (see there).
const net = require('node:net');
const [la, lp, ta, tp] = process.argv.slice(2);
net.createServer({ noDelay: true }, (g) => {
  const h = net.connect({ host: ta, port: Number(tp), noDelay: true });
  g.on('data', (d) => { if (!h.write(d)) { g.pause(); h.once('drain', () => g.resume()); } });
  h.on('data', (d) => { if (!g.write(d)) { h.pause(); g.once('drain', () => h.resume()); } });
  g.on('error', () => {}); h.on('error', () => {});
  g.on('close', () => h.destroy()); h.on('close', () => g.destroy());
}).listen(Number(lp), la, () => console.log('ready'));
