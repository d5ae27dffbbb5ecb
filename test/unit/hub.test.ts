import assert from 'node:assert/strict';
import { EventEmitter } from 'node:events';
import { test } from 'node:test';
import { setImmediate as nextTurn } from 'node:timers/promises';
import { loadConfig } from '../../src/config.js';
import { EVERY_ROW, parseChannels } from '../../src/core/subscription.js';
import { framedRows } from '../../src/fanout/framed.js';
import {
  createHub,
  type Hub,
  type HubOptions,
  type Stream,
  WRITE_SLICE,
} from '../../src/fanout/hub.js';
import { createLogger } from '../../src/log.js';
import { createTransports } from '../../src/transports/index.js';
import { row } from '../helpers/row.js';

// The hub with fake sockets: every stream gets every row of its subscription once and in order,
// in slices of writes; a batch that comes while a pass is being written is merged into the
// writes not done yet (docs/delivery.md 2 and 6).

const { ndjson } = createTransports(loadConfig({}));
const silent = createLogger('silent');

/** A socket that keeps what is written to it; `unsent` plays the kernel's unread bytes. */
class FakeStream extends EventEmitter implements Stream {
  readonly writes: Buffer[] = [];
  writableEnded = false;
  destroyed = false;
  unsent = 0;
  get writableLength(): number {
    return this.unsent;
  }
  write(chunk: Buffer): boolean {
    this.writes.push(chunk);
    return true;
  }
  end(chunk: Buffer): void {
    this.writes.push(chunk);
    this.writableEnded = true;
    this.emit('close');
  }
  destroy(): void {
    this.destroyed = true;
    this.emit('close');
  }
  /** The ids of the rows it got, in order (NDJSON lines). */
  ids(): string[] {
    return Buffer.concat(this.writes)
      .toString()
      .split('\n')
      .filter((line) => line.startsWith('{'))
      .map((line) => String((JSON.parse(line) as { id: number | string }).id));
  }
}

/** A batch of rows with these seqs (and channels, by seq). */
function batch(seqs: readonly number[], channelOf: (seq: number) => string = () => '') {
  return framedRows(
    seqs.map((seq) => row(seq, channelOf(seq))),
    seqs[seqs.length - 1] as number,
  );
}

function hubWith(
  n: number,
  options: Partial<HubOptions> = {},
  subscriptionOf = (_i: number) => EVERY_ROW,
): { hub: Hub; streams: FakeStream[] } {
  const hub = createHub({
    maxBufferedBytes: 1_000_000,
    heartbeatMs: 3_600_000,
    logger: silent,
    ...options,
  });
  const streams = Array.from({ length: n }, (_, i) => {
    const stream = new FakeStream();
    hub.add(stream, {
      transport: ndjson,
      framing: 'raw',
      subscription: subscriptionOf(i),
      expiresAt: null,
    });
    return stream;
  });
  return { hub, streams };
}

test('a small hub is written at once: one write per stream, only its channel’s rows', () => {
  const { hub, streams } = hubWith(4, {}, (i) =>
    i % 2 === 0 ? parseChannels(['a'], 8) : parseChannels(['b'], 8),
  );
  const addressed = hub.broadcast(batch([1, 2, 3], (seq) => (seq === 2 ? 'b' : 'a')));
  assert.equal(addressed, 4);
  for (const [i, stream] of streams.entries()) {
    assert.equal(stream.writes.length, 1);
    assert.deepEqual(stream.ids(), i % 2 === 0 ? ['1', '3'] : ['2']);
  }
  hub.closeAll();
});

test('a pass larger than a slice goes on in later turns; a batch that comes meanwhile is merged into the writes not done yet', async () => {
  const acked: number[] = [];
  const n = WRITE_SLICE * 2 + 10;
  const { hub, streams } = hubWith(n, { onWritten: (seq) => acked.push(seq) });
  hub.broadcast(batch([1]));
  const written = streams.filter((s) => s.writes.length > 0).length;
  assert.equal(written, WRITE_SLICE, 'the first slice is written at once, the rest later');
  hub.broadcast(batch([2, 3]));
  for (let turn = 0; turn < 20 && acked.at(-1) !== 3; turn++) await nextTurn();
  assert.equal(acked.at(-1), 3, 'every stream has everything up to the last batch');
  for (const [i, stream] of streams.entries()) {
    assert.deepEqual(stream.ids(), ['1', '2', '3'], `stream ${i}`);
    // Streams not reached when the second batch came got both in one write.
    assert.equal(stream.writes.length, i < WRITE_SLICE ? 2 : 1, `writes of stream ${i}`);
  }
  // The first round ended with batch 1 everywhere before the last one had reached all.
  assert.deepEqual(acked, [1, 3]);
  hub.closeAll();
});

test('a stream that joins while a pass is written gets only the batches after it joined', async () => {
  const { hub, streams } = hubWith(WRITE_SLICE + 5);
  hub.broadcast(batch([1]));
  const late = new FakeStream();
  hub.add(late, { transport: ndjson, framing: 'raw', subscription: EVERY_ROW, expiresAt: null });
  hub.broadcast(batch([2]));
  for (let turn = 0; turn < 20 && streams.at(-1)?.ids().length !== 2; turn++) await nextTurn();
  for (let turn = 0; turn < 5; turn++) await nextTurn();
  assert.deepEqual(late.ids(), ['2']);
  assert.deepEqual(streams.at(-1)?.ids(), ['1', '2']);
  hub.closeAll();
});

test('closing writes what each stream is still due before its closing frame', () => {
  const { hub, streams } = hubWith(WRITE_SLICE + 5);
  hub.broadcast(batch([1, 2]));
  assert.equal(streams.at(-1)?.writes.length, 0);
  hub.closeAll();
  for (const stream of streams) {
    assert.deepEqual(stream.ids(), ['1', '2']);
    assert.equal(stream.writableEnded, true);
  }
});

test('a stream with more unsent bytes than the bound is cut and gets nothing more', () => {
  const cut: string[] = [];
  const { hub, streams } = hubWith(3, {
    maxBufferedBytes: 1024,
    metrics: { written() {}, cut: (t) => cut.push(t), expired() {} },
  });
  const [fast, slow] = streams as [FakeStream, FakeStream];
  hub.broadcast(batch([1]));
  slow.unsent = 1024 + 10_000;
  hub.broadcast(batch([2]));
  assert.equal(slow.destroyed, true);
  assert.deepEqual(slow.ids(), ['1']);
  assert.deepEqual(cut, ['ndjson']);
  assert.equal(hub.size, 2);
  hub.broadcast(batch([3]));
  assert.deepEqual(fast.ids(), ['1', '2', '3']);
  assert.deepEqual(slow.ids(), ['1']);
  hub.closeAll();
});

test('with no stream for a batch the hub reports it written at once', () => {
  const acked: number[] = [];
  const { hub } = hubWith(2, { onWritten: (seq) => acked.push(seq) }, () =>
    parseChannels(['a'], 8),
  );
  assert.equal(hub.broadcast(batch([5], () => 'b')), 0);
  assert.deepEqual(acked, [5]);
  hub.closeAll();
});
