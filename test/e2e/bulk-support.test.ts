/**
 * bulk-support's reading of `ss`: what counts as in flight. No namespaces,
 * no root: a recorded line from this machine's kernel.
 */
import { describe, expect, it } from 'vitest';
import { inFlightBytes, parseSs } from './bulk-support.js';

describe('bulk-support: ss', () => {
  it('in flight is Send-Q less notsent, not bytes_sent - bytes_acked (bytes_sent counts retransmissions: all acked here, 262,087 B apart)', () => {
    // A 30 MB send over a veth whose link went down for 300 ms (Linux 6.x): everything acknowledged.
    const [s] = parseSs(
      'ESTAB 0      0      10.251.77.1:56370 10.251.77.2:5001\n' +
        '\t bbr wscale:10,10 rto:208 rtt:4.238/6.603 mss:1448 pmtu:1500 rcvmss:536 advmss:1448 cwnd:1758 ssthresh:146 bytes_sent:30262088 bytes_acked:30000001 segs_out:20904 segs_in:153 data_segs_out:20902 lastsnd:1556 lastack:1524 snd_wnd:9934848\n',
    );
    expect(s!.bytesSent! - s!.bytesAcked!).toBe(262_087);
    expect(inFlightBytes(s!)).toBe(0);
    // A blocked writer: bytes wait unsent, one segment is out.
    const [b] = parseSs('ESTAB 0      70000  192.168.127.2:4000 192.168.127.254:80\n\t cubic unacked:1 bytes_sent:5000 bytes_acked:3553 notsent:68553\n');
    expect(inFlightBytes(b!)).toBe(1447);
  });
});
