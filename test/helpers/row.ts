import type { Row } from '../../src/core/types.js';

/** A row as the tailer hands it over: id and seq alike, content `c<seq>`. */
export function row(seq: number, channel = ''): Row {
  return {
    id: String(seq),
    seq,
    channel,
    content: `c${seq}`,
    truncatedFrom: null,
    createdAt: null,
  };
}
