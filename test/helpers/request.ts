import { once } from 'node:events';
import http from 'node:http';

/** A whole answer: status, headers and the body as text. */
export interface Answer {
  readonly status: number;
  readonly headers: http.IncomingHttpHeaders;
  readonly body: string;
}

/** Sends one request on a connection of its own and reads the whole answer. */
export async function request(url: URL, method = 'GET'): Promise<Answer> {
  const req = http.request(url, { method, agent: false }).end();
  const [res] = (await once(req, 'response')) as [http.IncomingMessage];
  let body = '';
  res.setEncoding('utf8');
  for await (const chunk of res) body += chunk;
  return { status: res.statusCode ?? 0, headers: res.headers, body };
}
