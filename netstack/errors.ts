/**
 * Why a frame was dropped. Reasons are `layer:what` strings ("ipv4:bad-checksum",
 * "tcp:truncated") so that /stats can count them without a central enum that
 * every module would have to edit. Use lowercase, hyphenated words.
 */
export type DropReason = `${string}:${string}`;

/**
 * A parse failure. Parsers return `Repr | ParseError` instead of throwing:
 * malformed input is normal traffic for a network stack, not an exception.
 * Instances are interned per reason, so rejecting a packet allocates nothing.
 */
export class ParseError {
  private static readonly interned = new Map<string, ParseError>();

  private constructor(readonly reason: DropReason) {}

  static of(reason: DropReason): ParseError {
    let e = ParseError.interned.get(reason);
    if (e === undefined) {
      e = new ParseError(reason);
      ParseError.interned.set(reason, e);
    }
    return e;
  }

  toString(): string {
    return `ParseError(${this.reason})`;
  }
}

export function isParseError(x: unknown): x is ParseError {
  return x instanceof ParseError;
}
