import type { Logger } from '../log.js';
import type { Transport, TransportName } from '../transports/transport.js';

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

/** The open streams, grouped by transport and framing, and the one place that writes to them. */
export interface Hub {
  /** Adds an open stream (its preamble already written); it leaves by itself on disconnect. */
  add(stream: Stream, transport: Transport, framing: Framing): void;
  /**
   * Writes `frame(transport)` to every open stream of each transport that has any. `frame` is
   * called once per transport, never per stream. Returns the number of streams written to.
   */
  broadcast(frame: (transport: Transport) => Buffer): number;
  /** Open streams right now. */
  readonly size: number;
  /** Open streams right now, by transport (transports without any may be missing). */
  sizes(): Map<TransportName, number>;
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
}

/** What the hub counts: once per transport per broadcast, never per stream. */
export interface HubMetrics {
  /** `bytes` were written to streams of `transport`, in all. */
  written(transport: TransportName, bytes: number): void;
  /** A stream of `transport` was cut off (slow consumer). */
  cut(transport: TransportName): void;
}

const NO_METRICS: HubMetrics = { written() {}, cut() {} };

// A client reading at a modest rate needs a while to take in one big frame (a megabyte row of
// quotes escapes to six): the frame does not count against MAX_BUFFERED_BYTES for this long.
const BURST_WINDOW_MS = 10_000;
const LAST_CHUNK = Buffer.from('0\r\n\r\n');

interface Group {
  readonly transport: Transport;
  readonly chunked: boolean;
  readonly streams: Set<Stream>;
  /** The largest frame written within BURST_WINDOW_MS, and when. */
  burstBytes: number;
  burstAt: number;
}

export function createHub(options: HubOptions): Hub {
  const { maxBufferedBytes, heartbeatMs } = options;
  const metrics = options.metrics ?? NO_METRICS;
  const log = options.logger.child({ mod: 'hub' });
  const groups: Group[] = [];
  let lastWriteAt = Date.now();
  let heartbeatTimer: NodeJS.Timeout | null = null;

  // One listener function shared by every stream: nothing is allocated per stream to remove it.
  function onClose(this: Stream): void {
    for (const group of groups) {
      if (group.streams.delete(this))
        log.debug({ event: 'stream.close', streams: size() }, 'closed');
    }
  }
  function onError(this: Stream, err: Error): void {
    log.debug({ event: 'stream.error', err }, 'stream error');
  }

  function size(): number {
    let n = 0;
    for (const group of groups) n += group.streams.size;
    return n;
  }

  function groupOf(transport: Transport, chunked: boolean): Group {
    let group = groups.find((g) => g.transport === transport && g.chunked === chunked);
    if (group === undefined) {
      group = { transport, chunked, streams: new Set(), burstBytes: 0, burstAt: 0 };
      groups.push(group);
    }
    return group;
  }

  function writeAll(frame: (transport: Transport) => Buffer): number {
    const now = Date.now();
    const frames = new Map<Transport, Buffer>();
    let written = 0;
    for (const group of groups) {
      if (group.streams.size === 0) continue;
      let bytes = frames.get(group.transport);
      if (bytes === undefined) {
        bytes = frame(group.transport);
        frames.set(group.transport, bytes);
      }
      // An empty chunk would end an HTTP/1.1 body.
      if (bytes.length === 0) continue;
      if (group.chunked) bytes = chunk(bytes);
      if (now - group.burstAt > BURST_WINDOW_MS || bytes.length >= group.burstBytes) {
        group.burstBytes = bytes.length;
        group.burstAt = now;
      }
      const limit = maxBufferedBytes + group.burstBytes;
      const before = written;
      for (const stream of group.streams) {
        if (stream.writableLength > limit) {
          cut(stream, group);
        } else {
          stream.write(bytes);
          written++;
        }
      }
      metrics.written(group.transport.name, (written - before) * bytes.length);
    }
    lastWriteAt = now;
    return written;
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
    group.streams.delete(stream);
    stream.destroy();
    metrics.cut(group.transport.name);
  }

  // One timer for the whole hub. It fires HEARTBEAT_MS after the last write to all streams, so a
  // busy hub never sends heartbeats and an idle one sends one per period.
  function scheduleHeartbeat(): void {
    const due = lastWriteAt + heartbeatMs - Date.now();
    heartbeatTimer = setTimeout(onHeartbeatTimer, Math.max(due, 1));
    heartbeatTimer.unref();
  }
  function onHeartbeatTimer(): void {
    if (Date.now() - lastWriteAt >= heartbeatMs) writeAll((transport) => transport.heartbeat);
    scheduleHeartbeat();
  }
  scheduleHeartbeat();

  return {
    add(stream, transport, framing) {
      groupOf(transport, framing === 'chunked').streams.add(stream);
      stream.on('close', onClose);
      stream.on('error', onError);
      log.debug({ event: 'stream.open', transport: transport.name, streams: size() }, 'opened');
    },
    broadcast: writeAll,
    get size() {
      return size();
    },
    sizes() {
      const sizes = new Map<TransportName, number>();
      for (const { transport, streams } of groups) {
        sizes.set(transport.name, (sizes.get(transport.name) ?? 0) + streams.size);
      }
      return sizes;
    },
    closeAll() {
      if (heartbeatTimer !== null) clearTimeout(heartbeatTimer);
      heartbeatTimer = null;
      for (const group of groups) {
        const last = finalBytes(group.transport, group.chunked ? 'chunked' : 'raw');
        for (const stream of group.streams) stream.end(last);
      }
    },
    destroyAll() {
      for (const group of groups) {
        for (const stream of group.streams) stream.destroy();
      }
    },
  };
}

/** What ends a stream: the transport's closing frame, then the last chunk where chunked. */
export function finalBytes(transport: Transport, framing: Framing): Buffer {
  const closing = transport.closing;
  if (framing === 'raw') return closing;
  return closing.length === 0 ? LAST_CHUNK : Buffer.concat([chunk(closing), LAST_CHUNK]);
}

/** `bytes` as one HTTP/1.1 chunk (never empty: an empty chunk ends the body). */
export function chunk(bytes: Buffer): Buffer {
  return Buffer.concat([Buffer.from(`${bytes.length.toString(16)}\r\n`), bytes, CRLF]);
}
const CRLF = Buffer.from('\r\n');
