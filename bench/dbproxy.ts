import net from 'node:net';

/** Statements the server sent through the proxy, by kind, and bytes the database answered. */
export interface StatementCounts {
  select: number;
  update: number;
  insert: number;
  other: number;
  /** Bytes from the database to rowcast (result sets). */
  bytesIn: number;
}

export interface DbProxy {
  readonly port: number;
  /** A copy of the counters since the proxy started. */
  counts(): StatementCounts;
  close(): Promise<void>;
}

const COM_QUERY = 0x03;

/**
 * A TCP proxy between rowcast and MariaDB that counts the statements rowcast sends. SHOW GLOBAL
 * STATUS counts every client of the database (other people's tests included); this counts only
 * ours, exactly. It reads the MySQL wire format just far enough: a packet is a 3-byte length and a
 * sequence number; a command starts a new sequence (number 0) and COM_QUERY carries the SQL text.
 */
export async function startDbProxy(target: { host: string; port: number }): Promise<DbProxy> {
  const counts: StatementCounts = { select: 0, update: 0, insert: 0, other: 0, bytesIn: 0 };
  const sockets = new Set<net.Socket>();
  const server = net.createServer((client) => {
    const upstream = net.connect(target);
    sockets.add(client).add(upstream);
    const parse = createPacketReader((sql) => {
      const verb = /^\s*(\w+)/.exec(sql)?.[1]?.toUpperCase();
      if (verb === 'SELECT') counts.select++;
      else if (verb === 'UPDATE') counts.update++;
      else if (verb === 'INSERT') counts.insert++;
      else counts.other++;
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
 * the packet headers and the first 16 payload bytes of a command are kept.
 */
function createPacketReader(onQuery: (sqlStart: string) => void): (chunk: Buffer) => void {
  let header = Buffer.alloc(0);
  let remaining = 0; // payload bytes of the current packet still to come
  let prefix: Buffer | null = null; // first payload bytes of a command packet
  const PREFIX = 16;
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
