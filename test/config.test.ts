import assert from 'node:assert/strict';
import { generateKeyPairSync, type KeyObject } from 'node:crypto';
import { test } from 'node:test';
import { defaultMaxStreams, loadConfig, readMachine, redactPassword } from '../src/config.js';
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
  assert.equal(config.channelColumn, 'channel');
  assert.equal(config.host, '127.0.0.1');
  assert.equal(config.port, 8080);
  assert.equal(config.pollIntervalMs, 1000);
  assert.equal(config.batchSize, 500);
  assert.equal(config.padBytes, 0);
  assert.equal(config.heartbeatMs, 15_000);
  assert.equal(config.maxStreams, defaultMaxStreams(readMachine().openFiles));
  assert.equal(config.maxBufferedBytes, 1_048_576);
  assert.equal(config.maxContentBytes, 1_048_576);
  assert.equal(config.logLevel, 'info');
  assert.equal(config.workers, Math.min(readMachine().cores, 64));
  assert.equal(config.replayLimit, 1000);
  assert.equal(config.publishToken, null);
  assert.equal(config.allowOrigin, null);
  assert.equal(config.subscriberAuth, null);
  assert.equal(config.jwtIssuer, null);
  assert.equal(config.jwtAudience, null);
  assert.equal(config.publicChannels, null);
  assert.equal(config.maxChannels, 64);
  assert.ok(Object.isFrozen(config));
});

