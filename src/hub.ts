import type { ServerResponse } from 'node:http';
import type { Logger } from './log.js';
import type { Transport } from './transports/transport.js';

/** The open streams, grouped by transport, and the one place that writes to them. */
export interface Hub {
  /** Adds an open stream (its preamble already written); it leaves by itself on disconnect. */
  add(res: ServerResponse, transport: Transport): void;
  /**
   * Writes `frame(transport)` to every open stream of each transport that has any. `frame` is
   * called once per transport, never per stream. Returns the number of streams written to.
   */
  broadcast(frame: (transport: Transport) => Buffer): number;
  /** Open streams right now. */
  readonly size: number;
  /** Ends every stream with its transport's closing frame and stops the heartbeat. */
  closeAll(): void;
}

export interface HubOptions {
  /** A stream with more unsent bytes than this when a write comes is cut off. */
  readonly maxBufferedBytes: number;
  /** Idle streams get the transport's heartbeat this often. */
  readonly heartbeatMs: number;
  readonly logger: Logger;
}

export function createHub(options: HubOptions): Hub {
  const { maxBufferedBytes, heartbeatMs } = options;
  const log = options.logger.child({ mod: 'hub' });
  const groups = new Map<Transport, Set<ServerResponse>>();
  let lastWriteAt = Date.now();
  let heartbeatTimer: NodeJS.Timeout | null = null;

  // One listener function shared by every stream: nothing is allocated per stream to remove it.
  function onClose(this: ServerResponse): void {
    for (const streams of groups.values()) {
      if (streams.delete(this)) log.debug({ event: 'stream.close', streams: size() }, 'closed');
    }
  }
  function onError(this: ServerResponse, err: Error): void {
    log.debug({ event: 'stream.error', err }, 'stream error');
  }

  function size(): number {
    let n = 0;
    for (const streams of groups.values()) n += streams.size;
    return n;
  }

  function writeAll(frame: (transport: Transport) => Buffer): number {
    let written = 0;
    for (const [transport, streams] of groups) {
      if (streams.size === 0) continue;
      const bytes = frame(transport);
      for (const res of streams) {
        if (res.writableLength > maxBufferedBytes) {
          cut(res, transport, streams);
        } else {
          res.write(bytes);
          written++;
        }
      }
    }
    lastWriteAt = Date.now();
    return written;
  }

  function cut(res: ServerResponse, transport: Transport, streams: Set<ServerResponse>): void {
    log.info(
      {
        event: 'stream.cut',
        transport: transport.name,
        buffered: res.writableLength,
        limit: maxBufferedBytes,
        remote: res.socket?.remoteAddress,
      },
      'slow consumer cut off',
    );
    streams.delete(res);
    res.destroy();
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
    add(res, transport) {
      let streams = groups.get(transport);
      if (streams === undefined) {
        streams = new Set();
        groups.set(transport, streams);
      }
      streams.add(res);
      res.on('close', onClose);
      res.on('error', onError);
      log.debug({ event: 'stream.open', transport: transport.name, streams: size() }, 'opened');
    },
    broadcast: writeAll,
    get size() {
      return size();
    },
    closeAll() {
      if (heartbeatTimer !== null) clearTimeout(heartbeatTimer);
      heartbeatTimer = null;
      for (const [transport, streams] of groups) {
        for (const res of streams) res.end(transport.closing);
        streams.clear();
      }
    },
  };
}
