import assert from 'node:assert/strict';

/** One row as a stream or the table shows it: its id and its place in the delivery order. */
export interface Placed {
  readonly id: string;
  readonly seq: number;
}

/** A row of the streamed table with its flag and seq (null until claimed). */
export interface TableRow {
  readonly id: string;
  readonly flag: number;
  readonly seq: number | null;
}

const MSG_HEAD = /<div class="msg" data-id="(\d+)" data-seq="(\d+)"(?: data-channel="[^"]*")?>/g;

/** The id and seq of every `<div class="msg">` fragment of an HTML stream body, in order. */
export function placedOf(text: string): Placed[] {
  return [...text.matchAll(MSG_HEAD)].map((m) => ({ id: m[1] as string, seq: Number(m[2]) }));
}

/** Every row of `table` with its flag and seq, in seq order (rows without a seq first, by id). */
export async function tableRows(
  db: { query<T>(sql: string, values?: unknown[]): Promise<T> },
  table = 'msg',
): Promise<TableRow[]> {
  const rows = await db.query<{ id: unknown; flag: unknown; seq: unknown }[]>(
    `SELECT id, flag, seq FROM \`${table}\` ORDER BY seq, id`,
  );
  return rows.map((row) => ({
    id: String(row.id),
    flag: Number(row.flag),
    seq: row.seq === null ? null : Number(row.seq),
  }));
}

/**
 * The claimed rows among `rows` in seq order, after asserting that their seqs are exactly
 * `first`, `first + 1`, … (unique and gap-free) and that each of them has flag = 1.
 */
export function assertGapFree(rows: readonly TableRow[], first = 1): Placed[] {
  const claimed = rows.filter((row) => row.seq !== null) as (TableRow & { seq: number })[];
  assert.deepEqual(
    claimed.map((row) => row.seq),
    claimed.map((_, i) => first + i),
    'seqs unique and gap-free',
  );
  for (const row of claimed) assert.equal(row.flag, 1, `row ${row.id} with a seq has flag = 1`);
  return claimed.map(({ id, seq }) => ({ id, seq }));
}
