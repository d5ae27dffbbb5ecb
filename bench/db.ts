import mysql from 'mysql2/promise';

/** The MariaDB server the bench uses: BENCH_DATABASE_URL, or root on 127.0.0.1:3306. */
export const DB_SERVER = new URL(process.env.BENCH_DATABASE_URL ?? 'mysql://root@127.0.0.1:3306/');

/** Global counters read before and after a window; their deltas are reported per tick. */
export const STATUS_COUNTERS = [
  'Com_select',
  'Com_update',
  'Com_insert',
  'Handler_read_first',
  'Handler_read_key',
  'Handler_read_next',
  'Handler_read_rnd_next',
  'Handler_update',
  'Rows_read',
  'Questions',
] as const;
export type StatusCounter = (typeof STATUS_COUNTERS)[number];
export type Status = Record<StatusCounter, number>;

export interface BenchDb {
  readonly name: string;
  /** A DATABASE_URL for rowcast, through the given host and port (the counting proxy). */
  urlVia(host: string, port: number): string;
  /** Drops and creates the database: a fresh, empty one for each scenario. */
  recreate(): Promise<void>;
  /**
   * Inserts rows in one statement, each to its channel when `channels` is given (else the
   * column's default, ''); resolves with the first id (the others follow it).
   */
  insert(contents: readonly string[], channels?: readonly string[]): Promise<number>;
  /** The id the next insert gets (the bench is the only writer). */
  nextId(): Promise<number>;
  globalStatus(): Promise<Status>;
  /** What the claims left in the table: every row claimed once, under consecutive seqs? */
  claimState(): Promise<ClaimState>;
  /** Drops the database and closes the connection; safe to call more than once. */
  drop(): Promise<void>;
}

export interface ClaimState {
  readonly rows: number;
  /** Rows still at flag = 0. */
  readonly unclaimed: number;
  /** Rows with a seq, and how many distinct seqs they hold (the UNIQUE index makes them equal). */
  readonly with_seq: number;
  readonly distinct_seqs: number;
  /** Seqs missing between the lowest and the highest one handed out. */
  readonly seq_gaps: number;
  /** rowcast_state.next_seq for msg, which must be the highest seq + 1. */
  readonly next_seq: number | null;
}

/** A connection to DB_SERVER (no database selected). */
function connectToServer(): Promise<mysql.Connection> {
  return mysql.createConnection({
    host: DB_SERVER.hostname,
    port: Number(DB_SERVER.port || 3306),
    user: decodeURIComponent(DB_SERVER.username || 'root'),
    password: decodeURIComponent(DB_SERVER.password),
    supportBigNumbers: true,
    connectTimeout: 5_000,
  });
}

export async function openBenchDb(name: string): Promise<BenchDb> {
  const conn = await connectToServer();
  const quoted = `\`${name}\``;
  let dropped: Promise<void> | null = null;
  const query = async <T>(sql: string, values?: unknown[]) =>
    (await conn.query({ sql, values, timeout: 10_000 }))[0] as T;

  return {
    name,
    urlVia(host, port) {
      const url = new URL(DB_SERVER.href);
      url.hostname = host;
      url.port = String(port);
      url.pathname = `/${name}`;
      return url.href;
    },
    async recreate() {
      await query(`DROP DATABASE IF EXISTS ${quoted}`);
      await query(`CREATE DATABASE ${quoted} CHARACTER SET utf8mb4`);
    },
    async insert(contents, channels) {
      const result =
        channels === undefined
          ? await query<{ insertId: number }>(`INSERT INTO ${quoted}.msg (content) VALUES ?`, [
              contents.map((content) => [content]),
            ])
          : await query<{ insertId: number }>(
              `INSERT INTO ${quoted}.msg (content, channel) VALUES ?`,
              [contents.map((content, i) => [content, channels[i] ?? ''])],
            );
      return Number(result.insertId);
    },
    async nextId() {
      const rows = await query<{ next: number }[]>(
        `SELECT COALESCE(MAX(id), 0) + 1 AS next FROM ${quoted}.msg`,
      );
      return Number(rows[0]?.next);
    },
    async globalStatus() {
      const rows = await query<{ Variable_name: string; Value: string }[]>(
        `SHOW GLOBAL STATUS WHERE Variable_name IN (${STATUS_COUNTERS.map(() => '?').join(',')})`,
        [...STATUS_COUNTERS],
      );
      const status = Object.fromEntries(STATUS_COUNTERS.map((key) => [key, 0])) as Status;
      for (const row of rows) status[row.Variable_name as StatusCounter] = Number(row.Value);
      return status;
    },
    async claimState() {
      const [row] = await query<Record<string, unknown>[]>(
        `SELECT COUNT(*) AS n, COALESCE(SUM(flag = 0), 0) AS unclaimed, COUNT(seq) AS with_seq,
           COUNT(DISTINCT seq) AS distinct_seqs, COALESCE(MAX(seq) - MIN(seq) + 1, 0) AS span,
           (SELECT next_seq FROM ${quoted}.rowcast_state WHERE tbl = 'msg') AS next_seq
         FROM ${quoted}.msg`,
      );
      const distinct = Number(row?.distinct_seqs);
      return {
        rows: Number(row?.n),
        unclaimed: Number(row?.unclaimed),
        with_seq: Number(row?.with_seq),
        distinct_seqs: distinct,
        seq_gaps: Number(row?.span) - distinct,
        next_seq:
          row?.next_seq === null || row?.next_seq === undefined ? null : Number(row.next_seq),
      };
    },
    drop() {
      dropped ??= (async () => {
        try {
          await query(`DROP DATABASE IF EXISTS ${quoted}`);
        } finally {
          await conn.end().catch(() => conn.destroy());
        }
      })();
      return dropped;
    },
  };
}

/** Drops a bench database over a connection of its own (used when the main one may be stuck). */
export async function dropDatabase(name: string): Promise<void> {
  const conn = await connectToServer();
  try {
    await conn.query(`DROP DATABASE IF EXISTS \`${name}\``);
  } finally {
    conn.destroy();
  }
}
