import { setTimeout as sleep } from 'node:timers/promises';
import mysql, { type Pool, type PoolConnection, type ResultSetHeader } from 'mysql2/promise';
import type { Config } from '../config.js';
import type { Subscription } from '../core/subscription.js';
import type { Claim, Head, Replay, Row, Rows, Source } from '../core/types.js';
import { NoChannelColumnError } from '../errors.js';
import type { Logger } from '../log.js';
import { type Position, splitReplay, startOf } from './replay.js';
import { prepareTable } from './schema.js';
import {
  advanceCounterSql,
  BATCH_MAX_BYTES,
  claimSql,
  headSql,
  insertSql,
  lockCounterSql,
  pickSql,
  positionsSql,
  type RowRange,
  rowsManySql,
  rowsSql,
  seqRange,
  type TableSql,
} from './sql.js';

// A query on a connection that stopped answering (a network black hole) would otherwise wait for
// the kernel's TCP timeout, minutes; the tick must fail and back off instead.
export const QUERY_TIMEOUT_MS = 10_000;
const CONNECT_TIMEOUT_MS = 5_000;
// Replay reads per statement: a statement of a few hundred KB at most, each read on its index.
const REPLAY_READS = 100;
// Row ids placed per statement: about 250 bytes of SQL each.
const POSITIONS_PER_STATEMENT = 1000;

/**
 * The streamed table as a log (delivery contract 1-3 in docs/delivery.md). `onError` hears of
 * every statement that fails, whoever ran it (for rowcast_db_errors_total).
 */
