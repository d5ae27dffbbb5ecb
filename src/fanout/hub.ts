import type { Subscription } from '../core/subscription.js';
import type { Logger } from '../log.js';
import type { Transport, TransportName } from '../transports/transport.js';
import type { Framed } from './framed.js';

/**
 * An open stream as the hub sees it: a bare socket (served by the front) or a node:http response.
 * Both are writable streams that emit 'close' once.
 */
export interface Stream {
  write(chunk: Buffer): boolean;
  end(chunk: Buffer): unknown;
  destroy(): unknown;
  readonly writableLength: number;
  readonly writableEnded: boolean;
  readonly destroyed: boolean;
  on(event: 'close', listener: (this: Stream) => void): unknown;
  on(event: 'error', listener: (this: Stream, err: Error) => void): unknown;
}

/**
 * How the hub frames bytes for a stream: `chunked` for a bare HTTP/1.1 socket (the hub writes the
 * chunk framing), `raw` where nothing is added (HTTP/1.0 sockets, and node:http responses, which
 * frame themselves).
 */
export type Framing = 'chunked' | 'raw';

/** How a stream joins the hub. */
export interface Joining {
  readonly transport: Transport;
  readonly framing: Framing;
  /** The rows it reads. */
  readonly subscription: Subscription;
  /** When its token expires (ms since epoch): the hub ends it then, with its closing frame. */
  readonly expiresAt: number | null;
}

/**
 * The open streams, indexed by subscription (and, within one, by transport and framing), and
 * the one place that writes to them.
 */
export interface Hub {
  /** Adds an open stream (its preamble already written); it leaves by itself on disconnect. */
  add(stream: Stream, joining: Joining): void;
  /**
   * Queues a batch for every open stream whose subscription has rows in it (found through an
   * index of the subscriptions by channel) and starts writing: the first WRITE_SLICE streams at
   * once, the rest in later turns of the event loop. A stream still waiting for an earlier batch
   * when this one comes gets both in one write. Returns the number of streams it is for.
   */
  broadcast(batch: Framed): number;
  /** Open streams right now. */
  readonly size: number;
  /** Open streams right now, by transport (transports without any may be missing). */
  sizes(): Map<TransportName, number>;
  /** Distinct channel names and prefixes the open streams subscribe to. */
  channels(): number;
  /**
   * Ends every stream with its transport's closing frame and stops the heartbeat. Streams stay
   * counted until they have closed.
   */
  closeAll(): void;
  /** Destroys the streams that are still open (after closeAll, when the grace time is over). */
  destroyAll(): void;
}

export interface HubOptions {
  /**
   * A stream is cut off when, at a write, more than this many bytes are still unsent, beyond
   * the largest frame of the last BURST_WINDOW_MS.
   */
  readonly maxBufferedBytes: number;
  /** Idle streams get the transport's heartbeat this often. */
  readonly heartbeatMs: number;
  readonly logger: Logger;
  /** Counts bytes written and cut-offs (rowcast_bytes_written_total, …). */
  readonly metrics?: HubMetrics;
  /** Every open stream has been written every batch up to this cursor (the cluster's ack). */
  readonly onWritten?: (lastSeq: number) => void;
}

/** What the hub counts: once per transport per broadcast, never per stream. */
export interface HubMetrics {
  /** `bytes` were written to streams of `transport`, in all. */
  written(transport: TransportName, bytes: number): void;
  /** A stream of `transport` was cut off (slow consumer). */
  cut(transport: TransportName): void;
  /** A stream of `transport` was ended because its token expired. */
  expired(transport: TransportName): void;
}

const NO_METRICS: HubMetrics = { written() {}, cut() {}, expired() {} };

// A client reading at a modest rate needs a while to take in one big frame (a megabyte row of
// quotes escapes to six): the frame does not count against MAX_BUFFERED_BYTES for this long.
const BURST_WINDOW_MS = 10_000;
const LAST_CHUNK = Buffer.from('0\r\n\r\n');
// Token expiries are checked this often: one timer for the hub, not one per stream.
const EXPIRY_SWEEP_MS = 1_000;
// Writes between two turns of the event loop: 10-25 ms of loopback writes here. Between slices
// the process takes in new batches (merged into the rest of the pass), connections and requests.
export const WRITE_SLICE = 1_000;

/** The streams of one transport and framing within an audience. */
interface Group {
  readonly transport: Transport;
  readonly chunked: boolean;
  readonly streams: Map<Stream, Member>;
  /** The largest frame written within BURST_WINDOW_MS, and when. */
  burstBytes: number;
  burstAt: number;
}

