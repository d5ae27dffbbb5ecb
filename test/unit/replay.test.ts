import assert from 'node:assert/strict';
import { Writable } from 'node:stream';
import { test } from 'node:test';
import { EVERY_ROW } from '../../src/core/subscription.js';
import type { Replay, Row } from '../../src/core/types.js';
import type { Framed } from '../../src/fanout/framed.js';
import {
  createResumer,
  MAX_HELD_BATCHES,
  type ReadReplays,
  type Resumer,
  type Resuming,
} from '../../src/fanout/resumer.js';
import { createLogger } from '../../src/log.js';
import { type Position, splitReplay, startOf } from '../../src/source/replay.js';
import type { Transport } from '../../src/transports/transport.js';

// Resuming without a database: where a resume starts in the delivery order and what it gets from
// one shared read (docs/delivery.md 3 and 4), and how the resumer joins a replay to the live
// batches handed over while it was read, with no gap and no duplicate (docs/delivery.md 2).

/** A claimed row: its id is 100 + seq, so ids and seqs are told apart in failures. */
function row(seq: number): Row {
  return {
    id: String(100 + seq),
    seq,
    channel: '',
    content: `row ${seq}`,
    truncatedFrom: null,
    createdAt: null,
  };
}
const seqs = (from: number, to: number) =>
  Array.from({ length: to - from + 1 }, (_, i) => from + i);
const rowsOf = (list: readonly number[]) => list.map(row);

const exact = (since: string, seq: number): Position => ({ since, seq, nextSeq: null });
const unknown = (since: string, nextSeq: number | null): Position => ({
  since,
  seq: null,
  nextSeq,
});

/** What each since got: the seqs of its rows and its gap reason (or null). */
function summary(replays: ReadonlyMap<string, Replay>): Record<string, [number[], string | null]> {
  const out: Record<string, [number[], string | null]> = {};
  for (const [since, replay] of replays) {
    if (replay.gap !== null) assert.equal(replay.gap.since, since, 'the gap names its since');
    out[since] = [replay.rows.map((r) => r.seq), replay.gap?.reason ?? null];
  }
  return out;
}

test('startOf: a row with a seq resumes right after it, exactly', () => {
  assert.deepEqual(startOf(exact('7', 40), 50), { after: 40, exact: true });
  // Even at the cursor: nothing to replay, still exact.
  assert.deepEqual(startOf(exact('7', 50), 50), { after: 50, exact: true });
});

test('startOf: a row without a seq resumes before the first row after it by id, not exactly', () => {
  assert.deepEqual(startOf(unknown('7', 41), 50), { after: 40, exact: false });
  // That row is past the cursor (claimed, not tailed yet): nothing before the cursor is replayed.
  assert.deepEqual(startOf(unknown('7', 60), 50), { after: 50, exact: false });
  // No row after it at all: from the cursor on, live.
  assert.deepEqual(startOf(unknown('7', null), 50), { after: 50, exact: false });
});

test('splitReplay: an exact resume gets every row after it, no gap', () => {
  const replays = splitReplay([exact('5', 10)], 13, { rows: rowsOf(seqs(11, 13)), more: false });
  assert.deepEqual(summary(replays), { 5: [[11, 12, 13], null] });
  assert.deepEqual(
    replays.get('5')?.rows.map((r) => r.id),
    ['111', '112', '113'],
  );
});

test('splitReplay: rows left out by the bound give a gap with reason limit', () => {
  // The read kept the newest three of the rows after seq 5 (more: it left some out).
  const replays = splitReplay([exact('5', 5)], 13, { rows: rowsOf(seqs(11, 13)), more: true });
  assert.deepEqual(summary(replays), { 5: [[11, 12, 13], 'limit'] });
  assert.deepEqual(replays.get('5')?.gap, { reason: 'limit', since: '5' });
});

test('splitReplay: a resume just before the first row read is exact, even when the read was cut', () => {
  const replays = splitReplay([exact('10', 10)], 13, { rows: rowsOf(seqs(11, 13)), more: true });
  assert.deepEqual(summary(replays), { 10: [[11, 12, 13], null] });
});

