import assert from 'node:assert/strict';
import { test } from 'node:test';
import { createBacklog } from '../../src/cluster/backlog.js';
import { mergeFramed } from '../../src/fanout/batches.js';
import type { Framed } from '../../src/fanout/resumer.js';
import type { Transport } from '../../src/transports/transport.js';

// Batches pending together go out as one write per stream (docs/delivery.md 6), and the primary
// bounds a slow worker by what it has not written yet.

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

test('backlog: an ack settles every batch up to its seq; bytes and wait follow', () => {
  const backlog = createBacklog();
  assert.deepEqual(backlog.state(1000), { batches: 0, bytes: 0, waitedMs: 0 });
  backlog.sent({ lastSeq: 5, bytes: 100, sentAt: 1000 });
  backlog.sent({ lastSeq: 9, bytes: 50, sentAt: 1010 });
  backlog.sent({ lastSeq: 12, bytes: 25, sentAt: 1020 });
  assert.deepEqual(backlog.state(1100), { batches: 3, bytes: 175, waitedMs: 100 });
  // A worker that merged the first two acks the second's seq.
  backlog.acked(9);
  assert.deepEqual(backlog.state(1100), { batches: 1, bytes: 25, waitedMs: 80 });
  backlog.acked(3); // an old ack changes nothing
  assert.deepEqual(backlog.state(1100), { batches: 1, bytes: 25, waitedMs: 80 });
  backlog.acked(12);
  assert.deepEqual(backlog.state(1100), { batches: 0, bytes: 0, waitedMs: 0 });
  backlog.sent({ lastSeq: 13, bytes: 1, sentAt: 1200 });
  backlog.clear();
  assert.deepEqual(backlog.state(1300), { batches: 0, bytes: 0, waitedMs: 0 });
});
