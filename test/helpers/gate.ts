import { once } from 'node:events';
import net from 'node:net';
import { databaseUrlVia, SERVER_URL } from './db.js';
import { closeTogether } from './proxy.js';

/**
 * A TCP proxy in front of MariaDB that can hold back one kind of statement: while a hold is
 * armed, the first statement (COM_QUERY) matching its pattern, and everything its connection
 * sends after it, wait in the proxy until `release`. Other connections go on as usual. For
 * making "meanwhile" happen for real: a replay read that is still running while live rows come.
 */
export interface GateProxy {
  /** The DATABASE_URL that goes through this proxy to `database`. */
  url(database: string): string;
  /** Holds the next statement matching `pattern`; `held` resolves with its text once it is. */
  hold(pattern: RegExp): Hold;
  close(): Promise<void>;
}

export interface Hold {
  readonly held: Promise<string>;
  /** Lets the held statement (and what followed it on its connection) through. */
  release(): void;
}

const COM_QUERY = 0x03;
const DB_SERVER = { host: SERVER_URL.hostname, port: Number(SERVER_URL.port || 3306) };

interface Armed {
  readonly pattern: RegExp;
  readonly resolve: (sql: string) => void;
  /** The connection it held, once it did. */
  holder: Relay | null;
}

interface Relay {
  /** Packets waiting for a release, in order. */
  readonly queue: Buffer[];
  held: boolean;
  readonly upstream: net.Socket;
}

export async function startGateProxy(): Promise<GateProxy> {
  const sockets = new Set<net.Socket>();
  let armed: Armed | null = null;

  const server = net.createServer((client) => {
    const upstream = net.connect(DB_SERVER);
    sockets.add(client);
    sockets.add(upstream);
    const relay: Relay = { queue: [], held: false, upstream };
    let pending: Buffer = Buffer.alloc(0);
    client.on('data', (chunk: Buffer) => {
      pending = pending.length === 0 ? chunk : Buffer.concat([pending, chunk]);
      let offset = 0;
      while (pending.length - offset >= 4) {
        const length = pending.readUIntLE(offset, 3);
        if (pending.length - offset < 4 + length) break;
        const packet = pending.subarray(offset, offset + 4 + length);
        offset += 4 + length;
        if (!relay.held && armed !== null && armed.holder === null && isQuery(packet)) {
          const sql = packet.toString('utf8', 5);
          if (armed.pattern.test(sql)) {
            armed.holder = relay;
            relay.held = true;
            armed.resolve(sql);
          }
        }
        if (relay.held) relay.queue.push(Buffer.from(packet));
        else upstream.write(packet);
      }
      pending = Buffer.from(pending.subarray(offset));
    });
    upstream.pipe(client);
    closeTogether(client, upstream, sockets);
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const { port } = server.address() as net.AddressInfo;

  return {
    url: (database) => databaseUrlVia(port, database),
    hold(pattern) {
      let resolve: (sql: string) => void = () => {};
      const held = new Promise<string>((r) => {
        resolve = r;
      });
      const hold: Armed = { pattern, resolve, holder: null };
      armed = hold;
      return {
        held,
        release() {
          if (armed === hold) armed = null;
          const relay = hold.holder;
          if (relay === null) return;
          relay.held = false;
          for (const packet of relay.queue.splice(0)) relay.upstream.write(packet);
        },
      };
    },
    async close() {
      for (const socket of sockets) socket.destroy();
      sockets.clear();
      await new Promise((resolve) => server.close(resolve));
    },
  };
}

/** A COM_QUERY packet (sequence 0 starts a command). */
function isQuery(packet: Buffer): boolean {
  return packet[3] === 0 && packet[4] === COM_QUERY;
}