export function createTableSource(
  config: Config,
  logger: Logger,
  onError: () => void = () => {},
): Source {
  const log = logger.child({ mod: 'source' });
  const connection = {
    host: config.db.host,
    port: config.db.port,
    user: config.db.user,
    password: config.db.password,
    database: config.db.database,
    charset: 'utf8mb4',
    connectTimeout: CONNECT_TIMEOUT_MS,
    enableKeepAlive: true,
    supportBigNumbers: true,
    bigNumberStrings: true,
  };
  // The tick's statements, replays and publishes may overlap.
  const pool = mysql.createPool({ ...connection, connectionLimit: 3, maxIdle: 3 });
  // Claims only (one at a time: the tick's), on a connection that takes several statements in
  // one round trip: a claim is 3 round trips instead of 7. Everything sent on it is built from
  // the table name and numbers, never from a request.
  const claims = mysql.createPool({
    ...connection,
    connectionLimit: 1,
    maxIdle: 1,
    multipleStatements: true,
  });
  const table = config.msgTable;
  let shape: TableSql = {
    table,
    maxContentBytes: config.maxContentBytes,
    hasCreatedAt: false,
    channelColumn: null,
  };

  /** Runs `work` on a pooled connection; one that failed is never reused (it may be half-dead). */
  async function withConnection<T>(
    work: (conn: PoolConnection) => Promise<T>,
    from: Pool = pool,
  ): Promise<T> {
    const conn = await from.getConnection().catch(failed);
    try {
      const result = await work(conn);
      conn.release();
      return result;
    } catch (err) {
      conn.destroy();
      return failed(err);
    }
  }
  async function query<T>(conn: PoolConnection, sql: string, values: unknown[] = []) {
    const [result] = await conn.query({ sql, values, timeout: QUERY_TIMEOUT_MS });
    return result as T;
  }
  const run = <T>(sql: string, values: unknown[] = []) =>
    withConnection((conn) => query<T>(conn, sql, values));
  function failed(err: unknown): never {
    onError();
    throw err;
  }

  /** Claimed rows in seq order (see rowsSql); odd rows are logged when first tailed (`warn`). */
  async function readRows(range: RowRange, warn: boolean): Promise<Rows> {
    return rowsOf(await run<FoundRow[]>(rowsSql(shape, range)), range, warn);
  }

  /**
   * Many reads at once (the replays of many subscriptions after a restart): REPLAY_READS of them
   * per statement, so a round costs a few statements however many subscriptions resume.
   */
  async function readMany(ranges: readonly RowRange[]): Promise<Rows[]> {
    const found: FoundRow[][] = ranges.map(() => []);
    for (let start = 0; start < ranges.length; start += REPLAY_READS) {
      const chunk = ranges.slice(start, start + REPLAY_READS);
      const rows = await run<(FoundRow & { part: unknown })[]>(rowsManySql(shape, chunk));
      for (const row of rows) found[start + Number(row.part)]?.push(row);
    }
    return found.map((part, i) => {
      part.sort((a, b) => Number(a.seq) - Number(b.seq));
      return rowsOf(part, ranges[i] as RowRange, false);
    });
  }

  /** A read's rows in seq order, bounded as rowsSql asked (one row beyond the limit). */
  function rowsOf(found: FoundRow[], range: RowRange, warn: boolean): Rows {
    const overLimit = found.length > range.limit;
    if (overLimit) range.newest ? found.shift() : found.pop();
    const upto = Math.max(0, ...found.map((raw) => Number(raw.upto)));
    const rows = found.map(toRow);
    if (warn) rows.forEach(warnIfOdd);
    return { rows, more: overLimit || upto >= BATCH_MAX_BYTES };
  }

  function toRow(raw: FoundRow): Row {
    return {
      id: String(raw.id),
      seq: Number(raw.seq),
      channel: raw.channel === null ? '' : String(raw.channel),
      content: raw.content === null ? null : decode(raw.content),
      truncatedFrom: Number(raw.bytes) > shape.maxContentBytes ? Number(raw.bytes) : null,
      createdAt: raw.created_ms === null ? null : Number(raw.created_ms),
    };
  }

  function warnIfOdd(row: Row): void {
    if (row.content === null) {
      log.warn({ event: 'row.null', id: row.id }, 'row has NULL content; sent as empty');
    } else if (row.truncatedFrom !== null) {
      log.warn(
        {
          event: 'row.truncated',
          id: row.id,
          bytes: row.truncatedFrom,
          limit: shape.maxContentBytes,
        },
        'row content over MAX_CONTENT_BYTES; sent cut',
      );
    }
  }

  /**
   * One short transaction at READ COMMITTED, in three round trips: the counter-row lock and the
   * pick; the claim and the counter's advance; the commit with the tail after `tailAfter` (which
   * then sees this claim's rows and every earlier one). Nothing is read before the lock (a
   * snapshot taken earlier would be stale), and the pick is a plain read (a locking one would take
   * gap locks that hold up INSERTs). The UPDATE touches only the picked ids still at flag = 0; if
   * any was claimed meanwhile (by something that bypassed the counter), the claim is undone.
   */
  function claim(limit: number, tailAfter: number): Promise<Claim> {
    const range: RowRange = { after: tailAfter, upto: null, limit, newest: false };
    const commitAndTail = async (conn: PoolConnection): Promise<Rows> => {
      const [, found] = await query<[unknown, FoundRow[]]>(
        conn,
        `COMMIT;\n${rowsSql(shape, range)}`,
      );
      return rowsOf(found, range, true);
    };
    return withConnection(async (conn) => {
      // On a failure the connection is destroyed (withConnection): the server rolls back.
      const [, , locked, picked] = await query<
        [unknown, unknown, { next_seq: unknown }[], { id: unknown; upto: unknown }[]]
      >(
        conn,
        [
          'SET TRANSACTION ISOLATION LEVEL READ COMMITTED',
          'START TRANSACTION',
          lockCounterSql(table),
          pickSql(shape, limit),
        ].join(';\n'),
      );
      const counter = locked[0];
      if (counter === undefined) throw new Error(`no counter row for ${table} in rowcast_state`);
      const nextSeq = Number(counter.next_seq);
      const ids = picked.slice(0, limit).map((row) => String(row.id));
      if (ids.length === 0) {
        // Taken by another instance: its rows are in the tail.
        return { rows: 0, lastSeq: nextSeq - 1, more: false, tail: await commitAndTail(conn) };
      }
      const seqs = seqRange(nextSeq, ids.length);
      const [result] = await query<[ResultSetHeader, ResultSetHeader]>(
        conn,
        `${claimSql(table, ids, seqs.first)};\n${advanceCounterSql(table, seqs.next)}`,
      );
      if (result.affectedRows !== ids.length) {
        await query(conn, 'ROLLBACK');
        log.warn(
          { event: 'claim.conflict', picked: ids.length, changed: result.affectedRows },
          'rows changed under the claim (flag set outside rowcast?); rolled back, retrying next tick',
        );
        return { rows: 0, lastSeq: nextSeq - 1, more: false, tail: null };
      }
      const tail = await commitAndTail(conn);
      const bytes = Number(picked[ids.length - 1]?.upto);
      return {
        rows: ids.length,
        lastSeq: seqs.next - 1,
        more: picked.length > limit || bytes >= BATCH_MAX_BYTES,
        tail,
      };
    }, claims);
  }

  return {
    async prepare() {
      const found = await prepareTable(run, table, config.channelColumn, config.db.database, log);
      shape = {
        ...shape,
        hasCreatedAt: found.hasCreatedAt,
        channelColumn: found.hasChannel ? config.channelColumn : null,
      };
    },

    async head(): Promise<Head> {
      const [row] = await run<
        { next_seq: unknown; pending_id: unknown; pending_age_ms: unknown }[]
      >(headSql(shape));
      if (row === undefined || row.next_seq === null) {
        throw new Error(`no counter row for ${table} in rowcast_state (was it deleted?)`);
      }
      return {
        lastSeq: Number(row.next_seq) - 1,
        pendingId: row.pending_id === null ? null : String(row.pending_id),
        pendingAgeMs: row.pending_age_ms === null ? null : Number(row.pending_age_ms),
      };
    },

    claim,

    tail(after, limit) {
      return readRows({ after, upto: null, limit, newest: false }, true);
    },

    async replay(requests, upto, limit) {
      if (requests.length === 0) return [];
      const sinces = [...new Set(requests.map((request) => request.since))];
      const found: { id: unknown; seq: unknown; next_seq: unknown }[] = [];
      // In chunks: a round after a restart may hold as many distinct ids as streams, and one
      // statement must stay far below max_allowed_packet (16 MiB by default).
      for (let start = 0; start < sinces.length; start += POSITIONS_PER_STATEMENT) {
        const chunk = sinces.slice(start, start + POSITIONS_PER_STATEMENT);
        found.push(...(await run<typeof found>(positionsSql(table, chunk))));
      }
      const positions = new Map<string, Position>();
      for (const raw of found) {
        const since = String(raw.id);
        positions.set(since, {
          since,
          seq: raw.seq === null ? null : Number(raw.seq),
          nextSeq: raw.next_seq === null ? null : Number(raw.next_seq),
        });
      }
      // One read per subscription, from the start furthest back among its resumes.
      const bySubscription = new Map<
        string,
        { subscription: Subscription; positions: Position[] }
      >();
      for (const { since, subscription } of requests) {
        const group = bySubscription.get(subscription.key) ?? { subscription, positions: [] };
        group.positions.push(positions.get(since) as Position);
        bySubscription.set(subscription.key, group);
      }
      const groups = [...bySubscription.values()];
      const froms = groups.map((group) =>
        Math.min(...group.positions.map((p) => startOf(p, upto).after)),
      );
      // Only the subscriptions with something to replay are read.
      const wanted = groups.flatMap((group, i) =>
        (froms[i] as number) >= upto
          ? []
          : [
              {
                after: froms[i] as number,
                upto,
                limit,
                newest: true,
                subscription: group.subscription,
              },
            ],
      );
      const reads = wanted.length === 0 ? [] : await readMany(wanted);
      const answers = new Map<string, Map<string, Replay>>();
      let next = 0;
      groups.forEach((group, i) => {
        const read =
          (froms[i] as number) >= upto ? { rows: [], more: false } : (reads[next++] as Rows);
        answers.set(group.subscription.key, splitReplay(group.positions, upto, read));
      });
      return requests.map(
        ({ since, subscription }) => answers.get(subscription.key)?.get(since) as Replay,
      );
    },

    async insert(content, channel) {
      const column = shape.channelColumn;
      if (column === null && channel !== null) {
        throw new NoChannelColumnError(table, config.channelColumn);
      }
      const values = column === null ? [content] : [content, channel ?? ''];
      const result = await run<ResultSetHeader>(insertSql(table, column), values);
      return String(result.insertId);
    },

    get hasChannels() {
      return shape.channelColumn !== null;
    },

    async close() {
      // A connection to a host that stopped answering would hold pool.end() forever.
      await Promise.race([
        Promise.all([pool.end(), claims.end()]),
        sleep(CONNECT_TIMEOUT_MS, undefined, { ref: false }),
      ]);
    },
  };
}

interface FoundRow {
  readonly id: unknown;
  readonly seq: unknown;
  readonly channel: unknown;
  /** `created_at` in ms since the epoch, as DECIMAL text, or null. */
  readonly created_ms: unknown;
  readonly content: Buffer | null;
  /** Size of the whole content in UTF-8 bytes (0 for NULL). */
  readonly bytes: unknown;
  /** Running total of the (cut) content sizes up to this row. */
  readonly upto: unknown;
}

/** UTF-8 bytes to text; a sequence cut at the end is dropped, other invalid bytes become U+FFFD. */
function decode(bytes: Buffer): string {
  return new TextDecoder('utf-8').decode(bytes, { stream: true });
}