/** The streams of one subscription. */
interface Audience {
  readonly subscription: Subscription;
  readonly groups: Group[];
  size: number;
  /** Its rows of the batches not yet written to all its streams, oldest first. */
  due: Due[];
}

/** An audience's rows of one batch (undefined: all of them). */
interface Due {
  readonly batch: Framed;
  readonly rows: number[] | undefined;
}

interface Member {
  readonly audience: Audience;
  readonly group: Group;
  readonly expiresAt: number | null;
  /** The cursor of the last batch written to it (the hub's cursor when it joined). */
  sent: number;
}

export function createHub(options: HubOptions): Hub {
  const { maxBufferedBytes, heartbeatMs } = options;
  const metrics = options.metrics ?? NO_METRICS;
  const log = options.logger.child({ mod: 'hub' });
  const audiences = new Map<string, Audience>();
  const members = new Map<Stream, Member>();
  // The audiences by what they subscribe to: every row, a channel name, a prefix.
  const everyRow = new Set<Audience>();
  const byChannel = new Map<string, Set<Audience>>();
  const byPrefix = new Map<string, Set<Audience>>();
  // The lengths of the prefixes in byPrefix, with how many prefixes have each.
  const prefixLengths = new Map<number, number>();
  // The audiences with batches due to some of their streams, in the order they are written.
  let dirty = new Set<Audience>();
  // The cursor of the last batch broadcast: where a stream that joins now stands.
  let head = 0;
  // The pass being written, one slice per turn of the event loop (null: nothing due).
  let pass: Generator<void, void, void> | null = null;
  let size = 0;
  let lastWriteAt = Date.now();
  let heartbeatTimer: NodeJS.Timeout | null = null;
  let expiryTimer: NodeJS.Timeout | null = null;

  // One listener function shared by every stream: nothing is allocated per stream to remove it.
  function onClose(this: Stream): void {
    if (leave(this)) log.debug({ event: 'stream.close', streams: size }, 'closed');
  }
  function onError(this: Stream, err: Error): void {
    log.debug({ event: 'stream.error', err }, 'stream error');
  }

  function join(stream: Stream, joining: Joining): void {
    const { subscription } = joining;
    let audience = audiences.get(subscription.key);
    if (audience === undefined) {
      audience = { subscription, groups: [], size: 0, due: [] };
      audiences.set(subscription.key, audience);
      index(audience, 1);
    }
    const chunked = joining.framing === 'chunked';
    let group = audience.groups.find(
      (g) => g.transport === joining.transport && g.chunked === chunked,
    );
    if (group === undefined) {
      group = {
        transport: joining.transport,
        chunked,
        streams: new Map(),
        burstBytes: 0,
        burstAt: 0,
      };
      audience.groups.push(group);
    }
    const member: Member = { audience, group, expiresAt: joining.expiresAt, sent: head };
    group.streams.set(stream, member);
    audience.size++;
    size++;
    members.set(stream, member);
    if (joining.expiresAt !== null)
      expiryTimer ??= setInterval(sweepExpired, EXPIRY_SWEEP_MS).unref();
  }

  /** Removes a stream; false when it was not (or no longer) in the hub. */
  function leave(stream: Stream): boolean {
    const member = members.get(stream);
    if (member === undefined) return false;
    members.delete(stream);
    member.group.streams.delete(stream);
    size--;
    const { audience } = member;
    if (--audience.size === 0) {
      audiences.delete(audience.subscription.key);
      index(audience, -1);
    }
    return true;
  }

  /** Adds (+1) or removes (-1) an audience in the channel index. */
  function index(audience: Audience, change: 1 | -1): void {
    const { subscription } = audience;
    if (subscription.all) {
      change === 1 ? everyRow.add(audience) : everyRow.delete(audience);
      return;
    }
    for (const name of subscription.exact) update(byChannel, name, audience, change);
    for (const prefix of subscription.prefixes) {
      const added = update(byPrefix, prefix, audience, change);
      if (added !== 0) {
        const n = (prefixLengths.get(prefix.length) ?? 0) + added;
        if (n === 0) prefixLengths.delete(prefix.length);
        else prefixLengths.set(prefix.length, n);
      }
    }
  }

  /** The rows of the batch each audience reads (undefined: all of them). */
  function audiencesOf(batch: Framed): Map<Audience, number[] | undefined> {
    const found = new Map<Audience, number[] | undefined>();
    for (const audience of everyRow) found.set(audience, undefined);
    if (byChannel.size === 0 && byPrefix.size === 0) return found;
    const add = (audience: Audience, row: number) => {
      const rows = found.get(audience);
      if (rows === undefined) found.set(audience, [row]);
      else if (rows[rows.length - 1] !== row) rows.push(row);
    };
    batch.channels.forEach((channel, row) => {
      const named = byChannel.get(channel);
      if (named !== undefined) for (const audience of named) add(audience, row);
      for (const length of prefixLengths.keys()) {
        if (length > channel.length) continue;
        const prefixed = byPrefix.get(channel.slice(0, length));
        if (prefixed !== undefined) for (const audience of prefixed) add(audience, row);
      }
    });
    return found;
  }

  function broadcast(batch: Framed): number {
    head = batch.lastSeq;
    let addressed = 0;
    for (const [audience, rows] of audiencesOf(batch)) {
      audience.due.push({ batch, rows });
      dirty.add(audience);
      addressed += audience.size;
    }
    if (pass === null) {
      pass = writePasses();
      writeSlice();
    }
    return addressed;
  }

  /** Writes one slice of the pass, and schedules the next while there is one. */
  function writeSlice(): void {
    if (pass === null) return;
    if (pass.next().done) {
      pass = null;
      options.onWritten?.(head);
    } else setImmediate(writeSlice);
  }

  /** Writes the rest of the pass now (at shutdown, before the closing frames). */
  function writeAll(): void {
    while (pass !== null && !pass.next().done);
    pass = null;
  }

  /**
   * Writes every stream the rows due to it, one write per stream for all its batches, yielding
   * after every WRITE_SLICE writes. Batches that come meanwhile are merged into the writes of the
   * streams not yet reached; the streams already written get them in the next round, until none
   * is behind.
   */
  function* writePasses(): Generator<void, void, void> {
    let writes = 0;
    while (dirty.size > 0) {
      const round = dirty;
      dirty = new Set();
      const floor = head;
      for (const audience of round) {
        if (audience.size === 0) continue;
        for (const group of audience.groups) {
          // Frames by the stream's cursor: streams of a group stand at one or two points.
          let frames = new Map<number, Buffer | null>();
          let bytes = 0;
          for (const [stream, member] of group.streams) {
            let frame = frames.get(member.sent);
            if (frame === undefined) {
              frame = frameDue(audience, group, member.sent);
              frames.set(member.sent, frame);
            }
            if (frame === null) continue;
            if (stream.writableLength > maxBufferedBytes + group.burstBytes) {
              cut(stream, group);
              continue;
            }
            stream.write(frame);
            member.sent = head;
            bytes += frame.length;
            if (++writes % WRITE_SLICE === 0) {
              metrics.written(group.transport.name, bytes);
              bytes = 0;
              lastWriteAt = Date.now();
              yield;
              // Batches may have come: frames are built afresh from the audience's due rows.
              frames = new Map();
            }
          }
          if (bytes > 0) metrics.written(group.transport.name, bytes);
        }
        // Every stream has the rows that were due when this round began; the ones that came
        // later are written to the streams that missed them in the next round.
        audience.due = audience.due.filter((due) => due.batch.lastSeq > floor);
        if (audience.due.length > 0) dirty.add(audience);
      }
      lastWriteAt = Date.now();
      if (dirty.size > 0) options.onWritten?.(floor);
    }
  }

  /**
   * What a stream of `group` at cursor `sent` is due (null: nothing), framed; a larger frame
   * than the recent ones widens the group's burst allowance.
   */
  function frameDue(audience: Audience, group: Group, sent: number): Buffer | null {
    const parts: Buffer[] = [];
    for (const due of audience.due) {
      if (due.batch.lastSeq > sent) parts.push(due.batch.frame(group.transport, due.rows));
    }
    const body = parts.length === 1 ? (parts[0] as Buffer) : Buffer.concat(parts);
    // An empty chunk would end an HTTP/1.1 body.
    if (body.length === 0) return null;
    const frame = group.chunked ? chunk(body) : body;
    const now = Date.now();
    if (now - group.burstAt > BURST_WINDOW_MS || frame.length >= group.burstBytes) {
      group.burstBytes = frame.length;
      group.burstAt = now;
    }
    return frame;
  }

  /** Writes `bytes` to every stream of the group now (cutting slow ones). */
  function writeGroup(group: Group, frame: Buffer, now: number): void {
    const bytes = group.chunked ? chunk(frame) : frame;
    if (now - group.burstAt > BURST_WINDOW_MS || bytes.length >= group.burstBytes) {
      group.burstBytes = bytes.length;
      group.burstAt = now;
    }
    const limit = maxBufferedBytes + group.burstBytes;
    let written = 0;
    for (const stream of group.streams.keys()) {
      if (stream.writableLength > limit) {
        cut(stream, group);
      } else {
        stream.write(bytes);
        written++;
      }
    }
    metrics.written(group.transport.name, written * bytes.length);
  }

  function eachGroup(visit: (group: Group) => void): void {
    for (const audience of audiences.values()) for (const group of audience.groups) visit(group);
  }

  function cut(stream: Stream, group: Group): void {
    log.info(
      {
        event: 'stream.cut',
        transport: group.transport.name,
        buffered: stream.writableLength,
        limit: maxBufferedBytes,
      },
      'slow consumer cut off',
    );
    leave(stream);
    stream.destroy();
    metrics.cut(group.transport.name);
  }

  // Ends the streams whose token has expired, with their closing frame: the client reconnects
  // with a fresh token and resumes from its last row.
  function sweepExpired(): void {
    const now = Date.now();
    let left = 0;
    for (const [stream, member] of members) {
      if (member.expiresAt === null) continue;
      if (member.expiresAt > now) {
        left++;
        continue;
      }
      leave(stream);
      const { audience, group } = member;
      const { transport, chunked } = group;
      // The rows it is due come before its closing frame: it resumes after them.
      const due = frameDue(audience, group, member.sent);
      if (due !== null) stream.write(due);
      stream.end(finalBytes(transport, chunked ? 'chunked' : 'raw', transport.expired));
      metrics.expired(member.group.transport.name);
      log.debug(
        { event: 'stream.expired', transport: member.group.transport.name },
        'token expired',
      );
    }
    if (left === 0 && expiryTimer !== null) {
      clearInterval(expiryTimer);
      expiryTimer = null;
    }
  }

  // One timer for the whole hub. It fires HEARTBEAT_MS after the last write to all streams, so a
  // busy hub never sends heartbeats and an idle one sends one per period.
  function scheduleHeartbeat(): void {
    const due = lastWriteAt + heartbeatMs - Date.now();
    heartbeatTimer = setTimeout(onHeartbeatTimer, Math.max(due, 1));
    heartbeatTimer.unref();
  }
  function onHeartbeatTimer(): void {
    const now = Date.now();
    if (now - lastWriteAt >= heartbeatMs) {
      eachGroup((group) => writeGroup(group, group.transport.heartbeat, now));
      lastWriteAt = now;
    }
    scheduleHeartbeat();
  }
  scheduleHeartbeat();

  return {
    add(stream, joining) {
      join(stream, joining);
      stream.on('close', onClose);
      stream.on('error', onError);
      log.debug(
        { event: 'stream.open', transport: joining.transport.name, streams: size },
        'opened',
      );
    },
    broadcast,
    get size() {
      return size;
    },
    sizes() {
      const sizes = new Map<TransportName, number>();
      eachGroup(({ transport, streams }) => {
        sizes.set(transport.name, (sizes.get(transport.name) ?? 0) + streams.size);
      });
      return sizes;
    },
    channels: () => byChannel.size + byPrefix.size,
    closeAll() {
      writeAll();
      if (heartbeatTimer !== null) clearTimeout(heartbeatTimer);
      heartbeatTimer = null;
      if (expiryTimer !== null) clearInterval(expiryTimer);
      expiryTimer = null;
      eachGroup((group) => {
        const last = finalBytes(group.transport, group.chunked ? 'chunked' : 'raw');
        for (const stream of group.streams.keys()) stream.end(last);
      });
    },
    destroyAll() {
      eachGroup((group) => {
        for (const stream of group.streams.keys()) stream.destroy();
      });
    },
  };
}

