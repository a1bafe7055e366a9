/**
 * Feeds chunks to an incremental reader the way a socket would: each chunk is a
 * fresh buffer that is overwritten right after the call, so a reader that kept
 * a reference instead of copying would see garbage and fail the test.
 */
export interface Pushable<R> {
  push(chunk: Uint8Array): R;
}

export function feedAll<R>(reader: Pushable<R>, chunks: readonly Uint8Array[], afterEach?: (r: R) => void): R[] {
  const results: R[] = [];
  for (const c of chunks) {
    const transient = new Uint8Array(c);
    const r = reader.push(transient);
    transient.fill(0xee);
    afterEach?.(r);
    results.push(r);
  }
  return results;
}

/** The last result, after asserting every earlier one was need-more. */
export function lastAfterNeedMore<R extends { kind: string }>(results: readonly R[]): R {
  for (let i = 0; i < results.length - 1; i++) {
    if (results[i]!.kind !== 'need-more') {
      throw new Error(`chunk ${i} of ${results.length} already gave ${JSON.stringify(results[i])}`);
    }
  }
  const last = results[results.length - 1];
  if (last === undefined) throw new Error('no chunks fed');
  return last;
}
