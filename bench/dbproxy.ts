import net from 'node:net';

/**
 * Statements the server sent through the proxy, by what they do in rowcast v2's tick (see
 * src/source/sql.ts), and bytes the database answered.
 */
export interface StatementCounts {
  /** Pending checks (`SELECT (SELECT next_seq FROM rowcast_state …) AS next_seq, …`): one per tick. */
  head: number;
  /** Claim transactions (their `START TRANSACTION`). */
  claims: number;
  /**
   * Claims that took rows (their `UPDATE … SET flag = 1, seq = …`). The others found every pending
   * row claimed already, by another instance that got the counter lock first.
   */
  claimUpdates: number;
  /**
   * Every round trip of the claim transactions but the last, counted as one statement each (a
   * round trip may carry several): SET TRANSACTION; START TRANSACTION; the counter lock
   * (`SELECT next_seq … FOR UPDATE`); the pick, then `UPDATE msg SET flag = 1, seq = …`;
   * `UPDATE rowcast_state`. The COMMIT goes with the tail (counted there); a ROLLBACK alone.
   */
  claimStatements: number;
  /** Tails: `SELECT b.id, b.seq, …` in ascending seq order. */
  tail: number;
  /** Replays for resuming streams: the newest rows (descending order) and row positions. */
  replay: number;
  insert: number;
  /** Anything else (the schema check at start, …). */
  other: number;
  /** Every statement. */
  total: number;
  /** Bytes from the database to rowcast (result sets). */
  bytesIn: number;
}

export type StatementKind = Exclude<
  keyof StatementCounts,
  'claims' | 'claimUpdates' | 'total' | 'bytesIn'
>;

export interface DbProxy {
  readonly port: number;
  /** A copy of the counters since the proxy started. */
  counts(): StatementCounts;
  close(): Promise<void>;
}

const COM_QUERY = 0x03;
// SQL bytes kept of each command: enough for every pattern below (a tail's `ORDER BY p.seq DESC`
// sits within its first ~260 bytes); a claim's long `CASE id WHEN …` is never kept whole.
const SQL_PREFIX_BYTES = 512;

