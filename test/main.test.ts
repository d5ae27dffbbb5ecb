import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { createTestDb, type TestDb } from './helpers/db.js';
import { type MainProcess, spawnMain } from './helpers/instance.js';
import { openStream } from './helpers/stream.js';
import { getHealth } from './helpers/unstarted.js';
import { waitUntil } from './helpers/wait.js';

// The rowcast process as an operator runs it: `node dist/src/main.js`, configured by env and .env.

let db: TestDb;
before(async () => {
  db = await createTestDb('main');
});
after(async () => {
  await db.drop();
});

interface Run extends MainProcess {
  /** Parsed JSON log lines so far: every stdout line must be one. */
  logs(): Record<string, unknown>[];
}

function run(env: Record<string, string>, cwd = tmpdir()): Run {
  const proc = spawnMain(env, cwd);
  return Object.assign(proc, {
    logs: () =>
      proc.stdout
        .split('\n')
        .filter((line) => line !== '')
        .map((line) => JSON.parse(line) as Record<string, unknown>),
  });
}

async function started(proc: Run): Promise<URL> {
  const entry = await waitUntil(
    () => proc.logs().find((e) => e.event === 'server.listening'),
    'the listening log line',
  );
  return new URL(entry.url as string);
}

test('bad configuration exits 1 with one line naming the variable', async () => {
  const cases: [Record<string, string>, string][] = [
    [{ PORT: 'abc' }, 'PORT="abc"'],
    [{ POLL_INTERVAL_MS: '0' }, 'POLL_INTERVAL_MS="0"'],
    [{ DATABASE_URL: 'mysql//broken' }, 'DATABASE_URL="mysql//broken"'],
    [{ MSG_TABLE: 'msg`; drop table x' }, 'MSG_TABLE="msg`; drop table x"'],
  ];
  for (const [env, named] of cases) {
    const proc = run(env);
    assert.equal(await proc.exited, 1, JSON.stringify(env));
    const lines = proc.stderr.split('\n').filter((line) => line !== '');
    assert.equal(lines.length, 1, proc.stderr);
    assert.ok(lines[0]?.startsWith('rowcast: invalid configuration: '), lines[0]);
    assert.ok(lines[0]?.includes(named), lines[0]);
    assert.equal(proc.stdout, '');
  }
});

for (const signal of ['SIGTERM', 'SIGINT'] as const) {
  test(`${signal} ends every stream cleanly and exits 0`, async (t) => {
    const proc = run({ DATABASE_URL: db.url, PORT: '0', POLL_INTERVAL_MS: '50' });
    t.after(() => proc.child.kill('SIGKILL'));
    const url = await started(proc);
    assert.equal(url.pathname, '/stream');
    const clients = await Promise.all([openStream(url), openStream(url)]);
    const [id] = await db.insert(`before ${signal}`);
    for (const client of clients) await client.waitForIds([id as string]);
    proc.child.kill(signal);
    for (const client of clients) {
      await client.ended; // a clean end of the chunked body, not a reset
      assert.match(client.text, /<!-- rowcast: server shutting down -->\n<\/body><\/html>\n$/);
    }
    assert.equal(await proc.exited, 0);
    const events = proc.logs().map((e) => e.event);
    assert.ok(events.includes('shutdown.start'));
    assert.equal(events.at(-1), 'shutdown.done');
    assert.equal(proc.stderr, '');
  });
}

test('every stdout line is a pino JSON event with a stable event field', async (t) => {
  const proc = run({ DATABASE_URL: db.url, PORT: '0', POLL_INTERVAL_MS: '50' });
  t.after(() => proc.child.kill('SIGKILL'));
  const url = await started(proc);
  const client = await openStream(url);
  // A batch logs the streams last counted (with WORKERS > 1, as the workers reported them):
  // once /healthz counts this one, so does the batch.
  await waitUntil(async () => (await getHealth(url)).body.streams === 1, 'the stream counted');
  const [id] = await db.insert('logged');
  await client.waitForIds([id as string]);
  await waitUntil(() => proc.logs().some((e) => e.event === 'poll.batch'), 'a poll.batch line');
  proc.child.kill('SIGTERM');
  await proc.exited;
  for (const entry of proc.logs()) {
    assert.equal(typeof entry.event, 'string', JSON.stringify(entry));
    assert.equal(typeof entry.time, 'string');
    assert.equal(typeof entry.level, 'string');
    assert.equal(typeof entry.msg, 'string');
  }
  const batch = proc.logs().find((e) => e.event === 'poll.batch');
  assert.equal(batch?.rows, 1);
  assert.equal(batch?.streams, 1);
  // The batch names its rows by id and by their place in the delivery order.
  const [row] = await db.query<{ seq: unknown }[]>('SELECT seq FROM msg WHERE id = ?', [id]);
  assert.deepEqual(
    [batch?.firstId, batch?.lastId, batch?.firstSeq, batch?.lastSeq],
    [id, id, Number(row?.seq), Number(row?.seq)],
  );
});

test('settings come from .env, and the environment wins over it', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'rowcast-env-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  await writeFile(
    join(dir, '.env'),
    `DATABASE_URL=${db.url}\nMSG_TABLE=from_dotenv\nPORT=1\nPOLL_INTERVAL_MS=50\n`,
  );
  const proc = run({ PORT: '0' }, dir);
  t.after(() => proc.child.kill('SIGKILL'));
  await started(proc);
  const listening = proc.logs().find((e) => e.event === 'server.listening');
  assert.equal(listening?.table, 'from_dotenv');
  assert.notEqual(new URL(listening?.url as string).port, '1');
  proc.child.kill('SIGTERM');
  assert.equal(await proc.exited, 0);
});

test('a table without the flag column stops the start with a clear error, exit 1', async (t) => {
  await db.query('CREATE TABLE legacy (id INT PRIMARY KEY, content TEXT)');
  const proc = run({ DATABASE_URL: db.url, PORT: '0', MSG_TABLE: 'legacy' });
  t.after(() => proc.child.kill('SIGKILL'));
  assert.equal(await proc.exited, 1);
  const failure = proc.logs().find((e) => e.event === 'start.failed');
  assert.equal(failure?.code, 'ROWCAST_SCHEMA_INVALID');
  assert.match(String(failure?.msg), /no column flag/);
});
