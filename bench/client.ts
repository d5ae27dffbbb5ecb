import net from 'node:net';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { type Collected, type FromClient, monotonicMs, type ToClient } from './protocol.js';

// A load-generator process (forked by bench/clients.ts). It holds thousands of raw TCP streams
// from one loopback source address, each a plain `GET /stream` or `GET /stream?channel=NAME` (or
// another path with extra headers: Nchan's `GET /sub` with `TE: chunked`), and parses only what
// the bench needs from each row (Nchan's chunk-size lines between them are skipped like any text):
// `data-id="ID" data-seq="SEQ" data-channel="CH">SENT_US</div>` (no data-channel for the channel
// ''), where SENT_US is the insert time in µs on the monotonic clock (a fragment without
// data-seq, rowcast v1's, is read with seq 0). Other attributes before `>` are skipped.
// The hot path allocates nothing per row: one shared read buffer for every socket, typed arrays
// for per-stream state, and a copy only for the rare row cut across two reads.

const MARK = Buffer.from('data-id="');
const SEQ_MARK = Buffer.from(' data-seq="');
const CHANNEL_MARK = Buffer.from(' data-channel="');
const QUOTE = 34;
const GT = 62;
// streamChannel of a stream without a channel: it reads every row.
const EVERY_ROW = -1;
// rowChannel of a row whose channel no stream of this client asked for.
const NO_STREAM = -2;
const READ_BUFFER = Buffer.alloc(64 * 1024);
const DIGIT_0 = 48;
const DIGIT_9 = 57;

let sockets: (net.Socket | undefined)[] = [];
let carry: (Buffer | undefined)[] = [];
let established = new Uint8Array(0);
let isOpen = new Uint8Array(0);
let lastSeq = new Float64Array(0);
let openCount = 0;
// The channels this client's streams asked for, and each stream's (an index, or EVERY_ROW).
let channelIndex = new Map<string, number>();
let streamChannel = new Int32Array(0);

// The current phase.
let base = 0;
let expected = 0;
let bytesPerStream = 0;
let seen = new Uint8Array(0);
// Per row of the phase: its channel's index here (or NO_STREAM), its `data-channel` bytes.
let rowChannel = new Int32Array(0);
let rowLabel: Buffer[] = [];
// Rows of the phase per channel index.
let rowsOfChannel = new Int32Array(0);
// The seq each expected row came with on the first stream that got it (0: not yet seen).
let seqOf = new Float64Array(0);
let openAtStart = new Uint8Array(0);
let latencies = new Float32Array(0);
let latencyOffsets = new Uint32Array(0);
let expectedDeliveries = 0;
let received = 0;
let duplicated = 0;
let outOfOrder = 0;
let seqMismatch = 0;
let unexpected = 0;
let wrongChannel = 0;
let channelLabelMismatch = 0;
let closed = 0;
let firstReceipt = 0;
let lastReceipt = 0;
let cpuAtStart = process.cpuUsage();
const loopDelay = monitorEventLoopDelay({ resolution: 10 });

function send(message: FromClient): void {
  process.send?.(message);
}

process.on('disconnect', () => process.exit(0));
process.on('message', (message: ToClient) => {
  switch (message.t) {
    case 'connect':
      connectAll(message).then(send, (err: Error) => send({ t: 'error', message: err.message }));
      break;
    case 'expect':
      startPhase(message.base, message.count, message.channels);
      send(progress());
      break;
    case 'progress':
      send(progress());
      break;
    case 'collect':
      send(collect());
      break;
    case 'exit':
      process.exit(0);
  }
});

