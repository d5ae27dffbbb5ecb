import { escapeHtml } from '../escape.js';
import {
  cutNote,
  type Gap,
  gapNote,
  type Row,
  STREAM_HEADERS,
  type Transport,
} from './transport.js';

// The charset goes in the header and in a <meta> of the preamble: without it Chromium decodes the
// page as windows-1252. Newlines in content stay visible (pre-wrap); long words wrap.
const PREAMBLE = `<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>rowcast</title>
<style>
body{font:15px/1.45 system-ui,sans-serif;margin:0;padding:.5rem 1rem;color:#1d2430}
.msg{white-space:pre-wrap;overflow-wrap:anywhere;padding:.3rem 0;border-bottom:1px solid #e6e8ec}
.msg .truncated{color:#8a5a00;font-style:italic}
.gap{color:#8a5a00;font-style:italic;padding:.3rem 0;border-bottom:1px dashed #c9a25a}
</style></head><body>
`;

/**
 * The "forever frame": an HTML page that never ends, one
 * `<div class="msg" data-id="ID" data-seq="SEQ" data-channel="CHANNEL">` per row (no data-channel
 * for the implicit channel); `<div class="gap">` where a resume
 * cannot be exact.
 * Every fragment ends with a newline so `curl -N` and line-buffered tools print it at once.
 */
export function createHtmlTransport(options: { padBytes: number }): Transport {
  return {
    name: 'html',
    headers: { 'Content-Type': 'text/html; charset=utf-8', ...STREAM_HEADERS },
    preamble: Buffer.from(PREAMBLE + padding(options.padBytes)),
    heartbeat: Buffer.from('<!-- -->\n'),
    closing: Buffer.from('<!-- rowcast: server shutting down -->\n</body></html>\n'),
    expired: Buffer.from('<!-- rowcast: token expired -->\n</body></html>\n'),
    fragment: fragment,
    frame: (batch) => Buffer.from(batch.map(fragment).join('')),
    gap: (gap) => Buffer.from(gapFragment(gap)),
  };
}

function fragment(row: Row): string {
  const note = cutNote(row);
  const cut = note === '' ? '' : `<span class="truncated">${note}</span>`;
  // A row inserted by SQL may carry any channel text: escaped like the content.
  const channel = row.channel === '' ? '' : ` data-channel="${escapeHtml(row.channel)}"`;
  return `<div class="msg" data-id="${row.id}" data-seq="${row.seq}"${channel}>${escapeHtml(row.content ?? '')}${cut}</div>\n`;
}

function gapFragment(gap: Gap): string {
  return `<div class="gap" data-since="${gap.since}" data-reason="${gap.reason}">${escapeHtml(gapNote(gap))}</div>\n`;
}

/** An HTML comment of exactly `bytes` bytes (none for 0), for browsers that buffer the start. */
function padding(bytes: number): string {
  const frame = '<!---->\n';
  if (bytes === 0) return '';
  if (bytes <= frame.length) return ' '.repeat(bytes);
  return `<!--${' '.repeat(bytes - frame.length)}-->\n`;
}
