import type { Replay, Row } from '../core/types.js';

/** Where a row id a client resumes from stands in the delivery order (see positionsSql). */
export interface Position {
  readonly since: string;
  /** Its seq, or null when it has none. */
  readonly seq: number | null;
  /** The smallest seq of a row with a larger id, or null. */
  readonly nextSeq: number | null;
}

/**
 * The seq a resume from `position` continues after: its own seq when it has one; else just before
 * the first row after it by id (a row deleted, or delivered before the migration); else `upto`
 * (nothing after it yet). `exact` is false in the last two cases.
 */
export function startOf(position: Position, upto: number): { after: number; exact: boolean } {
  if (position.seq !== null) return { after: position.seq, exact: true };
  if (position.nextSeq !== null)
    return { after: Math.min(position.nextSeq - 1, upto), exact: false };
  return { after: upto, exact: false };
}

/**
 * Splits one read (the newest rows after the smallest start, `more` when a bound cut it) into
 * each resume's answer: the rows after its own start. A resume was cut by the bound when rows
 * before the first one read may be its own.
 */
export function splitReplay(
  positions: readonly Position[],
  upto: number,
  read: { rows: readonly Row[]; more: boolean },
): Map<string, Replay> {
  const replays = new Map<string, Replay>();
  const first = read.rows[0]?.seq;
  for (const position of positions) {
    const { after, exact } = startOf(position, upto);
    const rows = read.rows.filter((row) => row.seq > after);
    const cut = read.more && first !== undefined && after < first - 1;
    const reason = !exact ? 'unknown' : cut ? 'limit' : null;
    replays.set(position.since, {
      rows,
      gap: reason === null ? null : { reason, since: position.since },
    });
  }
  return replays;
}