function connectAll(command: Extract<ToClient, { t: 'connect' }>): Promise<FromClient> {
  const { count } = command;
  sockets = new Array(count);
  carry = new Array(count);
  established = new Uint8Array(count);
  isOpen = new Uint8Array(count);
  lastSeq = new Float64Array(count);
  channelIndex = new Map();
  streamChannel = new Int32Array(count).fill(EVERY_ROW);
  for (let index = 0; index < count; index++) {
    const channel = command.channels?.[index] ?? '';
    if (channel === '') continue;
    let known = channelIndex.get(channel);
    if (known === undefined) {
      known = channelIndex.size;
      channelIndex.set(channel, known);
    }
    streamChannel[index] = known;
  }
  const failures: Record<string, number> = {};
  const started = Date.now();
  const stopStartingAt = started + command.deadlineMs;
  const extra = Object.entries(command.headers ?? {})
    .map(([name, value]) => `${name}: ${value}\r\n`)
    .join('');
  const head = `HTTP/1.1\r\nHost: ${command.host}:${command.port}\r\nUser-Agent: rowcast-bench\r\n${extra}\r\n`;
  const plainRequest = Buffer.from(`GET ${command.path} ${head}`);
  // Channel names are of letters, digits and `_ . : @ / = -`: nothing to escape in a query.
  const requestOf = (index: number) => {
    const channel = command.channels?.[index] ?? '';
    return channel === ''
      ? plainRequest
      : Buffer.from(`GET ${command.path}?channel=${channel} ${head}`);
  };
  let next = 0;
  let inFlight = 0;
  let ok = 0;

  return new Promise((resolve) => {
    let done = false;
    const finish = () => {
      if (done) return;
      done = true;
      clearTimeout(backstop);
      if (next < count) failures.not_started = (failures.not_started ?? 0) + count - next;
      resolve({ t: 'connected', established: ok, failures, ms: Date.now() - started });
    };
    // Every connection has its own timeout, so this only guards against a bug in the bookkeeping.
    const backstop = setTimeout(finish, command.deadlineMs + command.timeoutMs + 5_000);
    const settle = (index: number, failure: string | null) => {
      inFlight--;
      if (failure === null) ok++;
      else failures[failure] = (failures[failure] ?? 0) + 1;
      if (failure !== null) sockets[index]?.destroy();
      pump();
    };
    const pump = () => {
      while (inFlight < command.concurrency && next < count && Date.now() < stopStartingAt) {
        open(next++);
        inFlight++;
      }
      if (inFlight === 0) finish();
    };
    const open = (index: number) => {
      let pending = true;
      const fail = (reason: string) => {
        if (!pending) return;
        pending = false;
        settle(index, reason);
      };
      const socket = net.connect({
        host: command.host,
        port: command.port,
        localAddress: command.localAddress,
        onread: {
          buffer: READ_BUFFER,
          callback: (bytes: number) => {
            if (pending) {
              const status = headStatus(index, bytes);
              if (status === null) return true; // the status line is not complete yet
              pending = false;
              socket.setTimeout(0);
              if (status !== 200) {
                settle(index, `http_${status}`);
                return true;
              }
              established[index] = 1;
              isOpen[index] = 1;
              openCount++;
              settle(index, null);
            }
            onRows(index, bytes);
            return true;
          },
        },
      });
      sockets[index] = socket;
      socket.setTimeout(command.timeoutMs, () => fail('timeout'));
      socket.on('connect', () => socket.write(requestOf(index)));
      socket.on('error', (err: NodeJS.ErrnoException) => fail(err.code ?? 'error'));
      socket.on('close', () => {
        fail('closed');
        if (isOpen[index] === 1) {
          isOpen[index] = 0;
          openCount--;
          closed++;
        }
      });
    };
    pump();
  });
}

/** The status code once the status line is in, else null (the bytes are kept for the next read). */
function headStatus(index: number, bytes: number): number | null {
  const data = readData(index, bytes);
  const lineEnd = data.indexOf('\r\n');
  if (lineEnd === -1) {
    carry[index] = Buffer.from(data);
    return null;
  }
  // "HTTP/1.1 200 OK": the code is bytes 9–11. The rest (head, preamble) holds no rows.
  return Number(data.toString('latin1', 9, Math.min(12, lineEnd)));
}

