import type { Subscription } from './subscription.js';

/**
 * The shapes every part shares: rows as they leave the table, batches in delivery order, the gap a
 * resume reports, and the Source port (the table as a log). The source never knows about HTTP; a
 * format never touches a socket.
 */

/** One claimed row as every format sees it: already decoded, bounded and ready to frame. */
export interface Row {
  /** The row id as decimal digits (BIGINT UNSIGNED does not fit a JS number). */
  readonly id: string;
  /** Its place in the delivery order: unique, gap-free, the same on every instance. */
  readonly seq: number;
  /** Its channel; '' in a table without a channel column (one implicit channel). */
  readonly channel: string;
  /** The content as valid UTF-8 text; `null` when the column held NULL. */
  readonly content: string | null;
  /** The full size in bytes when `content` was cut to MAX_CONTENT_BYTES, else `null`. */
  readonly truncatedFrom: number | null;
  /** `created_at` in ms since the epoch; `null` when the table has no such column. */
  readonly createdAt: number | null;
}

/**
 * Why a resume is not exact, said to the client before its rows: `limit`, REPLAY_LIMIT (or the
 * batch byte bound) left older rows out; `unknown`, the row id it resumed from has no place in
 * the delivery order (deleted, or delivered before the migration), so the replay starts at the
 * first row after it by id.
 */
export interface Gap {
  readonly reason: 'limit' | 'unknown';
  /** The row id the client resumed from. */
  readonly since: string;
}

/** What a resume from one row id gets: the rows after it in seq order, and a gap if not exact. */
export interface Replay {
  readonly rows: readonly Row[];
  readonly gap: Gap | null;
}

/** A stream that resumes: after which row id, reading what. */
export interface ResumeRequest {
  readonly since: string;
  readonly subscription: Subscription;
}

/** What the pending check of a tick sees. */
export interface Head {
  /** The last seq claimed (0 before the first claim). */
  readonly lastSeq: number;
  /** The oldest row still at flag = 0, or null when none is. */
  readonly pendingId: string | null;
  /** Its age in ms by the database's clock; null without created_at (or when none pends). */
  readonly pendingAgeMs: number | null;
}

export interface Claim {
  /** Rows claimed (0 when another instance took them first). */
  readonly rows: number;
  /** The last seq handed out after this claim. */
  readonly lastSeq: number;
  /** A bound (BATCH_SIZE, bytes) left pending rows for the next claim. */
  readonly more: boolean;
  /** The tail after the commit (as `tail(tailAfter, limit)`), or null when none was read. */
  readonly tail: Rows | null;
}

/** Claimed rows read in seq order. */
export interface Rows {
  readonly rows: Row[];
  /** A bound (rows, bytes) left rows out. */
  readonly more: boolean;
}

/** The table as a log: claim pending rows, tail them in seq order, replay them for a resume. */
export interface Source {
  /** Creates or migrates the table and its state row (see schema.ts). */
  prepare(): Promise<void>;
  /** The pending check: one statement. */
  head(): Promise<Head>;
  /**
   * Claims up to `limit` pending rows in one transaction under the counter-row lock, then reads
   * the tail after seq `tailAfter` (up to `limit` rows) in the commit's round trip.
   */
  claim(limit: number, tailAfter: number): Promise<Claim>;
  /** The first `limit` claimed rows with a seq above `after`. */
  tail(after: number, limit: number): Promise<Rows>;
  /**
   * For each resume (a row id and a subscription), the rows of its subscription after that row
   * in the delivery order up to seq `upto`: the newest `limit` of them. One statement for the
   * positions of up to 1,000 ids, then one per 100 distinct subscriptions. Answers in request
   * order.
   */
  replay(requests: readonly ResumeRequest[], upto: number, limit: number): Promise<Replay[]>;
  /** Inserts a pending row (of `channel`, when the table has channels); resolves with its id. */
  insert(content: string, channel: string | null): Promise<string>;
  /** Whether the table has a channel column (known once prepared). */
  readonly hasChannels: boolean;
  close(): Promise<void>;
}
