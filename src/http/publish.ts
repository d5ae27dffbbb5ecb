import { createHash, timingSafeEqual } from 'node:crypto';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { CHANNEL_NAME } from '../core/subscription.js';
import { NO_CHANNEL_COLUMN } from '../errors.js';
import type { Logger } from '../log.js';
import { reply } from './reply.js';

export interface PublishOptions {
  /** PUBLISH_TOKEN; null turns the route off. */
  readonly token: string | null;
  readonly maxContentBytes: number;
  /** Inserts a row; resolves with its id. */
  readonly publish: (content: string, channel: string | null) => Promise<string>;
  readonly logger: Logger;
}

/** Why a body was refused: the status and a line for the client. */
class Refusal {
  constructor(
    readonly status: number,
    readonly message: string,
  ) {}
}

// Seconds a publisher should wait before it retries while the database is unreachable.
const RETRY_AFTER_S = '5';
// JSON escapes (\u0000) take up to six bytes per content byte, percent-encoding three.
const ENCODING_GROWTH = 6;

/**
 * POST /messages: inserts `{"content": "…", "channel": "…"}` (JSON) or `content=…&channel=…`
 * (form; channel optional) as a new row, answers
 * `201 {"id":…}`, and the caller wakes the tailer so it goes out at once. Bearer token required.
 */
export function createPublishHandler(options: PublishOptions) {
  const { token, maxContentBytes } = options;
  const log = options.logger.child({ mod: 'publish' });
  const expected = token === null ? null : digest(token);
  const maxBodyBytes = maxContentBytes * ENCODING_GROWTH + 1024;

  return async (req: IncomingMessage, res: ServerResponse): Promise<void> => {
    if (expected === null) {
      return reply(res, 403, 'publishing over HTTP is off: set PUBLISH_TOKEN to turn it on\n');
    }
    if (!authorized(req.headers.authorization, expected)) {
      log.debug({ event: 'publish.unauthorized' }, 'missing or wrong token');
      return reply(
        res,
        401,
        'missing or wrong token: send Authorization: Bearer <PUBLISH_TOKEN>\n',
        {
          'WWW-Authenticate': 'Bearer realm="rowcast"',
        },
      );
    }
    let content: string;
    let channel: string | null;
    try {
      ({ content, channel } = parse(
        req.headers['content-type'],
        await readBody(req, maxBodyBytes),
      ));
      const bytes = Buffer.byteLength(content);
      if (bytes > maxContentBytes) {
        throw new Refusal(
          413,
          `content is ${bytes} bytes; MAX_CONTENT_BYTES is ${maxContentBytes}`,
        );
      }
    } catch (err) {
      if (!(err instanceof Refusal)) throw err;
      // A body left unread would be parsed as the next request: end the connection instead.
      const close: Record<string, string> = req.complete ? {} : { Connection: 'close' };
      return reply(res, err.status, `${err.message}\n`, close);
    }
    let id: string;
    try {
      id = await options.publish(content, channel);
    } catch (err) {
      if ((err as { code?: unknown }).code === NO_CHANNEL_COLUMN) {
        return reply(res, 400, `${(err as Error).message}\n`);
      }
      log.warn({ event: 'publish.failed', err }, 'could not insert the published row');
      return reply(res, 503, 'database unavailable, try again\n', { 'Retry-After': RETRY_AFTER_S });
    }
    log.info(
      { event: 'publish.accepted', id, channel, bytes: Buffer.byteLength(content) },
      'row published',
    );
    reply(res, 201, `{"id":${id}}\n`, { 'Content-Type': 'application/json' });
  };
}

function digest(text: string): Buffer {
  return createHash('sha256').update(text).digest();
}

/** Compares digests, so the time taken says nothing about the token, not even its length. */
function authorized(header: string | undefined, expected: Buffer): boolean {
  const given = /^Bearer +(\S+)$/i.exec(header ?? '')?.[1];
  return given !== undefined && timingSafeEqual(digest(given), expected);
}

/** The request body, refused with 413 as soon as it passes `limit` bytes. */
function readBody(req: IncomingMessage, limit: number): Promise<Buffer> {
  if (Number(req.headers['content-length'] ?? 0) > limit) {
    return Promise.reject(new Refusal(413, `body over ${limit} bytes`));
  }
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    req.on('data', (chunk: Buffer) => {
      size += chunk.length;
      if (size > limit) {
        req.removeAllListeners('data');
        req.pause();
        reject(new Refusal(413, `body over ${limit} bytes`));
      } else {
        chunks.push(chunk);
      }
    });
    req.on('end', () => resolve(Buffer.concat(chunks)));
    req.on('error', reject);
  });
}

/** The content (and channel) of a JSON or form body. */
function parse(
  contentType: string | undefined,
  body: Buffer,
): { content: string; channel: string | null } {
  const type = (contentType ?? '').split(';')[0]?.trim().toLowerCase();
  if (type !== 'application/json' && type !== 'application/x-www-form-urlencoded') {
    throw new Refusal(
      415,
      'expected Content-Type application/json ({"content": "…"}) or application/x-www-form-urlencoded (content=…)',
    );
  }
  let text: string;
  try {
    text = new TextDecoder('utf-8', { fatal: true }).decode(body);
  } catch {
    throw new Refusal(400, 'body is not valid UTF-8');
  }
  const fields = type === 'application/json' ? jsonFields(text) : formFields(text);
  if (fields.content === '') throw new Refusal(400, 'content is empty');
  if (fields.channel !== null && !CHANNEL_NAME.test(fields.channel)) {
    throw new Refusal(
      400,
      `channel ${JSON.stringify(fields.channel)}: expected 1 to 191 letters, digits or _ . : @ / = -`,
    );
  }
  return fields;
}

function jsonFields(text: string): { content: string; channel: string | null } {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    throw new Refusal(400, 'body is not JSON; expected {"content": "…"}');
  }
  const { content, channel } = (value ?? {}) as { content?: unknown; channel?: unknown };
  if (typeof content !== 'string')
    throw new Refusal(400, 'expected {"content": "…"} with a string');
  if (channel !== undefined && channel !== null && typeof channel !== 'string') {
    throw new Refusal(400, 'expected "channel" to be a string');
  }
  return { content, channel: channel ?? null };
}

function formFields(text: string): { content: string; channel: string | null } {
  const form = new URLSearchParams(text);
  const content = form.get('content');
  if (content === null) throw new Refusal(400, 'expected a form field named content');
  return { content, channel: form.get('channel') };
}
