import { createStreamSide, SHUTDOWN_GRACE_MS } from '../app.js';
import type { Config } from '../config.js';
import { type Framed, framedFrom } from '../fanout/framed.js';
import type { Logger } from '../log.js';
import { healthReport } from '../source/log.js';
import type { TailerHealth } from '../source/tailer.js';
import type { FramedBatch } from './backlog.js';
import type { ToPrimary, ToWorker } from './protocol.js';
import { createRpc } from './rpc.js';

// A worker whose /metrics request the primary does not answer gives up after this long.
const SCRAPE_TIMEOUT_MS = 5_000;

/**
 * A worker process: the hub, the resumer and the HTTP server on the shared port. It writes what
 * the primary sends, replays through it, and answers /healthz from its last report. Signals are
 * the primary's business (a terminal's Ctrl-C reaches every process of the group); a worker
 * closes when told, or when the primary is gone.
 */
export async function runWorker(config: Config, logger: Logger): Promise<void> {
  let tail: TailerHealth = {
    state: 'starting',
    lastOkAt: null,
    failures: 0,
    seq: null,
    lagRows: 0,
    unclaimedOldestSeconds: 0,
  };
  let total = 0;
  // Unknown until the primary's first report: channels are not refused meanwhile.
  let tableHasChannels: boolean | null = null;
  // A worker whose primary is gone is closing (see 'disconnect'): what it would send is moot.
  const send = (message: ToPrimary) => {
    if (process.connected) process.send?.(message);
  };
  const rpc = createRpc(send);
  const side = createStreamSide(
    config,
    logger,
    (requests) => rpc.call<'replay'>((req) => ({ t: 'replay', req, requests })),
    {
      health: () => healthReport(config, tail, total),
      tableHasChannels: () => tableHasChannels,
      publish: (content, channel) =>
        rpc.call<'publish'>((req) => ({ t: 'publish', req, content, channel })),
      // The primary adds up every process's figures, this one's included.
      scrape: () => rpc.call<'scrape'>((req) => ({ t: 'scrape', req }), SCRAPE_TIMEOUT_MS),
      // The primary counts what is not written yet (and kills a worker that falls too far behind).
      onWritten: (lastSeq) => send({ t: 'ack', lastSeq, streams: side.hub.size }),
    },
  );
  const { hub, metrics, http } = side;

  let closing: Promise<void> | null = null;
  const close = () => {
    closing ??= http.close(SHUTDOWN_GRACE_MS).then(() => process.exit(0));
    return closing;
  };

  process.on('SIGINT', () => undefined);
  process.on('SIGTERM', () => undefined);
  process.on('disconnect', close);
  process.on('message', (message: ToWorker) => {
    switch (message.t) {
      case 'batch':
        // Acknowledged through onWritten once every stream has it.
        side.deliver(framedFrames(message.batch));
        break;
      case 'health':
        tail = message.tail;
        total = message.streams;
        tableHasChannels = message.channels;
        break;
      case 'answer':
        rpc.answer(message.req, message);
        break;
      case 'collect':
        // One that fails sends nothing: the primary's timeout fails that /metrics request.
        metrics.figures().then(
          (figures) => send({ t: 'collected', req: message.req, figures }),
          (err: unknown) =>
            logger.warn({ event: 'metrics.failed', mod: 'cluster', err }, 'no figures to send'),
        );
        break;
      case 'close':
        void close();
        break;
    }
  });

  // The primary sums the stream counts for /healthz; once a second is plenty.
  let reported = -1;
  setInterval(() => {
    if (hub.size !== reported) {
      reported = hub.size;
      send({ t: 'streams', n: reported });
    }
  }, 1000).unref();

  const url = await http.listen();
  send({ t: 'ready', url: url.href });
}

/** A batch the primary framed, as the fan-out writes it. */
function framedFrames(batch: FramedBatch): Framed {
  return framedFrom(batch.lastSeq, batch.channels, (transport) => {
    const frames = batch.frames.get(transport.name);
    return frames === undefined ? { bytes: new Uint8Array(0), ends: [] } : frames;
  });
}