test('splitReplay: an unknown id with a next row gets the rows from it and a gap (unknown)', () => {
  const replays = splitReplay([unknown('7', 12)], 13, { rows: rowsOf(seqs(11, 13)), more: false });
  assert.deepEqual(summary(replays), { 7: [[12, 13], 'unknown'] });
  assert.deepEqual(replays.get('7')?.gap, { reason: 'unknown', since: '7' });
});

test('splitReplay: an unknown id with no next row gets no rows and a gap (unknown)', () => {
  const replays = splitReplay([unknown('999', null)], 13, {
    rows: rowsOf(seqs(11, 13)),
    more: false,
  });
  assert.deepEqual(summary(replays), { 999: [[], 'unknown'] });
});

test('splitReplay: an unknown id whose rows were cut by the bound says unknown', () => {
  const replays = splitReplay([unknown('2', 3)], 13, { rows: rowsOf(seqs(11, 13)), more: true });
  assert.deepEqual(summary(replays), { 2: [[11, 12, 13], 'unknown'] });
});

test('splitReplay: several sinces share one read, each gets the rows after its own start', () => {
  // One read of the newest rows after the smallest start (seq 5), cut to 11..20 by the bound.
  const read = { rows: rowsOf(seqs(11, 20)), more: true };
  const replays = splitReplay(
    [
      exact('5', 5),
      exact('10', 10),
      exact('15', 15),
      exact('20', 20),
      unknown('16', 18),
      unknown('99', null),
    ],
    20,
    read,
  );
  assert.deepEqual(summary(replays), {
    5: [seqs(11, 20), 'limit'],
    10: [seqs(11, 20), null],
    15: [seqs(16, 20), null],
    20: [[], null],
    16: [[18, 19, 20], 'unknown'],
    99: [[], 'unknown'],
  });
  // The rows are the read's own rows, not copies.
  assert.equal(replays.get('15')?.rows[0], read.rows[5]);
});

test('splitReplay: no rows read (nothing after any since) is no rows and no gap for an exact one', () => {
  const replays = splitReplay([exact('5', 13), unknown('8', null)], 13, { rows: [], more: false });
  assert.deepEqual(summary(replays), { 5: [[], null], 8: [[], 'unknown'] });
});

// ---- the resumer, with a fake read, fake transports and fake waiters ----

/** A transport whose frames spell what they hold: `sse:r11,r12;` and `sse:gap(limit,5);`. */
function transport(name: 'html' | 'sse' | 'ndjson'): Transport & { framed: number } {
  const t = {
    name,
    framed: 0,
    frame(batch: readonly Row[]) {
      t.framed++;
      return Buffer.from(`${name}:${batch.map((r) => `r${r.seq}`).join(',')};`);
    },
    gap(gap: { reason: string; since: string }) {
      return Buffer.from(`${name}:gap(${gap.reason},${gap.since});`);
    },
  };
  return t as unknown as Transport & { framed: number };
}

/** A live batch as the fan-out holds it: framed as `sse:b<lastSeq>;`. */
function batch(lastSeq: number): Framed {
  return { lastSeq, channels: [], frame: (t) => Buffer.from(`${t.name}:b${lastSeq};`) };
}

/** A read the test answers: each call waits until the test resolves or rejects it. */
function fakeRead() {
  interface Call {
    readonly sinces: readonly string[];
    resolve(answer: { upto: number; replays: Map<string, Replay> }): void;
    reject(err: Error): void;
  }
  const calls: Call[] = [];
  const arrivals: (() => void)[] = [];
  // The tests answer by row id; the resumer reads answers in request order.
  const read: ReadReplays = (requests) =>
    new Promise((resolve, reject) => {
      calls.push({
        sinces: requests.map((request) => request.since),
        resolve: ({ upto, replays }) =>
          resolve({
            upto,
            replays: requests.map(
              (request) => replays.get(request.since) ?? { rows: [], gap: null },
            ),
          }),
        reject,
      });
      for (const arrived of arrivals.splice(0)) arrived();
    });
  return {
    read,
    calls,
    /** Resolves with the `n`-th call (1-based) once it is made. */
    async call(n: number): Promise<Call> {
      while (calls.length < n) await new Promise<void>((resolve) => arrivals.push(resolve));
      return calls[n - 1] as Call;
    },
  };
}