/** Parses every complete row of this read; keeps an incomplete tail for the next one. */
function onRows(index: number, bytes: number): void {
  const now = monotonicMs();
  const data = readData(index, bytes);
  // Every fragment ends with '\n': bytes after the last one belong to a fragment still coming.
  const end = data.lastIndexOf(10);
  if (end < data.length - 1) carry[index] = Buffer.from(data.subarray(end + 1));
  if (end === -1) return;
  let at = data.indexOf(MARK);
  while (at !== -1 && at < end) {
    let p = at + MARK.length;
    let id = 0;
    let c = data[p] ?? 0;
    while (c >= DIGIT_0 && c <= DIGIT_9) {
      id = id * 10 + c - DIGIT_0;
      c = data[++p] ?? 0;
    }
    p++; // `"`
    let seq = 0;
    const seqEnd = p + SEQ_MARK.length;
    if (seqEnd <= data.length && data.compare(SEQ_MARK, 0, SEQ_MARK.length, p, seqEnd) === 0) {
      p += SEQ_MARK.length;
      c = data[p] ?? 0;
      while (c >= DIGIT_0 && c <= DIGIT_9) {
        seq = seq * 10 + c - DIGIT_0;
        c = data[++p] ?? 0;
      }
      p++; // `"`
    }
    let labelStart = 0;
    let labelEnd = 0;
    const channelEnd = p + CHANNEL_MARK.length;
    if (
      channelEnd <= data.length &&
      data.compare(CHANNEL_MARK, 0, CHANNEL_MARK.length, p, channelEnd) === 0
    ) {
      labelStart = channelEnd;
      labelEnd = data.indexOf(QUOTE, labelStart);
      if (labelEnd === -1 || labelEnd > end) labelEnd = labelStart;
      p = labelEnd;
    }
    // Up to the end of the tag, whatever other attributes come.
    while (p < end && data[p] !== GT) p++;
    p++; // `>`
    let sentUs = 0;
    c = data[p] ?? 0;
    while (c >= DIGIT_0 && c <= DIGIT_9) {
      sentUs = sentUs * 10 + c - DIGIT_0;
      c = data[++p] ?? 0;
    }
    record(index, id, seq, now - sentUs / 1000, now, data, labelStart, labelEnd);
    at = data.indexOf(MARK, p);
  }
}

function record(
  index: number,
  id: number,
  seq: number,
  latencyMs: number,
  now: number,
  data: Buffer,
  labelStart: number,
  labelEnd: number,
): void {
  // Delivery order is seq order (docs/delivery.md 2).
  if (seq < (lastSeq[index] as number)) outOfOrder++;
  lastSeq[index] = seq;
  if (firstReceipt === 0) firstReceipt = now;
  lastReceipt = now;
  const offset = id - base;
  if (offset < 0 || offset >= expected) {
    unexpected++;
    return;
  }
  // The frame names the row's channel (none for ''), compared without copying it.
  const label = rowLabel[offset] as Buffer;
  const labelLength = labelEnd - labelStart;
  if (
    labelLength !== label.length ||
    (labelLength > 0 && data.compare(label, 0, labelLength, labelStart, labelEnd) !== 0)
  ) {
    channelLabelMismatch++;
  }
  // A stream of a channel gets only that channel's rows, one without a channel every row.
  const wanted = streamChannel[index] as number;
  if (wanted !== EVERY_ROW && wanted !== rowChannel[offset]) {
    unexpected++;
    wrongChannel++;
    return;
  }
  const byte = index * bytesPerStream + (offset >> 3);
  const bit = 1 << (offset & 7);
  const flags = seen[byte] as number;
  if ((flags & bit) !== 0) {
    duplicated++;
    return;
  }
  seen[byte] = flags | bit;
  // Every stream, on every instance, must see the row under the same seq: one order for all.
  // A row without data-seq counts as a mismatch too.
  const known = seqOf[offset] as number;
  if (seq === 0 || (known !== 0 && known !== seq)) seqMismatch++;
  else if (known === 0) seqOf[offset] = seq;
  if (latencyOffsets.length > 0) latencyOffsets[received] = offset;
  latencies[received++] = latencyMs;
}

