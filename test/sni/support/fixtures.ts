import { readdirSync, readFileSync } from 'node:fs';

export interface HelloFixture {
  name: string;
  bytes: Uint8Array;
  sni: string | null;
}

const dir = new URL('../../fixtures/clienthello/', import.meta.url);

/** The captured ClientHellos in test/fixtures/clienthello (one .bin + .json each). */
export function loadHelloFixtures(): HelloFixture[] {
  return readdirSync(dir)
    .filter((f) => f.endsWith('.bin'))
    .sort()
    .map((f) => {
      const name = f.slice(0, -'.bin'.length);
      const meta = JSON.parse(readFileSync(new URL(`${name}.json`, dir), 'utf8')) as { sni?: string | null };
      return { name, bytes: new Uint8Array(readFileSync(new URL(f, dir))), sni: meta.sni ?? null };
    });
}