/** What a statement of rowcast's is, from its first bytes (the SQL of src/source/sql.ts). */
export function classify(sql: string): StatementKind {
  const text = sql.trimStart();
  if (/^SELECT \(SELECT next_seq FROM /i.test(text)) return 'head';
  // A claim's COMMIT rides on the round trip of the tail that follows it.
  if (/^COMMIT;\s*SELECT b\.id, b\.seq\b/i.test(text)) return 'tail';
  if (/^(SET TRANSACTION|START TRANSACTION|BEGIN|COMMIT|ROLLBACK)\b/i.test(text)) {
    return 'claimStatements';
  }
  if (/^SELECT next_seq FROM \S+ WHERE .* FOR UPDATE/is.test(text)) return 'claimStatements';
  if (/^SELECT p\.id, p\.upto FROM/i.test(text)) return 'claimStatements';
  if (/^UPDATE\b/i.test(text)) return 'claimStatements';
  if (/^SELECT b\.id, b\.seq\b/i.test(text)) {
    return /ORDER BY p\.seq DESC/i.test(text) ? 'replay' : 'tail';
  }
  if (/^SELECT \d+ AS id, p\.seq\b/i.test(text)) return 'replay';
  if (/^SELECT \d+ AS part, r\.\*/i.test(text)) return 'replay';
  if (/^INSERT INTO\b/i.test(text)) return 'insert';
  return 'other';
}

/**
 * A TCP proxy between rowcast and MariaDB that counts the statements rowcast sends. SHOW GLOBAL
 * STATUS counts every client of the database (other people's tests included); this counts only
 * ours, exactly. It reads the MySQL wire format just far enough: a packet is a 3-byte length and a
 * sequence number; a command starts a new sequence (number 0) and COM_QUERY carries the SQL text.
 * One proxy per rowcast instance, so each instance's statements are counted apart.
 */
/** Counts with nothing counted yet. */
export function zeroCounts(): StatementCounts {
  return {
    head: 0,
    claims: 0,
    claimUpdates: 0,
    claimStatements: 0,
    tail: 0,
    replay: 0,
    insert: 0,
    other: 0,
    total: 0,
    bytesIn: 0,
  };
}

export async function startDbProxy(target: { host: string; port: number }): Promise<DbProxy> {
  const counts = zeroCounts();
  const sockets = new Set<net.Socket>();
  // No Nagle on either side: a response of several packets (a multi-statement round trip) would
  // otherwise wait for the client's delayed ACK (40 ms) between two forwarded writes.
  const server = net.createServer({ noDelay: true }, (client) => {
    const upstream = net.connect({ ...target, noDelay: true });
    sockets.add(client).add(upstream);
    const parse = createPacketReader((sql) => {
      counts.total++;
      counts[classify(sql)]++;
      // A claim opens with SET TRANSACTION …; START TRANSACTION; … in one round trip.
      if (/^\s*(SET TRANSACTION[^;]*;\s*)?START TRANSACTION\b/i.test(sql)) counts.claims++;
      else if (/^\s*UPDATE \S+ SET flag = 1\b/i.test(sql)) counts.claimUpdates++;
    });
    client.on('data', (chunk: Buffer) => {
      parse(chunk);
      upstream.write(chunk);
    });
    upstream.on('data', (chunk: Buffer) => {
      counts.bytesIn += chunk.length;
      client.write(chunk);
    });
    const end = () => {
      client.destroy();
      upstream.destroy();
      sockets.delete(client);
      sockets.delete(upstream);
    };
    for (const socket of [client, upstream]) {
      socket.on('error', end);
      socket.on('close', end);
    }
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve());
  });
  return {
    port: (server.address() as net.AddressInfo).port,
    counts: () => ({ ...counts }),
    close() {
      for (const socket of sockets) socket.destroy();
      return new Promise((resolve) => server.close(() => resolve()));
    },
  };
}

/**
 * Feeds client→server bytes; calls `onQuery` with the first bytes of each COM_QUERY's SQL. Only
 * the packet headers and the first SQL_PREFIX_BYTES payload bytes of a command are kept.
 */
function createPacketReader(onQuery: (sqlStart: string) => void): (chunk: Buffer) => void {
  let header = Buffer.alloc(0);
  let remaining = 0; // payload bytes of the current packet still to come
  let prefix: Buffer | null = null; // first payload bytes of a command packet
  const PREFIX = SQL_PREFIX_BYTES + 1; // the command byte, then the SQL
  let prefixNeeded = 0;

  return (chunk) => {
    let at = 0;
    // Each pass consumes at least one byte or ends the loop.
    while (at < chunk.length) {
      if (remaining === 0) {
        const take = Math.min(4 - header.length, chunk.length - at);
        header = Buffer.concat([header, chunk.subarray(at, at + take)]);
        at += take;
        if (header.length < 4) return;
        remaining = header.readUIntLE(0, 3);
        const sequence = header[3];
        header = Buffer.alloc(0);
        prefixNeeded = sequence === 0 ? Math.min(PREFIX, remaining) : 0;
        prefix = prefixNeeded > 0 ? Buffer.alloc(0) : null;
        continue;
      }
      const take = Math.min(remaining, chunk.length - at);
      if (prefix !== null && prefix.length < prefixNeeded) {
        const part = chunk.subarray(at, at + Math.min(take, prefixNeeded - prefix.length));
        prefix = Buffer.concat([prefix, part]);
        if (prefix.length === prefixNeeded) {
          if (prefix[0] === COM_QUERY) onQuery(prefix.toString('latin1', 1));
          prefix = null;
        }
      }
      remaining -= take;
      at += take;
    }
  };
}