/** How many rows of the phase stream `index` should get: all, or those of its channel. */
function expectedOn(index: number): number {
  const wanted = streamChannel[index] as number;
  return wanted === EVERY_ROW ? expected : (rowsOfChannel[wanted] as number);
}

function progress(): FromClient {
  let goal = 0;
  for (let index = 0; index < isOpen.length; index++) {
    if (isOpen[index] === 1 && openAtStart[index] === 1) goal += expectedOn(index);
  }
  return { t: 'progress', received, open: openCount, expected: goal };
}

function startPhase(first: number, count: number, channels?: readonly string[]): void {
  base = first;
  expected = count;
  bytesPerStream = Math.ceil(count / 8);
  seen = new Uint8Array(sockets.length * bytesPerStream);
  seqOf = new Float64Array(count);
  rowChannel = new Int32Array(count);
  rowLabel = new Array(count);
  rowsOfChannel = new Int32Array(channelIndex.size);
  const labels = new Map<string, Buffer>();
  for (let offset = 0; offset < count; offset++) {
    const channel = channels?.[offset] ?? '';
    const known = channelIndex.get(channel);
    rowChannel[offset] = known ?? NO_STREAM;
    if (known !== undefined) rowsOfChannel[known] = (rowsOfChannel[known] as number) + 1;
    let label = labels.get(channel);
    if (label === undefined) {
      label = Buffer.from(channel);
      labels.set(channel, label);
    }
    rowLabel[offset] = label;
  }
  openAtStart = isOpen.slice();
  expectedDeliveries = 0;
  for (let index = 0; index < openAtStart.length; index++) {
    if (openAtStart[index] === 1) expectedDeliveries += expectedOn(index);
  }
  latencies = new Float32Array(expectedDeliveries);
  latencyOffsets = new Uint32Array(channels === undefined ? 0 : expectedDeliveries);
  received = 0;
  duplicated = 0;
  outOfOrder = 0;
  seqMismatch = 0;
  unexpected = 0;
  wrongChannel = 0;
  channelLabelMismatch = 0;
  closed = 0;
  firstReceipt = 0;
  lastReceipt = 0;
  cpuAtStart = process.cpuUsage();
  loopDelay.reset();
  loopDelay.enable();
}

function collect(): Collected {
  loopDelay.disable();
  const cpu = process.cpuUsage(cpuAtStart);
  return {
    t: 'collected',
    latencies: latencies.slice(0, received),
    latencyOffsets: latencyOffsets.slice(0, Math.min(received, latencyOffsets.length)),
    expected: expectedDeliveries,
    received,
    lost: expectedDeliveries - received,
    duplicated,
    outOfOrder,
    seqMismatch,
    seqs: seqOf,
    unexpected,
    wrongChannel,
    channelLabelMismatch,
    closed,
    firstReceipt,
    lastReceipt,
    cpuS: (cpu.user + cpu.system) / 1e6,
    loopDelayP99Ms: loopDelay.count > 0 ? loopDelay.percentile(99) / 1e6 : 0,
    loopDelayMaxMs: loopDelay.count > 0 ? loopDelay.max / 1e6 : 0,
  };
}

/** This read's bytes, after the tail kept from the previous read of the same stream. */
function readData(index: number, bytes: number): Buffer {
  const previous = carry[index];
  if (previous === undefined) return READ_BUFFER.subarray(0, bytes);
  carry[index] = undefined;
  return Buffer.concat([previous, READ_BUFFER.subarray(0, bytes)]);
}
