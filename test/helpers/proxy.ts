import { once } from 'node:events';
import net from 'node:net';
import { databaseUrlVia, SERVER_URL } from './db.js';

/**
 * A TCP proxy in front of MariaDB, for cutting the database away from a running server for real.
 * It also reads the client's MySQL packets to log every SQL statement (COM_QUERY) it forwards, so
 * tests can count the queries rowcast sends.
 */
export interface DbProxy {
  /** The DATABASE_URL that goes through this proxy to `database`. */
  url(database: string): string;
  /** Every statement forwarded, in order. */
  readonly queries: string[];
  /** Drops every open connection and refuses new ones until `restore`. */
  cut(): void;
  restore(): void;
  close(): Promise<void>;
}

const COM_QUERY = 0x03;

/** The test MariaDB server. */
const DB_SERVER = { host: SERVER_URL.hostname, port: Number(SERVER_URL.port || 3306) };

/** Runs `body` with a proxy to the test MariaDB, closed afterwards whatever happens. */
export async function withDbProxy(body: (proxy: DbProxy) => Promise<void>): Promise<void> {
  const proxy = await startDbProxy();
  try {
    await body(proxy);
  } finally {
    await proxy.close();
  }
}

export async function startDbProxy(
  target: { host: string; port: number } = DB_SERVER,
): Promise<DbProxy> {
  const sockets = new Set<net.Socket>();
  const queries: string[] = [];
  let down = false;

  // No Nagle: a response of several writes would wait for the client's delayed ACK (40 ms).
  const server = net.createServer({ noDelay: true }, (client) => {
    if (down) {
      client.resetAndDestroy();
      return;
    }
    const upstream = net.connect({ ...target, noDelay: true });
    sockets.add(client);
    sockets.add(upstream);
    let pending: Buffer = Buffer.alloc(0);
    client.on('data', (chunk: Buffer) => {
      pending = readPackets(Buffer.concat([pending, chunk]), queries);
    });
    client.pipe(upstream);
    upstream.pipe(client);
    closeTogether(client, upstream, sockets);
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const { port } = server.address() as net.AddressInfo;

  const cut = () => {
    down = true;
    // resetAndDestroy() on a socket whose FIN is already queued fails with EINVAL in Node 20 and
    // leaks the handle (the process then spins at exit): those are destroyed plainly.
    for (const socket of sockets) {
      if (socket.writableEnded) socket.destroy();
      else socket.resetAndDestroy();
    }
    sockets.clear();
  };
  return {
    url: (database) => databaseUrlVia(port, database),
    queries,
    cut,
    restore() {
      down = false;
    },
    async close() {
      cut();
      await new Promise((resolve) => server.close(resolve));
    },
  };
}

/** Logs complete COM_QUERY packets (sequence 0 starts a command) and returns the unread rest. */
function readPackets(buffer: Buffer, queries: string[]): Buffer {
  let offset = 0;
  while (buffer.length - offset >= 4) {
    const length = buffer.readUIntLE(offset, 3);
    if (buffer.length - offset < 4 + length) break;
    const sequence = buffer[offset + 3];
    if (sequence === 0 && buffer[offset + 4] === COM_QUERY) {
      queries.push(buffer.toString('utf8', offset + 5, offset + 4 + length));
    }
    offset += 4 + length;
  }
  return buffer.subarray(offset);
}

/** Ends both sides of a relayed connection together, when either ends, and forgets them. */
export function closeTogether(client: net.Socket, upstream: net.Socket, sockets: Set<net.Socket>) {
  const drop = () => {
    client.destroy();
    upstream.destroy();
    sockets.delete(client);
    sockets.delete(upstream);
  };
  client.on('error', drop).on('close', drop);
  upstream.on('error', drop).on('close', drop);
}
