import assert from 'node:assert/strict';
import { once } from 'node:events';
import { readFileSync } from 'node:fs';
import net from 'node:net';
import { after, before, test } from 'node:test';
import mysql from 'mysql2/promise';
import { startApp } from './helpers/app.js';
import { connectionOptions, createTestDb, type TestDb } from './helpers/db.js';
import { spawnMain } from './helpers/instance.js';
import { type DbProxy, startDbProxy } from './helpers/proxy.js';
import { tableRows } from './helpers/seq.js';
import { openStream, type StreamClient } from './helpers/stream.js';
import { createUnstartedApp, tcpSockets, waitForSockets } from './helpers/unstarted.js';
import { waitUntil } from './helpers/wait.js';

// The table at start: created when missing, migrated to the delivery order (seq, docs/delivery.md
// 1) when it is rowcast v1's or a PHP loop's, refused with the statements to run when the user may
// not migrate it, refused with a clear error when it cannot work, refused at once when the database
// turns us away, read as UTF-8 whatever its charset.

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

async function columnsOf(table: string, of: TestDb = db): Promise<Column[]> {
  return of.query<Column[]>(
    `SELECT COLUMN_NAME AS name, COLUMN_TYPE AS type, IS_NULLABLE AS nullable
       FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?
      ORDER BY ORDINAL_POSITION`,
    [of.name, table],
  );
}

/** Every index of `table`: name, column (one entry per column, in order) and uniqueness. */
async function keysOf(table: string): Promise<{ key: string; col: string; unique: boolean }[]> {
  const keys = await db.query<{ key: string; col: string; nonUnique: unknown }[]>(
    `SELECT INDEX_NAME AS \`key\`, COLUMN_NAME AS col, NON_UNIQUE AS nonUnique
       FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?
      ORDER BY INDEX_NAME, SEQ_IN_INDEX`,
    [db.name, table],
  );
  return keys.map(({ key, col, nonUnique }) => ({ key, col, unique: Number(nonUnique) === 0 }));
}

async function tablesNamed(table: string): Promise<number> {
  const found = await db.query<unknown[]>(
    'SELECT 1 FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?',
    [db.name, table],
  );
  return found.length;
}

/** The counter rows of rowcast_state, by table name. */
async function counters(): Promise<{ tbl: string; next_seq: number }[]> {
  const rows = await db.query<{ tbl: string; next_seq: unknown }[]>(
    'SELECT tbl, next_seq FROM rowcast_state ORDER BY tbl',
  );
  return rows.map((row) => ({ tbl: row.tbl, next_seq: Number(row.next_seq) }));
}

/** id, flag and seq of every row of `table`, rows without a seq first, then in seq order. */
const rowsOf = (table: string) => tableRows(db, table);

async function insertInto(table: string, ...contents: string[]): Promise<string[]> {
  const result = await db.query<{ insertId: number }>(
    `INSERT INTO \`${table}\` (content) VALUES ?`,
    [contents.map((content) => [content])],
  );
  return contents.map((_, i) => String(result.insertId + i));
}

/** The id and seq of each `<div class="msg">` of an HTML stream body. */
function seqsOf(text: string): { id: string; seq: number }[] {
  return [...text.matchAll(/<div class="msg" data-id="(\d+)" data-seq="(\d+)">/g)].map((m) => ({
    id: m[1] as string,
    seq: Number(m[2]),
  }));
}

function sqlFile(name: string): string {
  return readFileSync(new URL(`../../sql/${name}`, import.meta.url), 'utf8');
}

/** Runs one of the files in sql/ against `database`, as `mariadb database < sql/name` would. */
async function runSqlFile(database: string, name: string): Promise<void> {
  const conn = await mysql.createConnection({
    ...connectionOptions(),
    database,
    multipleStatements: true,
  });
  try {
    await conn.query(sqlFile(name));
  } finally {
    await conn.end();
  }
}