/** A stream waiting for its replay: what `done` got (as text, or null) and how many times. */
function waiter(t: Transport) {
  const got: (string | null)[] = [];
  let settle: (frame: string | null) => void = () => {};
  const result = new Promise<string | null>((resolve) => {
    settle = resolve;
  });
  const resuming: Resuming = {
    transport: t,
    subscription: EVERY_ROW,
    done(frame) {
      got.push(frame === null ? null : frame.toString());
      settle(frame === null ? null : frame.toString());
    },
  };
  return { resuming, result, got };
}

/** A resumer over `read`, with its log lines and replay counts recorded. */
function resumerWith(read: ReadReplays): {
  resumer: Resumer;
  logs: Record<string, unknown>[];
  counted: [string, number][];
} {
  const logs: Record<string, unknown>[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _encoding, done) {
      for (const line of chunk.toString().split('\n')) if (line !== '') logs.push(JSON.parse(line));
      done();
    },
  });
  const counted: [string, number][] = [];
  const resumer = createResumer({
    read,
    logger: createLogger('debug', sink),
    replayed: (result, streams) => counted.push([result, streams]),
  });
  return { resumer, logs, counted };
}

/** Lets the resumer's deferred rounds (setImmediate) and settled reads run. */
const turn = () => new Promise<void>((resolve) => setImmediate(resolve));

const replay = (rows: readonly number[], gap: Replay['gap'] = null): Replay => ({
  rows: rowsOf(rows),
  gap,
});

test('resumer: batches held during the read are appended once when past upto, skipped up to it', async () => {
  const reads = fakeRead();
  const { resumer, logs, counted } = resumerWith(reads.read);
  const sse = transport('sse');
  // Not resuming yet: nothing is held.
  resumer.hold(batch(9));
  const a = waiter(sse);
  resumer.request('5', a.resuming);
  const call = await reads.call(1);
  assert.deepEqual(call.sinces, ['5']);
  // Handed to the live streams while the read runs: 11..12 and 13 are in the read (upto 13).
  for (const lastSeq of [12, 13, 14, 16]) resumer.hold(batch(lastSeq));
  call.resolve({ upto: 13, replays: new Map([['5', replay([11, 12, 13])]]) });
  assert.equal(await a.result, 'sse:r11,r12,r13;sse:b14;sse:b16;');
  await turn();
  assert.equal(a.got.length, 1, 'done once');
  assert.deepEqual(counted, [['ok', 1]]);
  const [entry] = logs.filter((line) => line.event === 'stream.replay');
  assert.deepEqual(
    [entry?.since, entry?.rows, entry?.firstSeq, entry?.lastSeq, entry?.gap, entry?.streams],
    ['5', 3, 11, 13, null, 1],
  );
  // After the round nothing is held any more: a later round does not see batch 17.
  resumer.hold(batch(17));
  const b = waiter(sse);
  resumer.request('16', b.resuming);
  (await reads.call(2)).resolve({ upto: 16, replays: new Map([['16', replay([])]]) });
  assert.equal(await b.result, '');
});

test('resumer: a gap frame comes first, then the rows, then the live batches, per transport', async () => {
  const reads = fakeRead();
  const { resumer, logs } = resumerWith(reads.read);
  const sse = transport('sse');
  const html = transport('html');
  const [a, b, c] = [waiter(sse), waiter(html), waiter(sse)];
  resumer.request('5', a.resuming);
  resumer.request('5', b.resuming);
  resumer.request('5', c.resuming);
  const call = await reads.call(1);
  assert.deepEqual(call.sinces, ['5'], 'one read for one since, however many streams');
  resumer.hold(batch(21));
  call.resolve({
    upto: 20,
    replays: new Map([['5', replay([19, 20], { reason: 'limit', since: '5' })]]),
  });
  assert.equal(await a.result, 'sse:gap(limit,5);sse:r19,r20;sse:b21;');
  assert.equal(await b.result, 'html:gap(limit,5);html:r19,r20;html:b21;');
  assert.equal(await c.result, await a.result);
  // Framed once per transport, whatever the number of streams.
  assert.equal(sse.framed, 1);
  assert.equal(html.framed, 1);
  const entries = logs.filter((line) => line.event === 'stream.replay');
  assert.equal(entries.length, 1);
  assert.equal(entries[0]?.gap, 'limit');
  assert.equal(entries[0]?.streams, 3);
  assert.equal(entries[0]?.level, 'info', 'a gap is worth telling an operator');
});

