import { describe, expect, it } from 'vitest';
import { createLogger, NULL_LOGGER } from '../../src/log.js';

const T = new Date('2025-01-02T03:04:05.678Z');

function sink(): { lines: string[]; stream: { write(s: string): void } } {
  const lines: string[] = [];
  return { lines, stream: { write: (s: string) => lines.push(s) } };
}

describe('createLogger json', () => {
  it('writes one object per line with time, level, msg and the fields', () => {
    const s = sink();
    const log = createLogger({ level: 'debug', format: 'json', stream: s.stream, now: () => T });
    log.info('hello', { port: 22, peer: 'a b' });
    log.error('bad', { error: Object.assign(new Error('boom'), { code: 'EADDRINUSE' }) });
    expect(s.lines).toHaveLength(2);
    for (const l of s.lines) expect(l.endsWith('\n') && !l.slice(0, -1).includes('\n')).toBe(true);
    expect(JSON.parse(s.lines[0]!)).toEqual({ time: T.toISOString(), level: 'info', msg: 'hello', port: 22, peer: 'a b' });
    expect(JSON.parse(s.lines[1]!).error).toEqual({ message: 'boom', code: 'EADDRINUSE' });
  });

  it('drops lines below the level and reports enabled()', () => {
    const s = sink();
    const log = createLogger({ level: 'warn', format: 'json', stream: s.stream });
    log.debug('d');
    log.info('i');
    log.warn('w');
    log.error('e');
    expect(s.lines.map((l) => JSON.parse(l).level)).toEqual(['warn', 'error']);
    expect(log.enabled('info')).toBe(false);
    expect(log.enabled('error')).toBe(true);
  });

  it('child loggers add their fields; call fields win; reserved names cannot be overwritten', () => {
    const s = sink();
    const log = createLogger({ level: 'info', format: 'json', stream: s.stream, now: () => T });
    const child = log.child({ component: 'nat', conn: 1 }).child({ conn: 2 });
    child.info('x', { extra: true, msg: 'sneaky', level: 'error' });
    const o = JSON.parse(s.lines[0]!);
    expect(o).toMatchObject({ level: 'info', msg: 'x', component: 'nat', conn: 2, extra: true });
    expect(o['field.msg']).toBe('sneaky');
    expect(o['field.level']).toBe('error');
  });

  it('never throws on fields that JSON cannot encode', () => {
    const s = sink();
    const log = createLogger({ level: 'info', format: 'json', stream: s.stream });
    const cyclic: Record<string, unknown> = {};
    cyclic.self = cyclic;
    expect(() => log.info('cycle', { cyclic, big: 10n })).not.toThrow();
    expect(s.lines).toHaveLength(1);
  });
});

describe('createLogger pretty', () => {
  it('writes time, level, message and key=value fields on one line', () => {
    const s = sink();
    const log = createLogger({ level: 'info', format: 'pretty', stream: s.stream, now: () => T });
    log.warn('queue full', { frames: 3, peer: 'has space', list: [1, 2], skipped: undefined });
    expect(s.lines).toEqual([`${T.toISOString()} WARN  queue full frames=3 peer="has space" list=[1,2]\n`]);
  });
});

describe('NULL_LOGGER', () => {
  it('writes nothing and its children are silent too', () => {
    expect(NULL_LOGGER.enabled('error')).toBe(false);
    expect(NULL_LOGGER.child({ a: 1 })).toBe(NULL_LOGGER);
  });
});
