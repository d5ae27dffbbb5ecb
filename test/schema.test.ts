import assert from 'node:assert/strict';
import { once } from 'node:events';
import net from 'node:net';
import { after, before, test } from 'node:test';
import { startApp } from './helpers/app.js';
import { createTestDb, type TestDb } from './helpers/db.js';
import { type DbProxy, startDbProxy } from './helpers/proxy.js';
import { openStream, type StreamClient } from './helpers/stream.js';
import { createUnstartedApp, tcpSockets, waitForSockets } from './helpers/unstarted.js';

// The table at start (DESIGN.md "Schema"): created when missing, refused with a clear error when it
// cannot work, refused at once when the database turns us away, read as UTF-8 whatever its charset.

let db: TestDb;
let proxy: DbProxy;
// TCP sockets open between tests (the direct connection of `db`); see waitForSockets.
let idleSockets: number;
before(async () => {
  db = await createTestDb('schema');
  idleSockets = tcpSockets();
  proxy = await startDbProxy();
});
after(async () => {
  await waitForSockets(idleSockets);
  await proxy.close();
  await db.drop();
});

interface Column {
  name: string;
  type: string;
  nullable: string;
}

async function columnsOf(table: string): Promise<Column[]> {
  return db.query<Column[]>(
    `SELECT COLUMN_NAME AS name, COLUMN_TYPE AS type, IS_NULLABLE AS nullable
       FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?
      ORDER BY ORDINAL_POSITION`,
    [db.name, table],
  );
}

/** A port nothing listens on right now. */
async function freePort(): Promise<number> {
  const server = net.createServer().listen(0, '127.0.0.1');
  await once(server, 'listening');
  const { port } = server.address() as net.AddressInfo;
  await new Promise((resolve) => server.close(resolve));
  return port;
}

async function connectError(port: number): Promise<string | null> {
  const socket = net.connect(port, '127.0.0.1');
  try {
    await once(socket, 'connect');
    return null;
  } catch (err) {
    return String((err as { code?: unknown }).code);
  } finally {
    socket.destroy();
  }
}

async function startError(start: Promise<unknown>): Promise<Error & { code?: unknown }> {
  return start.then(
    () => assert.fail('start() resolved'),
    (err: Error) => err,
  );
}

test('a missing table is created with the columns and key of sql/schema.sql, then streamed', async () => {
  const app = await startApp(db.url, { MSG_TABLE: 'fresh_table' });
  let client: StreamClient | undefined;
  try {
    assert.deepEqual(await columnsOf('fresh_table'), [
      { name: 'id', type: 'bigint(20) unsigned', nullable: 'NO' },
      { name: 'content', type: 'mediumtext', nullable: 'NO' },
      { name: 'flag', type: 'tinyint(4)', nullable: 'NO' },
      { name: 'created_at', type: 'timestamp(3)', nullable: 'NO' },
    ]);
    const keys = await db.query<{ key: string; col: string }[]>(
      `SELECT INDEX_NAME AS \`key\`, COLUMN_NAME AS col FROM information_schema.STATISTICS
        WHERE TABLE_SCHEMA = ? AND TABLE_NAME = 'fresh_table' ORDER BY INDEX_NAME, SEQ_IN_INDEX`,
      [db.name],
    );
    assert.deepEqual(keys, [
      { key: 'flag_id', col: 'flag' },
      { key: 'flag_id', col: 'id' },
      { key: 'PRIMARY', col: 'id' },
    ]);

    client = await openStream(app.streamUrl);
    const result = await db.query<{ insertId: number }>(
      'INSERT INTO fresh_table (content) VALUES (?)',
      ['into a fresh table'],
    );
    const id = String(result.insertId);
    await client.waitForIds([id]);
    assert.deepEqual(client.messages(), [{ id, html: 'into a fresh table' }]);
  } finally {
    client?.close();
    await app.close();
  }
});

const INCOMPLETE_TABLES = [
  {
    table: 'no_flag',
    missing: 'flag',
    ddl: 'CREATE TABLE no_flag (id BIGINT UNSIGNED AUTO_INCREMENT PRIMARY KEY, content TEXT NOT NULL)',
  },
  {
    table: 'no_content',
    missing: 'content',
    ddl: `CREATE TABLE no_content (id BIGINT UNSIGNED AUTO_INCREMENT PRIMARY KEY, body TEXT NOT NULL,
      flag TINYINT NOT NULL DEFAULT 0)`,
  },
];