/** Statements as an operator compares them: comments, line breaks and identifier quotes aside. */
function statementsOf(sql: string): string[] {
  return sql
    .replace(/--[^\n]*/g, '')
    .split(';')
    .map((statement) => statement.replace(/`/g, '').replace(/\s+/g, ' ').trim())
    .filter((statement) => statement !== '');
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

test('a missing table is created as sql/schema.sql makes it, with its counter row, then streamed', async () => {
  const app = await startApp(db.url, { MSG_TABLE: 'fresh_table' });
  let client: StreamClient | undefined;
  try {
    assert.deepEqual(await columnsOf('fresh_table'), [
      { name: 'id', type: 'bigint(20) unsigned', nullable: 'NO' },
      { name: 'content', type: 'mediumtext', nullable: 'NO' },
      { name: 'flag', type: 'tinyint(4)', nullable: 'NO' },
      { name: 'created_at', type: 'timestamp(3)', nullable: 'NO' },
      { name: 'seq', type: 'bigint(20) unsigned', nullable: 'YES' },
      { name: 'channel', type: 'varchar(191)', nullable: 'NO' },
    ]);
    assert.deepEqual(await keysOf('fresh_table'), [
      { key: 'channel_seq', col: 'channel', unique: false },
      { key: 'channel_seq', col: 'seq', unique: false },
      { key: 'flag_id', col: 'flag', unique: false },
      { key: 'flag_id', col: 'id', unique: false },
      { key: 'PRIMARY', col: 'id', unique: true },
      { key: 'seq', col: 'seq', unique: true },
    ]);
    assert.deepEqual(await counters(), [{ tbl: 'fresh_table', next_seq: 1 }]);
    const [created] = app.logs.events('schema.created');
    assert.equal(created?.table, 'fresh_table');
    assert.equal(app.logs.events('schema.migrated').length, 0);

    // The very statements of sql/schema.sql, run by hand, make the same table.
    await runSqlFile(db.name, 'schema.sql');
    assert.deepEqual(await columnsOf('msg'), await columnsOf('fresh_table'));
    assert.deepEqual(await keysOf('msg'), await keysOf('fresh_table'));
    assert.deepEqual(await counters(), [
      { tbl: 'fresh_table', next_seq: 1 },
      { tbl: 'msg', next_seq: 1 },
    ]);

    client = await openStream(app.streamUrl);
    const result = await db.query<{ insertId: number }>(
      'INSERT INTO fresh_table (content) VALUES (?)',
      ['into a fresh table'],
    );
    const id = String(result.insertId);
    await client.waitForIds([id]);
    assert.deepEqual(client.messages(), [{ id, html: 'into a fresh table' }]);
    assert.deepEqual(seqsOf(client.text), [{ id, seq: 1 }]);
    assert.deepEqual(await rowsOf('fresh_table'), [{ id, flag: 1, seq: 1 }]);
    assert.deepEqual((await counters())[0], { tbl: 'fresh_table', next_seq: 2 });
  } finally {
    client?.close();
    await app.close();
  }
});

test('a PHP-loop table (id, content, flag) is migrated at start; only its pending rows are sent', async () => {
  // The classic table of a PHP polling loop: rows it delivered have flag = 1, no seq, no created_at.
  await db.query(`CREATE TABLE php_loop (
    id INT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
    content TEXT NOT NULL,
    flag TINYINT NOT NULL DEFAULT 0)`);
  const contents = ['old 1', 'old 2', 'pending 1', 'old 3', 'pending 2'];
  const result = await db.query<{ insertId: number }>(
    'INSERT INTO php_loop (content, flag) VALUES ?',
    [contents.map((content) => [content, content.startsWith('old') ? 1 : 0])],
  );
  const [old1, old2, pending1, old3, pending2] = contents.map((_, i) =>
    String(result.insertId + i),
  ) as [string, string, string, string, string];
  const hadState = (await tablesNamed('rowcast_state')) > 0;
  const queriesBefore = proxy.queries.length;

  let app = await startApp(proxy.url(db.name), { MSG_TABLE: 'php_loop' });
  let client: StreamClient | undefined;
  try {
    const migrated = app.logs.events('schema.migrated');
    assert.equal(migrated.length, 1);
    assert.equal(migrated[0]?.table, 'php_loop');
    const statements = migrated[0]?.statements as string[];
    assert.equal(
      statements[0],
      'ALTER TABLE `php_loop` ADD COLUMN seq BIGINT UNSIGNED NULL DEFAULT NULL, ' +
        'ADD UNIQUE KEY seq (seq),\n  ALGORITHM = INPLACE, LOCK = NONE',
    );
    if (!hadState)
      assert.match(statements[1] ?? '', /^CREATE TABLE IF NOT EXISTS rowcast_state \(/);
    assert.equal(
      statements.at(-1),
      "INSERT IGNORE INTO rowcast_state (tbl, next_seq) SELECT 'php_loop', COALESCE(MAX(seq), 0) + 1 FROM `php_loop`",
    );
    assert.equal(statements.length, hadState ? 2 : 3);
    // What the log says ran is what went to the database.
    const sent = proxy.queries.slice(queriesBefore);
    for (const statement of statements) assert.ok(sent.includes(statement), statement);

    assert.deepEqual((await columnsOf('php_loop')).at(-1), {
      name: 'seq',
      type: 'bigint(20) unsigned',
      nullable: 'YES',
    });
    assert.deepEqual(
      (await keysOf('php_loop')).filter((key) => key.col === 'seq'),
      [{ key: 'seq', col: 'seq', unique: true }],
    );

    // docs/delivery.md 1: the pending rows are claimed in id order; the delivered ones keep seq NULL.
    const claimed = [
      { id: pending1, flag: 1, seq: 1 },
      { id: pending2, flag: 1, seq: 2 },
    ];
    const unsent = [old1, old2, old3].map((id) => ({ id, flag: 1, seq: null }));
    await waitUntil(
      async () => (await rowsOf('php_loop')).every((row) => row.flag === 1),
      'the pending rows claimed',
    );
    assert.deepEqual(await rowsOf('php_loop'), [...unsent, ...claimed]);

    // A client asking for everything (since=0, a row that never was) gets the claimed rows only,
    // after a gap frame, then the live ones.
    client = await openStream(new URL('/stream?since=0', app.url));
    await client.waitForIds([pending1, pending2]);
    const [later] = (await insertInto('php_loop', 'after the migration')) as [string];
    await client.waitForIds([later]);
    assert.deepEqual(client.gaps(), [{ since: '0', reason: 'unknown' }]);
    assert.deepEqual(client.messages(), [
      { id: pending1, html: 'pending 1' },
      { id: pending2, html: 'pending 2' },
      { id: later, html: 'after the migration' },
    ]);
  } finally {
    client?.close();
    await app.close();
  }

  // A second start finds nothing to do: no DDL, no counter row, the rows as they were.
  const before = await rowsOf('php_loop');
  const queriesAgain = proxy.queries.length;
  app = await startApp(proxy.url(db.name), { MSG_TABLE: 'php_loop' });
  try {
    assert.equal(app.logs.events('schema.migrated').length, 0);
    assert.equal(app.logs.events('schema.created').length, 0);
    const ddl = proxy.queries
      .slice(queriesAgain)
      .filter((sql) => /^\s*(ALTER|CREATE|INSERT)\b/i.test(sql));
    assert.deepEqual(ddl, []);
    assert.deepEqual(await rowsOf('php_loop'), before);
  } finally {
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

/**
 * Runs `body` with a DATABASE_URL for `of` of a user of its own that may only SELECT, INSERT and
 * UPDATE there (enough to stream, not to ALTER or CREATE); the user is dropped afterwards.
 */
async function withoutDdl(of: TestDb, body: (url: string) => Promise<void>): Promise<void> {
  const user = `rowcast_noddl_${process.pid}`;
  const password = `pw-${process.pid}`;
  await of.query(`DROP USER IF EXISTS ?@'%'`, [user]);
  await of.query(`CREATE USER ?@'%' IDENTIFIED BY ?`, [user, password]);
  try {
    await of.query(`GRANT SELECT, INSERT, UPDATE ON \`${of.name}\`.* TO ?@'%'`, [user]);
    const url = new URL(of.url);
    url.username = user;
    url.password = password;
    await body(url.href);
  } finally {
    await of.query(`DROP USER IF EXISTS ?@'%'`, [user]);
  }
}

