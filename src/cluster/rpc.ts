import type { Answers, Request } from './protocol.js';

/** Requests sent and waiting for their answer, by request number: one table for all kinds. */
export interface Rpc {
  /**
   * Sends the request `build` makes with a fresh number; resolves with the answer's value, or
   * rejects with its error, or after `timeoutMs` (when given) without one.
   */
  call<K extends Request['t']>(
    build: (req: number) => Extract<Request, { t: K }>,
    timeoutMs?: number,
  ): Promise<Answers[K]>;
  /** Settles the request `req` with an answer; unknown numbers (timed out) are ignored. */
  answer(req: number, answer: { value?: unknown; error?: string; code?: string }): void;
}

export function createRpc(send: (request: Request) => void): Rpc {
  let requests = 0;
  const pending = new Map<
    number,
    (answer: { value?: unknown; error?: string; code?: string }) => void
  >();
  return {
    call(build, timeoutMs) {
      return new Promise((resolve, reject) => {
        const req = ++requests;
        const timer =
          timeoutMs === undefined
            ? undefined
            : setTimeout(() => settle({ error: 'the primary did not answer in time' }), timeoutMs);
        const settle = (answer: { value?: unknown; error?: string; code?: string }) => {
          clearTimeout(timer);
          pending.delete(req);
          if (answer.error === undefined) resolve(answer.value as never);
          else reject(Object.assign(new Error(answer.error), { code: answer.code }));
        };
        pending.set(req, settle);
        send(build(req));
      });
    },
    answer(req, answer) {
      pending.get(req)?.(answer);
    },
  };
}