for (const { table, missing, ddl } of INCOMPLETE_TABLES) {
  test(`a table without ${missing} makes start() reject with ROWCAST_SCHEMA_INVALID; nothing runs`, async () => {
    await db.query(ddl);
    const before = await columnsOf(table);
    const port = await freePort();
    const queriesBefore = proxy.queries.length;
    const { app, logs } = createUnstartedApp(proxy.url(db.name), {
      MSG_TABLE: table,
      PORT: String(port),
    });
    try {
      const err = await startError(app.start());
      assert.equal(err.code, 'ROWCAST_SCHEMA_INVALID');
      assert.match(err.message, new RegExp(`no column ${missing}\\b`));
      assert.match(err.message, new RegExp(table));

      // Not retried, never polled, never listening, and the table left as it was.
      assert.equal(logs.events('db.unreachable').length, 0);
      assert.equal(logs.events('server.listening').length, 0);
      const poll = app.tailer.health();
      assert.equal(poll.state, 'starting');
      assert.equal(poll.lastOkAt, null);
      assert.equal(
        proxy.queries.slice(queriesBefore).filter((sql) => /flag = 0/.test(sql)).length,
        0,
        'no tick ran',
      );
      assert.equal(await connectError(port), 'ECONNREFUSED');
      assert.deepEqual(await columnsOf(table), before);
    } finally {
      await app.close();
    }
  });
}

test('bad credentials or an unknown database make start() reject with ROWCAST_DB_ACCESS at once', {
  timeout: 30_000,
}, async () => {
  const wrongPassword = new URL(db.url);
  wrongPassword.password = `wrong-${process.pid}`;
  const unknownDatabase = new URL(db.url);
  unknownDatabase.pathname = `/rowcast_t_missing_${process.pid}`;
  const denied = ['ER_ACCESS_DENIED_ERROR', 'ER_ACCESS_DENIED_NO_PASSWORD_ERROR'];
  const cases = [
    { what: 'wrong password', url: wrongPassword, causes: denied },
    // MariaDB checks an unknown user against one of its accounts picked by the name, so the refusal
    // depends on the name: on Debian's MariaDB 'rowcast_unknown' gets ER_ACCESS_DENIED_ERROR and
    // 'nobody' ER_ACCESS_DENIED_NO_PASSWORD_ERROR (its pick allows unix_socket).
    ...['rowcast_unknown', 'nobody', 'rowcast_nobody'].map((user) => {
      const url = new URL(db.url);
      url.username = user;
      url.password = 'secret-pw';
      return { what: `unknown user ${user}`, url, causes: denied };
    }),
    { what: 'unknown database', url: unknownDatabase, causes: ['ER_BAD_DB_ERROR'] },
  ];
  for (const { what, url, causes } of cases) {
    const { app, logs } = createUnstartedApp(url.href);
    try {
      const err = await startError(app.start());
      assert.equal(err.code, 'ROWCAST_DB_ACCESS', what);
      const cause = (err.cause as { code?: unknown }).code;
      assert.ok(causes.includes(String(cause)), `${what}: cause ${String(cause)}`);
      assert.equal(logs.events('db.unreachable').length, 0, `${what}: not retried`);
      assert.equal(app.tailer.health().state, 'starting', what);
      if (url.password !== '') assert.ok(!err.message.includes(url.password), 'no password');
    } finally {
      await app.close();
    }
  }
});

test('a latin1 content column arrives as correct UTF-8', async () => {
  await db.query(`CREATE TABLE latin (
    id BIGINT UNSIGNED AUTO_INCREMENT PRIMARY KEY,
    content TEXT NOT NULL,
    flag TINYINT NOT NULL DEFAULT 0,
    KEY flag_id (flag, id)
  ) DEFAULT CHARSET = latin1`);
  const app = await startApp(db.url, { MSG_TABLE: 'latin' });
  let client: StreamClient | undefined;
  try {
    client = await openStream(app.streamUrl);
    const texts = ['Grüße', 'Ça coûte 5 €, señor — «bien»'];
    const result = await db.query<{ insertId: number }>('INSERT INTO latin (content) VALUES ?', [
      texts.map((text) => [text]),
    ]);
    const ids = texts.map((_, i) => String(result.insertId + i));
    // Stored as latin1 (cp1252 in MariaDB): one byte per character, so the conversion is real.
    const [stored] = await db.query<{ hex: string }[]>(
      'SELECT HEX(content) AS hex FROM latin WHERE id = ?',
      [ids[0]],
    );
    assert.equal(stored?.hex, '4772FCDF65');
    await client.waitForIds(ids);
    assert.deepEqual(client.messages(), [
      { id: ids[0], html: 'Grüße' },
      { id: ids[1], html: 'Ça coûte 5 €, señor — «bien»' },
    ]);
  } finally {
    client?.close();
    await app.close();
  }
});