test('every variable is read, and empty values count as unset', () => {
  const config = loadConfig({
    DATABASE_URL: 'mariadb://app:s%40cret@db.example:3307/chat',
    MSG_TABLE: 'notices',
    CHANNEL_COLUMN: 'room',
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
  assert.equal(config.channelColumn, 'room');
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
    [
      { CHANNEL_COLUMN: 'room`; DROP' },
      /^CHANNEL_COLUMN="room`; DROP": expected a plain column name/,
    ],
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

const HS_SECRET = 'k'.repeat(32);
const pemOf = (publicKey: KeyObject): string =>
  publicKey.export({ type: 'spki', format: 'pem' }).toString();
const rsaPem = (modulusLength = 2048) =>
  pemOf(generateKeyPairSync('rsa', { modulusLength }).publicKey);
const ecPem = (namedCurve = 'P-256') => pemOf(generateKeyPairSync('ec', { namedCurve }).publicKey);
const edPem = () => pemOf(generateKeyPairSync('ed25519').publicKey);

test('subscriber authorization: an HS256 secret or a public key with its algorithm', () => {
  const hs = loadConfig({ SUBSCRIBER_JWT_KEY: HS_SECRET, SUBSCRIBER_JWT_ALGORITHM: 'HS256' });
  assert.equal(hs.subscriberAuth?.kind, 'hs256');
  if (hs.subscriberAuth?.kind === 'hs256') {
    assert.deepEqual(hs.subscriberAuth.secret, new TextEncoder().encode(HS_SECRET));
  }
  // 32 bytes of UTF-8, not 32 characters.
  assert.equal(loadConfig({ SUBSCRIBER_JWT_KEY: 'é'.repeat(16) }).subscriberAuth?.kind, 'hs256');

  for (const [pem, algorithm] of [
    [rsaPem(), 'RS256'],
    [ecPem(), 'ES256'],
    [edPem(), 'EdDSA'],
  ] as const) {
    const config = loadConfig({
      SUBSCRIBER_JWT_PUBLIC_KEY: pem.replace(/\n/g, '\\n'),
      SUBSCRIBER_JWT_ALGORITHM: algorithm,
      SUBSCRIBER_JWT_ISSUER: 'https://auth.example',
      SUBSCRIBER_JWT_AUDIENCE: 'rowcast',
      PUBLIC_CHANNELS: 'lobby, news:*',
      MAX_CHANNELS_PER_STREAM: '8',
    });
    assert.deepEqual(config.subscriberAuth, { kind: 'public', algorithm, keyPem: pem.trim() });
    assert.equal(config.jwtIssuer, 'https://auth.example');
    assert.equal(config.jwtAudience, 'rowcast');
    assert.equal(config.publicChannels?.key, 'lobby,news:*');
    assert.equal(config.maxChannels, 8);
  }
  assert.equal(
    loadConfig({ SUBSCRIBER_JWT_KEY: HS_SECRET, PUBLIC_CHANNELS: '*' }).publicChannels?.all,
    true,
  );
});

test('subscriber authorization: each bad setting is named', () => {
  const rsa = rsaPem();
  const cases: [Record<string, string>, RegExp][] = [
    [
      { SUBSCRIBER_JWT_KEY: 'k'.repeat(31) },
      /^SUBSCRIBER_JWT_KEY: expected an HS256 secret of at least 32 bytes/,
    ],
    [
      { SUBSCRIBER_JWT_KEY: HS_SECRET, SUBSCRIBER_JWT_PUBLIC_KEY: rsa },
      /^SUBSCRIBER_JWT_KEY and SUBSCRIBER_JWT_PUBLIC_KEY: set one of them, not both$/,
    ],
    [
      { SUBSCRIBER_JWT_KEY: HS_SECRET, SUBSCRIBER_JWT_ALGORITHM: 'RS256' },
      /^SUBSCRIBER_JWT_ALGORITHM="RS256": SUBSCRIBER_JWT_KEY is an HS256 secret/,
    ],
    [
      { SUBSCRIBER_JWT_PUBLIC_KEY: rsa },
      /^SUBSCRIBER_JWT_ALGORITHM: required with SUBSCRIBER_JWT_PUBLIC_KEY; expected one of RS256, ES256, EdDSA$/,
    ],
    [
      { SUBSCRIBER_JWT_PUBLIC_KEY: rsa, SUBSCRIBER_JWT_ALGORITHM: 'none' },
      /^SUBSCRIBER_JWT_ALGORITHM="none": expected one of RS256, ES256, EdDSA$/,
    ],
    [
      { SUBSCRIBER_JWT_PUBLIC_KEY: rsa, SUBSCRIBER_JWT_ALGORITHM: 'HS256' },
      /^SUBSCRIBER_JWT_ALGORITHM="HS256"/,
    ],
    [
      { SUBSCRIBER_JWT_PUBLIC_KEY: 'not a key', SUBSCRIBER_JWT_ALGORITHM: 'RS256' },
      /^SUBSCRIBER_JWT_PUBLIC_KEY: expected a PEM public key \(-----BEGIN PUBLIC KEY-----, SPKI\)/,
    ],
    [
      {
        SUBSCRIBER_JWT_PUBLIC_KEY: '-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----',
        SUBSCRIBER_JWT_ALGORITHM: 'RS256',
      },
      /^SUBSCRIBER_JWT_PUBLIC_KEY: expected a PEM public key/,
    ],
    [
      { SUBSCRIBER_JWT_PUBLIC_KEY: rsa, SUBSCRIBER_JWT_ALGORITHM: 'ES256' },
      /^SUBSCRIBER_JWT_PUBLIC_KEY: a key of type rsa does not fit ES256, which takes an EC P-256 key$/,
    ],
    [
      {
        SUBSCRIBER_JWT_PUBLIC_KEY: ecPem('P-384'),
        SUBSCRIBER_JWT_ALGORITHM: 'ES256',
      },
      /^SUBSCRIBER_JWT_PUBLIC_KEY: an EC key on secp384r1 does not fit ES256/,
    ],
    [
      { SUBSCRIBER_JWT_PUBLIC_KEY: edPem(), SUBSCRIBER_JWT_ALGORITHM: 'RS256' },
      /^SUBSCRIBER_JWT_PUBLIC_KEY: a key of type ed25519 does not fit RS256, which takes an RSA key$/,
    ],
    [
      { SUBSCRIBER_JWT_PUBLIC_KEY: rsa, SUBSCRIBER_JWT_ALGORITHM: 'EdDSA' },
      /^SUBSCRIBER_JWT_PUBLIC_KEY: a key of type rsa does not fit EdDSA, which takes an Ed25519 key$/,
    ],
    [
      {
        SUBSCRIBER_JWT_PUBLIC_KEY: rsaPem(1024),
        SUBSCRIBER_JWT_ALGORITHM: 'RS256',
      },
      /^SUBSCRIBER_JWT_PUBLIC_KEY: RS256 takes an RSA key of at least 2048 bits, not 1024$/,
    ],
    [
      { SUBSCRIBER_JWT_KEY: HS_SECRET, PUBLIC_CHANNELS: 'lobby,bad name' },
      /^PUBLIC_CHANNELS="lobby,bad name": channel "bad name": expected 1 to 191 letters/,
    ],
    [{ SUBSCRIBER_JWT_KEY: HS_SECRET, PUBLIC_CHANNELS: 'a,,b' }, /^PUBLIC_CHANNELS="a,,b"/],
    [
      { PUBLIC_CHANNELS: 'lobby' },
      /^PUBLIC_CHANNELS needs SUBSCRIBER_JWT_KEY or SUBSCRIBER_JWT_PUBLIC_KEY$/,
    ],
    [
      { SUBSCRIBER_JWT_ISSUER: 'https://auth.example' },
      /^SUBSCRIBER_JWT_ISSUER needs SUBSCRIBER_JWT_KEY or SUBSCRIBER_JWT_PUBLIC_KEY$/,
    ],
    [{ SUBSCRIBER_JWT_AUDIENCE: 'rowcast' }, /^SUBSCRIBER_JWT_AUDIENCE needs SUBSCRIBER_JWT_KEY/],
    [{ SUBSCRIBER_JWT_ALGORITHM: 'RS256' }, /^SUBSCRIBER_JWT_ALGORITHM needs SUBSCRIBER_JWT_KEY/],
    [
      { MAX_CHANNELS_PER_STREAM: '0' },
      /^MAX_CHANNELS_PER_STREAM="0": expected an integer from 1 to 1024$/,
    ],
    [{ MAX_CHANNELS_PER_STREAM: '1025' }, /^MAX_CHANNELS_PER_STREAM="1025"/],
  ];
  for (const [env, expected] of cases) {
    const problems = problemsOf(env);
    assert.equal(problems.length, 1, `${JSON.stringify(env)}: ${problems.join('; ')}`);
    assert.match(problems[0] as string, expected);
  }
});

test('a private key is refused as SUBSCRIBER_JWT_PUBLIC_KEY (node would derive its public half)', () => {
  const { privateKey } = generateKeyPairSync('ed25519');
  const pem = privateKey.export({ type: 'pkcs8', format: 'pem' }).toString();
  const [problem] = problemsOf({
    SUBSCRIBER_JWT_PUBLIC_KEY: pem,
    SUBSCRIBER_JWT_ALGORITHM: 'EdDSA',
  });
  assert.match(problem as string, /^SUBSCRIBER_JWT_PUBLIC_KEY: expected a PEM public key/);
  assert.ok(!(problem as string).includes('PRIVATE'), problem);
});

test('the HS256 secret never appears in an error', () => {
  const secret = 'hunter2-but-short';
  const problems = problemsOf({ SUBSCRIBER_JWT_KEY: secret, SUBSCRIBER_JWT_ALGORITHM: 'ES256' });
  assert.equal(problems.length, 2);
  assert.throws(
    () => loadConfig({ SUBSCRIBER_JWT_KEY: secret, SUBSCRIBER_JWT_PUBLIC_KEY: 'x' }),
    (err: Error) => !err.message.includes(secret) && !err.message.includes('hunter2'),
  );
  for (const problem of problems) assert.ok(!problem.includes('hunter2'), problem);
  // A secret long enough, next to a mistake about it.
  const long = 'hunter2-hunter2-hunter2-hunter2-hunter2';
  const [problem] = problemsOf({ SUBSCRIBER_JWT_KEY: long, SUBSCRIBER_JWT_ALGORITHM: 'RS256' });
  assert.ok(!(problem as string).includes('hunter2'), problem);
});

test('MAX_STREAMS follows the file limit of the process unless set; WORKERS the cores', () => {
  assert.equal(defaultMaxStreams(20_000), 19_000);
  assert.equal(defaultMaxStreams(1_024), 960);
  assert.equal(defaultMaxStreams(1_048_576), 1_047_576);
  assert.equal(defaultMaxStreams(null), 10_000);
  const machine = { cores: 6, openFiles: 20_000 };
  assert.equal(loadConfig({}, machine).maxStreams, 19_000);
  assert.equal(loadConfig({}, machine).workers, 6);
  assert.equal(loadConfig({ MAX_STREAMS: '25000' }, machine).maxStreams, 25_000);
  // This process, read from /proc on Linux.
  const here = readMachine();
  if (process.platform === 'linux') assert.ok((here.openFiles ?? 0) > 0);
});
