import assert from 'node:assert/strict';
import { test } from 'node:test';
import { createBacklog, type FramedBatch } from '../../src/cluster/backlog.js';
import { loadConfig } from '../../src/config.js';
import type { Row } from '../../src/core/types.js';
import { framedFrom, framedRows, mergeFramed } from '../../src/fanout/framed.js';
import { createTransports } from '../../src/transports/index.js';
import { frameRows } from '../../src/transports/transport.js';

// Batches as the fan-out writes them: each row framed once per format, any subset of rows (a
// subscription's) cut from that frame; batches pending together go out as one write per stream
// (docs/delivery.md 2 and 6); the primary merges what comes while a worker writes, and bounds a
// slow worker by what it has not written.

const { html, ndjson } = createTransports(loadConfig({}));

function row(seq: number, channel: string): Row {
  return {
    id: String(seq),
    seq,
    channel,
    content: `c${seq}`,
    truncatedFrom: null,
    createdAt: null,
  };
}

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

test('merged batches: rows numbered across them, one frame per format, the last cursor', () => {
  const first = framedRows([row(1, 'a'), row(2, 'b')], 2);
  const second = framedRows([row(3, 'b'), row(4, 'a')], 5);
  const merged = mergeFramed([first, second]);
  assert.equal(merged.lastSeq, 5);
  assert.deepEqual(merged.channels, ['a', 'b', 'b', 'a']);
  const all = [row(1, 'a'), row(2, 'b'), row(3, 'b'), row(4, 'a')];
  assert.equal(merged.frame(html).toString(), html.frame(all).toString());
  assert.equal(
    merged.frame(html, [0, 3]).toString(),
    html.frame([all[0], all[3]] as Row[]).toString(),
  );
  assert.equal(mergeFramed([first]), first);
  assert.throws(() => mergeFramed([]));
});

/** A batch of `bytes` bytes whose html frame is its seq. */
function framed(lastSeq: number, bytes = 10): FramedBatch {
  const frames = new Map([['html', { bytes: Buffer.from(String(lastSeq)), ends: [1] }]]);
  return { lastSeq, bytes, channels: [''], frames };
}

test('backlog: an idle worker gets a batch at once; a busy one gets all that came, together', () => {
  const messages: number[][] = [];
  let clock = 1000;
  const backlog = createBacklog(
    (batches) => messages.push(batches.map((batch) => batch.lastSeq)),
    () => clock,
  );
  assert.deepEqual(backlog.state(clock), { batches: 0, bytes: 0, waitedMs: 0 });
  backlog.push(framed(1, 100));
  assert.deepEqual(messages, [[1]]);
  clock = 1010;
  backlog.push(framed(2, 50));
  clock = 1020;
  backlog.push(framed(3, 25));
  // Still writing the first: the others wait, counted with it.
  assert.deepEqual(messages, [[1]]);
  assert.deepEqual(backlog.state(1100), { batches: 3, bytes: 175, waitedMs: 100 });
  backlog.acked(1);
  assert.deepEqual(messages, [[1], [2, 3]]);
  // The wait is the oldest batch's in the message in flight.
  assert.deepEqual(backlog.state(1100), { batches: 2, bytes: 75, waitedMs: 90 });
  backlog.acked(0); // an old ack changes nothing
  assert.deepEqual(messages, [[1], [2, 3]]);
  backlog.acked(3);
  assert.deepEqual(backlog.state(1100), { batches: 0, bytes: 0, waitedMs: 0 });
  backlog.push(framed(4));
  assert.deepEqual(messages, [[1], [2, 3], [4]]);
});

test('backlog: flush sends what waits before a message that must follow it', () => {
  const messages: number[][] = [];
  const backlog = createBacklog((batches) => messages.push(batches.map((b) => b.lastSeq)));
  backlog.push(framed(1));
  backlog.push(framed(2));
  backlog.flush();
  assert.deepEqual(messages, [[1], [2]]);
  backlog.flush(); // nothing waits: nothing sent
  assert.deepEqual(messages, [[1], [2]]);
  backlog.push(framed(3));
  backlog.acked(2);
  assert.deepEqual(messages, [[1], [2], [3]]);
  backlog.clear();
  assert.deepEqual(backlog.state(Date.now()), { batches: 0, bytes: 0, waitedMs: 0 });
});