test('resumer: requests in one turn share one read; requests during a read go to the next round', async () => {
  const reads = fakeRead();
  const { resumer } = resumerWith(reads.read);
  const sse = transport('sse');
  const [a, b, c] = [waiter(sse), waiter(sse), waiter(sse)];
  resumer.request('5', a.resuming);
  resumer.request('7', b.resuming);
  const first = await reads.call(1);
  assert.deepEqual(first.sinces, ['5', '7']);

  // While the first read runs: a since of the running round and a new one both wait.
  const [d, e] = [waiter(sse), waiter(sse)];
  resumer.request('5', d.resuming);
  resumer.request('9', e.resuming);
  resumer.request('5', c.resuming);
  await turn();
  await turn();
  assert.equal(reads.calls.length, 1, 'no second read while one runs');

  resumer.hold(batch(12));
  first.resolve({
    upto: 11,
    replays: new Map([
      ['5', replay([6, 7, 8, 9, 10, 11])],
      ['7', replay([8, 9, 10, 11])],
    ]),
  });
  assert.equal(await a.result, 'sse:r6,r7,r8,r9,r10,r11;sse:b12;');
  assert.equal(await b.result, 'sse:r8,r9,r10,r11;sse:b12;');
  const second = await reads.call(2);
  assert.deepEqual(second.sinces, ['5', '9']);
  assert.deepEqual([c.got, d.got, e.got], [[], [], []], 'served by their own round only');

  // The batch held in the first round is in the second read (upto 12): not appended again.
  resumer.hold(batch(13));
  second.resolve({
    upto: 12,
    replays: new Map([
      ['5', replay([6, 7, 8, 9, 10, 11, 12])],
      ['9', replay([10, 11, 12])],
    ]),
  });
  assert.equal(await d.result, 'sse:r6,r7,r8,r9,r10,r11,r12;sse:b13;');
  assert.equal(await c.result, await d.result);
  assert.equal(await e.result, 'sse:r10,r11,r12;sse:b13;');
  await turn();
  assert.equal(reads.calls.length, 2, 'no round without requests');
  for (const w of [a, b, c, d, e]) assert.equal(w.got.length, 1, 'done once each');
});

test('resumer: a failed read ends every waiting stream (done(null)); the next round reads again', async () => {
  const reads = fakeRead();
  const { resumer, logs, counted } = resumerWith(reads.read);
  const sse = transport('sse');
  const ndjson = transport('ndjson');
  const [a, b, c] = [waiter(sse), waiter(ndjson), waiter(sse)];
  resumer.request('5', a.resuming);
  resumer.request('5', b.resuming);
  resumer.request('8', c.resuming);
  const first = await reads.call(1);
  // One that arrives meanwhile waits for the next round, which still runs.
  const d = waiter(sse);
  resumer.request('8', d.resuming);
  first.reject(new Error('connection lost'));
  assert.deepEqual([await a.result, await b.result, await c.result], [null, null, null]);
  assert.deepEqual(counted, [['failed', 3]]);
  const failed = logs.filter((line) => line.event === 'replay.failed');
  assert.equal(failed.length, 1);
  assert.equal(failed[0]?.streams, 3);
  assert.equal(failed[0]?.level, 'warn');

  (await reads.call(2)).resolve({ upto: 9, replays: new Map([['8', replay([9])]]) });
  assert.equal(await d.result, 'sse:r9;');
  assert.deepEqual(counted, [
    ['failed', 3],
    ['ok', 1],
  ]);
  for (const w of [a, b, c, d]) assert.equal(w.got.length, 1, 'done once each');
});

test('resumer: more live batches than it may hold during one read fail that round', async () => {
  const reads = fakeRead();
  const { resumer } = resumerWith(reads.read);
  const a = waiter(transport('sse'));
  resumer.request('5', a.resuming);
  const call = await reads.call(1);
  for (let i = 0; i <= MAX_HELD_BATCHES; i++) resumer.hold(batch(10 + i));
  call.resolve({ upto: 9, replays: new Map([['5', replay([6, 7, 8, 9])]]) });
  assert.equal(await a.result, null, 'ended rather than served with a gap');
});
