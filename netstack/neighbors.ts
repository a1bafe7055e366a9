import type { IPv4, Mac } from './addr.js';

/**
 * The guest side's IPv4 -> MAC bindings, learned from the frames the guest
 * sends (ARP and IPv4 sources). The stack never needs to ARP for the guest in
 * the common case: a guest always speaks first. Bounded: a guest that cycles
 * through source addresses evicts its oldest entries, it does not grow the map.
 */
export class NeighborTable {
  private readonly entries = new Map<IPv4, Mac>();

  constructor(private readonly capacity = 256) {}

  learn(ip: IPv4, mac: Mac): void {
    const known = this.entries.get(ip);
    if (known === mac) return;
    if (known !== undefined) this.entries.delete(ip);
    else if (this.entries.size >= this.capacity) {
      // Maps iterate in insertion order: the first key is the oldest binding.
      const oldest = this.entries.keys().next().value as IPv4;
      this.entries.delete(oldest);
    }
    this.entries.set(ip, mac);
  }

  lookup(ip: IPv4): Mac | undefined {
    return this.entries.get(ip);
  }

  clear(): void {
    this.entries.clear();
  }

  get size(): number {
    return this.entries.size;
  }
}
