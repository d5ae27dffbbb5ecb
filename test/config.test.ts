import assert from 'node:assert/strict';
import { availableParallelism } from 'node:os';
import { test } from 'node:test';
import { loadConfig, redactPassword } from '../src/config.js';
import { ConfigError } from '../src/errors.js';

function problemsOf(env: Record<string, string>): readonly string[] {
  try {
    loadConfig(env);
  } catch (err) {
    assert.ok(err instanceof ConfigError);
    assert.equal(err.code, 'ROWCAST_CONFIG_INVALID');
    return err.problems;
  }
  assert.fail(`expected ${JSON.stringify(env)} to be rejected`);
}

test('defaults match the configuration table of the README', () => {
  const config = loadConfig({});
  assert.deepEqual(config.db, {
    host: '127.0.0.1',
    port: 3306,
    user: 'root',
    password: '',
    database: 'test',
  });
  assert.equal(config.msgTable, 'msg');
  assert.equal(config.host, '127.0.0.1');
  assert.equal(config.port, 8080);
  assert.equal(config.pollIntervalMs, 1000);
  assert.equal(config.batchSize, 500);
  assert.equal(config.padBytes, 0);
  assert.equal(config.heartbeatMs, 15_000);
  assert.equal(config.maxStreams, 10_000);
  assert.equal(config.maxBufferedBytes, 1_048_576);
  assert.equal(config.maxContentBytes, 1_048_576);
  assert.equal(config.logLevel, 'info');
  assert.equal(config.workers, Math.min(availableParallelism(), 64));
  assert.equal(config.replayLimit, 1000);
  assert.equal(config.publishToken, null);
  assert.equal(config.allowOrigin, null);
  assert.ok(Object.isFrozen(config));
});

test('every variable is read, and empty values count as unset', () => {
  const config = loadConfig({
    DATABASE_URL: 'mariadb://app:s%40cret@db.example:3307/chat',
    MSG_TABLE: 'notices',
    HOST: '0.0.0.0',
    PORT: '9000',
    POLL_INTERVAL_MS: '250',
    BATCH_SIZE: '100',
    PAD_BYTES: '',
    HEARTBEAT_MS: '20000',
    MAX_STREAMS: '50',
    MAX_BUFFERED_BYTES: '65536',
    MAX_CONTENT_BYTES: '4096',
    LOG_LEVEL: 'debug',
    WORKERS: '3',
    REPLAY_LIMIT: '50',
    PUBLISH_TOKEN: 'a-long-enough-secret',
    ALLOW_ORIGIN: 'https://a.example, http://localhost:3000',
  });
  assert.deepEqual(config.db, {
    host: 'db.example',
    port: 3307,
    user: 'app',
    password: 's@cret',
    database: 'chat',
  });
  assert.equal(config.msgTable, 'notices');
  assert.equal(config.host, '0.0.0.0');
  assert.equal(config.port, 9000);
  assert.equal(config.pollIntervalMs, 250);
  assert.equal(config.batchSize, 100);
  assert.equal(config.padBytes, 0);
  assert.equal(config.heartbeatMs, 20_000);
  assert.equal(config.maxStreams, 50);
  assert.equal(config.maxBufferedBytes, 65_536);
  assert.equal(config.maxContentBytes, 4096);
  assert.equal(config.logLevel, 'debug');
  assert.equal(config.workers, 3);
  assert.equal(config.replayLimit, 50);
  assert.equal(config.publishToken, 'a-long-enough-secret');
  assert.deepEqual(config.allowOrigin, ['https://a.example', 'http://localhost:3000']);
  assert.equal(loadConfig({ ALLOW_ORIGIN: '*' }).allowOrigin, '*');
});

test('each bad value is named with what was expected', () => {
  const cases: [Record<string, string>, RegExp][] = [
    [{ PORT: 'abc' }, /^PORT="abc": expected an integer from 0 to 65535$/],
    [{ PORT: '70000' }, /^PORT="70000"/],
    [{ POLL_INTERVAL_MS: '0' }, /^POLL_INTERVAL_MS="0": expected an integer from 10/],
    [{ BATCH_SIZE: '-5' }, /^BATCH_SIZE="-5"/],
    [{ HEARTBEAT_MS: '1.5' }, /^HEARTBEAT_MS="1.5"/],
    [{ MAX_STREAMS: '1e3' }, /^MAX_STREAMS="1e3"/],
    [{ MAX_BUFFERED_BYTES: '10' }, /^MAX_BUFFERED_BYTES="10"/],
    [{ MAX_CONTENT_BYTES: '99999999' }, /^MAX_CONTENT_BYTES="99999999"/],
    [{ PAD_BYTES: 'lots' }, /^PAD_BYTES="lots"/],
    [{ WORKERS: '0' }, /^WORKERS="0": expected an integer from 1 to 64$/],
    [{ REPLAY_LIMIT: '0' }, /^REPLAY_LIMIT="0": expected an integer from 1 to 100000$/],
    [{ PUBLISH_TOKEN: 'short' }, /^PUBLISH_TOKEN: expected at least 16 characters/],
    [
      { ALLOW_ORIGIN: 'https://a.example/path' },
      /^ALLOW_ORIGIN=.*"https:\/\/a.example\/path" is not one/,
    ],
    [{ ALLOW_ORIGIN: 'a.example' }, /^ALLOW_ORIGIN=.*expected \* or comma-separated origins/],
    [{ LOG_LEVEL: 'verbose' }, /^LOG_LEVEL="verbose": expected one of fatal, error, warn/],
    [
      { MSG_TABLE: 'msg; DROP TABLE users' },
      /^MSG_TABLE="msg; DROP TABLE users": expected a plain/,
    ],
    [{ MSG_TABLE: 'db.msg' }, /^MSG_TABLE="db.msg"/],
    [{ DATABASE_URL: 'not a url' }, /^DATABASE_URL="not a url": expected a URL/],
    [{ DATABASE_URL: 'postgres://h/db' }, /^DATABASE_URL=.*scheme mysql:\/\/ or mariadb:\/\//],
    [{ DATABASE_URL: 'mysql://127.0.0.1:3306' }, /^DATABASE_URL=.*one database name/],
    [{ DATABASE_URL: 'mysql://127.0.0.1/a/b' }, /^DATABASE_URL=.*one database name/],
    [{ DATABASE_URL: 'mysql://127.0.0.1/db?ssl=true' }, /^DATABASE_URL=.*query parameters/],
  ];
  for (const [env, expected] of cases) {
    const problems = problemsOf(env);
    assert.equal(problems.length, 1, JSON.stringify(env));
    assert.match(problems[0] as string, expected);
  }
});

test('all problems are reported at once, in one line', () => {
  const env = { PORT: 'abc', POLL_INTERVAL_MS: '0', MSG_TABLE: 'a-b' };
  assert.equal(problemsOf(env).length, 3);
  assert.throws(
    () => loadConfig(env),
    (err: Error) =>
      !err.message.includes('\n') &&
      ['PORT=', 'POLL_INTERVAL_MS=', 'MSG_TABLE='].every((name) => err.message.includes(name)),
  );
});

test('a password in DATABASE_URL never appears in an error', () => {
  const [problem] = problemsOf({ DATABASE_URL: 'mysql://app:hunter2@db.example:3306' });
  assert.ok(!(problem as string).includes('hunter2'), problem);
  assert.equal(redactPassword('mysql://app:hunter2@h/db'), 'mysql://app:***@h/db');
  assert.equal(redactPassword('mysql://app@h/db'), 'mysql://app@h/db');
});
