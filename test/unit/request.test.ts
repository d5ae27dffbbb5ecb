import assert from 'node:assert/strict';
import { test } from 'node:test';
import { corsHeaders, splitTarget, streamAsk } from '../../src/http/request.js';

// Parsing of stream requests: the resume id (a row id), CORS and the request target.

test('the resume id: Last-Event-ID wins over since=; digits only, at most 2^64-1, no leading zeros', () => {
  assert.equal(streamAsk('since=42', undefined, undefined, null)?.since, '42');
  assert.equal(streamAsk('since=42', '50', undefined, null)?.since, '50');
  assert.equal(streamAsk('since=007', undefined, undefined, null)?.since, '7');
  assert.equal(streamAsk('', undefined, undefined, null)?.since, null);
  // An empty value counts as absent.
  assert.equal(streamAsk('since=', '', undefined, null)?.since, null);
  assert.equal(
    streamAsk('since=18446744073709551615', undefined, undefined, null)?.since,
    '18446744073709551615',
  );
  for (const bad of ['18446744073709551616', '-1', '1e3', 'abc', '123456789012345678901']) {
    assert.equal(streamAsk(`since=${bad}`, undefined, undefined, null), null, bad);
  }
});

test('CORS: none, any origin, or a list with Vary', () => {
  assert.deepEqual(corsHeaders('https://a.example', null), {});
  assert.deepEqual(corsHeaders('https://a.example', '*'), { 'Access-Control-Allow-Origin': '*' });
  const list = ['https://a.example'];
  assert.deepEqual(corsHeaders('https://a.example', list), {
    Vary: 'Origin',
    'Access-Control-Allow-Origin': 'https://a.example',
  });
  assert.deepEqual(corsHeaders('https://b.example', list), { Vary: 'Origin' });
  assert.deepEqual(streamAsk('', undefined, 'https://a.example', '*')?.cors, {
    'Access-Control-Allow-Origin': '*',
  });
});

test('request targets: origin form and absolute form; others refused', () => {
  assert.deepEqual(splitTarget('/stream?since=1'), { path: '/stream', query: 'since=1' });
  assert.deepEqual(splitTarget('/events'), { path: '/events', query: '' });
  assert.deepEqual(splitTarget('http://host/healthz?x'), { path: '/healthz', query: 'x' });
  assert.equal(splitTarget('*'), null);
  assert.equal(splitTarget('ftp://host/stream'), null);
});
