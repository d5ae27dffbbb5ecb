import assert from 'node:assert/strict';
import { test } from 'node:test';
import { loadConfig } from '../../src/config.js';
import type { Row } from '../../src/core/types.js';
import { createTransports } from '../../src/transports/index.js';

// The formats carry each row's channel; a channel inserted by SQL is not checked, so it is escaped
// like the content.

const { html, ndjson } = createTransports(loadConfig({}));
const row = (channel: string): Row => ({
  id: '7',
  seq: 3,
  channel,
  content: 'hi',
  truncatedFrom: null,
  createdAt: null,
});

test('HTML: data-channel escaped, left out for the implicit channel', () => {
  assert.equal(
    html.fragment(row('room:1')),
    '<div class="msg" data-id="7" data-seq="3" data-channel="room:1">hi</div>\n',
  );
  assert.equal(html.fragment(row('')), '<div class="msg" data-id="7" data-seq="3">hi</div>\n');
  const hostile = html.fragment(row('x"><img src=x onerror=alert(1)>'));
  assert.ok(!hostile.includes('<img'), hostile);
  assert.match(hostile, /data-channel="x&quot;&gt;&lt;img src=x onerror=alert\(1\)&gt;">hi</);
});

test('NDJSON: "channel" as a JSON string, "" for the implicit channel', () => {
  assert.deepEqual(JSON.parse(ndjson.fragment(row('a"b'))).channel, 'a"b');
  assert.deepEqual(JSON.parse(ndjson.fragment(row(''))).channel, '');
});
