/**
 * Hands out gateway-side ports from a fixed range, each at most once until
 * released. Bounded by the range; allocation walks on from the last port
 * given so that a just-released port is not reused at once (a late segment or
 * datagram of the old flow must not land in the new one).
 */
export class PortAllocator {
  private readonly inUse = new Set<number>();
  private next: number;

  constructor(
    readonly first: number,
    readonly last: number,
  ) {
    if (!(first >= 1 && last <= 65535 && first <= last)) throw new RangeError(`bad port range ${first}-${last}`);
    this.next = first;
  }

  get size(): number {
    return this.inUse.size;
  }

  /** A free port, or undefined when every port of the range is taken. */
  allocate(): number | undefined {
    const span = this.last - this.first + 1;
    if (this.inUse.size >= span) return undefined;
    for (let i = 0; i < span; i++) {
      const port = this.next;
      this.next = port === this.last ? this.first : port + 1;
      if (!this.inUse.has(port)) {
        this.inUse.add(port);
        return port;
      }
    }
    return undefined;
  }

  release(port: number): void {
    this.inUse.delete(port);
  }
}
