import assert from 'node:assert/strict';
import { test } from 'node:test';
import { createBacklog, type FramedBatch } from '../../src/cluster/backlog.js';
import { mergeFramed } from '../../src/fanout/batches.js';
import type { Framed } from '../../src/fanout/resumer.js';
import type { Transport } from '../../src/transports/transport.js';

// Batches pending together go out as one write per stream (docs/delivery.md 6): the primary
// merges what comes while a worker writes, and bounds a slow worker by what it has not written.

const html = { name: 'html' } as Transport;
const sse = { name: 'sse' } as Transport;

/** A batch whose frame is `<name>:<label>` and that counts how often it was framed. */
function batch(label: string, lastSeq: number, counts: Map<string, number>): Framed {
  return {
    lastSeq,
    frame(transport) {
      const key = `${label}/${transport.name}`;
      counts.set(key, (counts.get(key) ?? 0) + 1);
      return Buffer.from(`${transport.name}:${label};`);
    },
  };
}

test('merged batches: one frame per transport, in order, with the last cursor', () => {
  const counts = new Map<string, number>();
  const merged = mergeFramed([batch('a', 3, counts), batch('b', 7, counts), batch('c', 9, counts)]);
  assert.equal(merged.lastSeq, 9);
  assert.equal(merged.frame(html).toString(), 'html:a;html:b;html:c;');
  assert.equal(merged.frame(html).toString(), 'html:a;html:b;html:c;');
  assert.equal(merged.frame(sse).toString(), 'sse:a;sse:b;sse:c;');
  // Each part framed once per transport, however many streams ask for the merged frame.
  for (const label of ['a', 'b', 'c']) {
    assert.equal(counts.get(`${label}/html`), 1);
    assert.equal(counts.get(`${label}/sse`), 1);
  }
});

test('a single batch is passed through; none is an error', () => {
  const only = batch('x', 1, new Map());
  assert.equal(mergeFramed([only]), only);
  assert.throws(() => mergeFramed([]));
});

/** A batch of `bytes` bytes whose html frame is its seq. */
function framed(lastSeq: number, bytes = 10): FramedBatch {
  return { lastSeq, bytes, frames: new Map([['html', Buffer.from(String(lastSeq))]]) };
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
