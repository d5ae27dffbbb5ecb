import assert from 'node:assert/strict';
import { test } from 'node:test';
import { corsHeaders, type StreamAsk, splitTarget, streamAsk } from '../../src/http/request.js';

const OPEN = { allowOrigin: null, maxChannels: 64 } as const;

/** The answer for a request that must be accepted. */
function accepted(answer: StreamAsk | { refused: string }): StreamAsk {
  if ('refused' in answer) assert.fail(answer.refused);
  return answer;
}

// Parsing of stream requests: the resume id (a row id), CORS and the request target.

test('the resume id: Last-Event-ID wins over since=; digits only, at most 2^64-1, no leading zeros', () => {
  assert.equal(accepted(streamAsk('since=42', undefined, undefined, OPEN)).since, '42');
  assert.equal(accepted(streamAsk('since=42', '50', undefined, OPEN)).since, '50');
  assert.equal(accepted(streamAsk('since=007', undefined, undefined, OPEN)).since, '7');
  assert.equal(accepted(streamAsk('', undefined, undefined, OPEN)).since, null);
  // An empty value counts as absent.
  assert.equal(accepted(streamAsk('since=', '', undefined, OPEN)).since, null);
  assert.equal(
    accepted(streamAsk('since=18446744073709551615', undefined, undefined, OPEN)).since,
    '18446744073709551615',
  );
  for (const bad of ['18446744073709551616', '-1', '1e3', 'abc', '123456789012345678901']) {
    const answer = streamAsk(`since=${bad}`, undefined, undefined, OPEN);
    assert.ok('refused' in answer, bad);
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
  assert.deepEqual(
    accepted(streamAsk('', undefined, 'https://a.example', { ...OPEN, allowOrigin: '*' })).cors,
    {
      'Access-Control-Allow-Origin': '*',
    },
  );
});

test('request targets: origin form and absolute form; others refused', () => {
  assert.deepEqual(splitTarget('/stream?since=1'), { path: '/stream', query: 'since=1' });
  assert.deepEqual(splitTarget('/events'), { path: '/events', query: '' });
  assert.deepEqual(splitTarget('http://host/healthz?x'), { path: '/healthz', query: 'x' });
  assert.equal(splitTarget('*'), null);
  assert.equal(splitTarget('ftp://host/stream'), null);
});

test('channels: repeatable, prefixes with *, bad names and too many refused with the reason', () => {
  assert.equal(accepted(streamAsk('', undefined, undefined, OPEN)).subscription.all, true);
  const sub = accepted(
    streamAsk('channel=b&channel=a&channel=orders:*&channel=a', undefined, undefined, OPEN),
  ).subscription;
  assert.deepEqual(
    [sub.all, sub.exact, sub.prefixes, sub.key],
    [false, ['a', 'b'], ['orders:'], 'a,b,orders:*'],
  );
  assert.equal(accepted(streamAsk('channel=*', undefined, undefined, OPEN)).subscription.all, true);
  const bad = streamAsk('channel=a%20b', undefined, undefined, OPEN);
  assert.ok('refused' in bad && bad.refused.includes('"a b"'));
  const many = streamAsk('channel=a&channel=b&channel=c', undefined, undefined, {
    ...OPEN,
    maxChannels: 2,
  });
  assert.ok('refused' in many && /at most 2/.test(many.refused));
  assert.equal(
    accepted(streamAsk('access_token=abc', undefined, undefined, OPEN)).accessToken,
    'abc',
  );
});
