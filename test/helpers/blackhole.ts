import { once } from 'node:events';
import net from 'node:net';
import { databaseUrlVia } from './db.js';

/**
 * A TCP relay in front of MariaDB that can turn into a black hole: the database host that still
 * accepts connections but never answers (a hung server, a firewall dropping packets). Unlike
 * `DbProxy.cut()` nothing is refused or reset, so only timeouts can notice.
 */
export interface BlackHole {
  /** The DATABASE_URL that goes through this relay to `database`. */
  url(database: string): string;
  /**
   * From now on every byte is swallowed, both ways, on the open connections (which stay open) and
   * on new ones (which are accepted and never answered).
   */
  swallow(): void;
  /** New connections reach the database again; connections swallowed so far stay silent. */
  restore(): void;
  /** Connections accepted while swallowing. */
  readonly swallowedConnects: number;
  close(): Promise<void>;
}

export async function startBlackHole(target: { host: string; port: number }): Promise<BlackHole> {
  const sockets = new Set<net.Socket>();
  const silenced = new Set<net.Socket>();
  let swallowing = false;
  let swallowedConnects = 0;

  const track = (socket: net.Socket) => {
    sockets.add(socket);
    socket.on('error', () => socket.destroy());
    socket.on('close', () => sockets.delete(socket));
  };

  const server = net.createServer((client) => {
    track(client);
    if (swallowing) {
      swallowedConnects++;
      silenced.add(client);
      client.resume(); // read and drop whatever the client says
      return;
    }
    const upstream = net.connect(target);
    track(upstream);
    client.on('data', (chunk: Buffer) => {
      if (!silenced.has(client)) upstream.write(chunk);
    });
    upstream.on('data', (chunk: Buffer) => {
      if (!silenced.has(client)) client.write(chunk);
    });
    client.on('close', () => upstream.destroy());
    upstream.on('close', () => {
      // An upstream gone while swallowing must not be seen: the client side stays open and silent.
      if (!silenced.has(client)) client.destroy();
    });
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const { port } = server.address() as net.AddressInfo;

  return {
    url: (database) => databaseUrlVia(port, database),
    swallow() {
      swallowing = true;
      for (const socket of sockets) silenced.add(socket);
    },
    restore() {
      swallowing = false;
    },
    get swallowedConnects() {
      return swallowedConnects;
    },
    async close() {
      for (const socket of sockets) socket.destroy();
      await new Promise((resolve) => server.close(resolve));
    },
  };
}