/** Adds or removes `audience` under `key`; returns +1 / -1 when the key itself came or went. */
function update<K>(map: Map<K, Set<Audience>>, key: K, audience: Audience, change: 1 | -1): number {
  let set = map.get(key);
  if (change === 1) {
    if (set === undefined) {
      set = new Set();
      map.set(key, set);
      set.add(audience);
      return 1;
    }
    set.add(audience);
    return 0;
  }
  if (set === undefined) return 0;
  set.delete(audience);
  if (set.size > 0) return 0;
  map.delete(key);
  return -1;
}

/** What ends a stream: the transport's closing frame (at shutdown, unless another is given), then the last chunk where chunked. */
export function finalBytes(
  transport: Transport,
  framing: Framing,
  closing: Buffer = transport.closing,
): Buffer {
  if (framing === 'raw') return closing;
  return closing.length === 0 ? LAST_CHUNK : Buffer.concat([chunk(closing), LAST_CHUNK]);
}

/** `bytes` as one HTTP/1.1 chunk (never empty: an empty chunk ends the body). */
export function chunk(bytes: Buffer): Buffer {
  return Buffer.concat([Buffer.from(`${bytes.length.toString(16)}\r\n`), bytes, CRLF]);
}
const CRLF = Buffer.from('\r\n');