/** `node dist/src/main.js` with `env` (as an operator runs it); its exit and all it wrote. */
async function runMain(env: Record<string, string>): Promise<{ code: number | null; out: string }> {
  const proc = spawnMain(env);
  const timer = setTimeout(() => proc.child.kill('SIGKILL'), 30_000);
  try {
    const code = await proc.exited;
    return { code, out: proc.stdout + proc.stderr };
  } finally {
    clearTimeout(timer);
  }
}

test('without the ALTER privilege a v1 table stops the start, naming the statements of sql/migrate.sql', {
  timeout: 60_000,
}, async () => {
  // A database of its own: the state table does not exist yet, as on a v1 installation.
  const v1 = await createTestDb('schema_v1');
  try {
    // rowcast v1's table: no seq; one row it delivered, one pending.
    await v1.query(`CREATE TABLE msg (
      id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
      content MEDIUMTEXT NOT NULL,
      flag TINYINT NOT NULL DEFAULT 0,
      created_at TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
      KEY flag_id (flag, id)
    ) DEFAULT CHARSET = utf8mb4`);
    await v1.query(`INSERT INTO msg (content, flag) VALUES ('delivered by v1', 1), ('pending', 0)`);
    const v1Columns = await columnsOf('msg', v1);
    const expected = statementsOf(sqlFile('migrate.sql'));
    assert.equal(expected.length, 3, 'ALTER, the state table, the counter row');

    await withoutDdl(v1, async (url) => {
      // In process: start() rejects, and nothing listens or changes.
      const port = await freePort();
      const { app, logs } = createUnstartedApp(url, { PORT: String(port) });
      try {
        const err = await startError(app.start());
        assert.equal(err.code, 'ROWCAST_MIGRATION_REQUIRED');
        assert.equal((err.cause as { code?: unknown }).code, 'ER_TABLEACCESS_DENIED_ERROR');
        assert.deepEqual(statementsOf(err.message.slice(err.message.indexOf('\n'))), expected);
        assert.equal(logs.events('db.unreachable').length, 0, 'not retried');
        assert.equal(logs.events('server.listening').length, 0);
        assert.equal(await connectError(port), 'ECONNREFUSED');
      } finally {
        await app.close();
      }

      // As an operator runs it: exit 1, and the output says what to run.
      const { code, out } = await runMain({ DATABASE_URL: url, PORT: '0' });
      assert.equal(code, 1, out);
      assert.ok(
        out.includes(
          'ALTER TABLE `msg` ADD COLUMN seq BIGINT UNSIGNED NULL DEFAULT NULL, ADD UNIQUE KEY seq (seq)',
        ),
        out,
      );
      const failed = out
        .split('\n')
        .filter((line) => line.startsWith('{'))
        .map((line) => JSON.parse(line) as Record<string, unknown>)
        .find((entry) => entry.event === 'start.failed');
      assert.equal(failed?.code, 'ROWCAST_MIGRATION_REQUIRED');
      const msg = String(failed?.msg);
      assert.deepEqual(statementsOf(msg.slice(msg.indexOf('\n'))), expected);
      assert.deepEqual(await columnsOf('msg', v1), v1Columns, 'the table is left as it was');

      // Once an operator ran sql/migrate.sql, the same user starts and streams the pending row.
      await runSqlFile(v1.name, 'migrate.sql');
      const migrated = await startApp(url);
      const client = await openStream(new URL('/stream?since=0', migrated.url));
      try {
        assert.equal(migrated.logs.events('schema.migrated').length, 0);
        await client.waitFor((text) => text.includes('>pending</div>'), 'the pending row');
        assert.deepEqual(
          client.messages().map((m) => m.html),
          ['pending'],
        );
      } finally {
        client.close();
        await migrated.close();
      }
    });
  } finally {
    await v1.drop();
  }
});

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
