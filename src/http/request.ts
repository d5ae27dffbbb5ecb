import type { IncomingMessage } from 'node:http';
import type { Config } from '../config.js';
import { ChannelError, parseChannels, type Subscription } from '../core/subscription.js';
import type { Transport } from '../transports/transport.js';

/**
 * Request parsing of the stream routes, as pure functions: the resume id, CORS, the request
 * target, and the response head the bare-socket front writes.
 */

/** What a stream request asks for beyond its route. */
export interface StreamAsk {
  /** Resume after this row id (digits, no leading zeros), or null for live rows only. */
  readonly since: string | null;
  /** The rows it reads (`channel` parameters; every row without any). */
  readonly subscription: Subscription;
  /** `access_token` of the query, for EventSource, which cannot send headers. */
  readonly accessToken: string | null;
  /** The CORS headers its Origin earns. */
  readonly cors: Readonly<Record<string, string>>;
}

const MAX_ROW_ID = 2n ** 64n - 1n;

/**
 * The resume id, subscription and CORS headers of a stream request, or why it is refused (a
 * 400: a resume id that is not a row id, a bad channel name, too many channels).
 */
export function streamAsk(
  query: string,
  lastEventId: string | undefined,
  origin: string | undefined,
  config: Pick<Config, 'allowOrigin' | 'maxChannels'>,
): StreamAsk | { readonly refused: string } {
  const params = new URLSearchParams(query);
  // EventSource sends Last-Event-ID on reconnect: it is newer than the since= of its URL.
  const raw = lastEventId || params.get('since') || null;
  let since: string | null = null;
  if (raw !== null && raw !== undefined) {
    if (!/^\d{1,20}$/.test(raw) || BigInt(raw) > MAX_ROW_ID) {
      return { refused: 'since / Last-Event-ID must be a row id (decimal digits)' };
    }
    since = BigInt(raw).toString();
  }
  let subscription: Subscription;
  try {
    subscription = parseChannels(params.getAll('channel'), config.maxChannels);
  } catch (err) {
    if (!(err instanceof ChannelError)) throw err;
    return { refused: err.message };
  }
  return {
    since,
    subscription,
    accessToken: params.get('access_token') || null,
    cors: corsHeaders(origin, config.allowOrigin),
  };
}

/** The CORS headers a request from `origin` earns under ALLOW_ORIGIN. */
export function corsHeaders(
  origin: string | undefined,
  allowed: Config['allowOrigin'],
): Record<string, string> {
  if (allowed === null) return {};
  if (allowed === '*') return { 'Access-Control-Allow-Origin': '*' };
  const headers: Record<string, string> = { Vary: 'Origin' };
  if (origin !== undefined && allowed.includes(origin)) {
    headers['Access-Control-Allow-Origin'] = origin;
  }
  return headers;
}

/** The status line and headers of a stream served on a bare socket, as node:http would write them. */
export function responseHead(
  transport: Transport,
  cors: Readonly<Record<string, string>>,
  http11: boolean,
): Buffer {
  const lines = ['HTTP/1.1 200 OK'];
  for (const [name, value] of Object.entries({ ...transport.headers, ...cors })) {
    lines.push(`${name}: ${value}`);
  }
  lines.push(`Date: ${new Date().toUTCString()}`);
  lines.push(http11 ? 'Transfer-Encoding: chunked' : 'Connection: close');
  return Buffer.from(`${lines.join('\r\n')}\r\n\r\n`, 'latin1');
}

/** Path and query of an origin-form (`/stream?x`) or absolute-form (`http://h/stream`) target. */
export function splitTarget(target: string): { path: string; query: string } | null {
  if (target.startsWith('/')) {
    const mark = target.indexOf('?');
    return mark === -1
      ? { path: target, query: '' }
      : { path: target.slice(0, mark), query: target.slice(mark + 1) };
  }
  try {
    const url = new URL(target);
    if (url.protocol !== 'http:' && url.protocol !== 'https:') return null;
    return { path: url.pathname, query: url.search.slice(1) };
  } catch {
    return null;
  }
}

/** A request header's value; the last one when it was sent more than once. */
export function header(req: IncomingMessage, name: string): string | undefined {
  const value = req.headers[name];
  return Array.isArray(value) ? value[value.length - 1] : value;
}
