import assert from 'node:assert/strict';
import { test } from 'node:test';
import { createBacklog, type FramedBatch } from '../../src/cluster/backlog.js';
import { loadConfig } from '../../src/config.js';
import type { Row } from '../../src/core/types.js';
import { framedFrom, framedRows } from '../../src/fanout/framed.js';
import { createTransports } from '../../src/transports/index.js';
import { frameRows } from '../../src/transports/transport.js';
import { row } from '../helpers/row.js';

// Batches as the fan-out writes them: each row framed once per format, any subset of rows (a
// subscription's) cut from that frame; the primary bounds a slow worker by what it has not
// written.

const { html, ndjson } = createTransports(loadConfig({}));

test('a subset of rows is cut from the one frame of the batch, byte for byte', () => {
  const rows = [row(1, 'a'), row(2, 'b'), row(3, 'a'), row(4, 'ü:é')];
  const batch = framedRows(rows, 4);
  assert.deepEqual(batch.channels, ['a', 'b', 'a', 'ü:é']);
  assert.equal(batch.frame(html).toString(), html.frame(rows).toString());
  assert.equal(
    batch.frame(html, [0, 2]).toString(),
    html.frame([rows[0], rows[2]] as Row[]).toString(),
  );
  // Multi-byte content: offsets are bytes, not characters.
  assert.equal(batch.frame(ndjson, [3]).toString(), ndjson.frame([rows[3]] as Row[]).toString());
  assert.equal(batch.frame(ndjson, [0, 1, 2, 3]).toString(), ndjson.frame(rows).toString());
});

test('a batch framed elsewhere (the primary) reads the same; each format framed once', () => {
  const rows = [row(7, 'x'), row(8, 'y')];
  let framed = 0;
  const batch = framedFrom(8, ['x', 'y'], (transport) => {
    framed++;
    return frameRows(transport, rows);
  });
  assert.equal(batch.frame(html, [1]).toString(), html.frame([rows[1]] as Row[]).toString());
  assert.equal(batch.frame(html).toString(), html.frame(rows).toString());
  assert.equal(framed, 1);
});

/** A batch of `bytes` bytes whose html frame is its seq. */
function framed(lastSeq: number, bytes = 10): FramedBatch {
  const frames = new Map([['html', { bytes: Buffer.from(String(lastSeq)), ends: [1] }]]);
  return { lastSeq, bytes, channels: [''], frames };
}

test('backlog: every batch goes out at once; what is not written yet is counted until acked', () => {
  const sent: number[] = [];
  let clock = 1000;
  const backlog = createBacklog(
    (batch) => sent.push(batch.lastSeq),
    () => clock,
  );
  assert.deepEqual(backlog.state(clock), { batches: 0, bytes: 0, waitedMs: 0 });
  backlog.push(framed(1, 100));
  clock = 1010;
  backlog.push(framed(2, 50));
  clock = 1020;
  backlog.push(framed(3, 25));
  // None waits for the worker: it merges what it has not written yet itself.
  assert.deepEqual(sent, [1, 2, 3]);
  assert.deepEqual(backlog.state(1100), { batches: 3, bytes: 175, waitedMs: 100 });
  backlog.acked(1);
  // The wait is the oldest unwritten batch's.
  assert.deepEqual(backlog.state(1100), { batches: 2, bytes: 75, waitedMs: 90 });
  backlog.acked(0); // an old ack changes nothing
  assert.deepEqual(backlog.state(1100), { batches: 2, bytes: 75, waitedMs: 90 });
  backlog.acked(3);
  assert.deepEqual(backlog.state(1100), { batches: 0, bytes: 0, waitedMs: 0 });
  backlog.push(framed(4));
  backlog.clear();
  assert.deepEqual(backlog.state(Date.now()), { batches: 0, bytes: 0, waitedMs: 0 });
  assert.deepEqual(sent, [1, 2, 3, 4]);
});
