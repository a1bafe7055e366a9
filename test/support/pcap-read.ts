/**
 * Loads the golden captures in test/fixtures/ (made by real Linux kernels,
 * see test/fixtures/kernel/capture.sh) as frames, for any test that wants
 * real-world bytes: wire parsers, TCP options, differential tests.
 */
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { readPcapFile, type PcapRecord } from '../../netstack/pcap.js';

const FIXTURES = fileURLToPath(new URL('../fixtures/', import.meta.url));

/** Every record of test/fixtures/<relativePath> (e.g. 'kernel/linux-basic.pcap'). */
export function readFixturePcap(relativePath: string): PcapRecord[] {
  const file = readPcapFile(new Uint8Array(readFileSync(FIXTURES + relativePath)));
  if (file.linktype !== 1) throw new Error(`${relativePath}: link type ${file.linktype}, expected Ethernet (1)`);
  return file.records;
}

/** The frames of the kernel capture made by test/fixtures/kernel/capture.sh. */
export function kernelFrames(): Uint8Array[] {
  return readFixturePcap('kernel/linux-basic.pcap').map((r) => r.frame);
}
