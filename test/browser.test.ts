import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { type Browser, chromium, type Page } from 'playwright-core';
import type { TestApp } from './helpers/app.js';
import { CHROMIUM, withContext } from './helpers/browser.js';
import { createTestDb, type TestDb } from './helpers/db.js';
import { openStream } from './helpers/stream.js';
import { waitUntil } from './helpers/wait.js';

// What a viewer sees: a real Chromium tab on GET /stream, as a user would open it.

// Every Playwright wait: generous, as a row shows within one 50 ms tick and a slow CI machine must
// not fail the test.
const SHOWN_WITHIN_MS = 10_000;

let db: TestDb;
let browser: Browser;
before(async () => {
  db = await createTestDb('browser');
  browser = await chromium.launch(CHROMIUM);
});
after(async () => {
  await browser?.close();
  await db?.drop();
});

/** Starts the server with `env`, opens /stream in a fresh tab, and closes both afterwards. */
async function withTab(
  env: Record<string, string>,
  body: (page: Page, app: TestApp) => Promise<void>,
): Promise<void> {
  await withContext(browser, db.url, env, async (app, context) => {
    const page = await context.newPage();
    page.setDefaultTimeout(SHOWN_WITHIN_MS);
    // The page never finishes loading: 'commit' is as far as navigation gets.
    await page.goto(app.streamUrl.href, { waitUntil: 'commit' });
    await waitUntil(() => app.app.hub.size === 1, "the tab's stream to open");
    await body(page, app);
  });
}

/** Waits until the row's fragment is rendered (in the DOM, with a layout box). */
async function shown(page: Page, id: string): Promise<void> {
  await page.locator(`.msg[data-id="${id}"]`).first().waitFor({ state: 'visible' });
}

/** Every `.msg` element of the page in document order, as the reader sees it. */
function messages(page: Page): Promise<{ id: string | undefined; text: string | null }[]> {
  return page
    .locator('.msg')
    .evaluateAll((els) =>
      els.map((el) => ({ id: (el as HTMLElement).dataset.id, text: el.textContent })),
    );
}

/** The `data-seq` of every `.msg` element of the page, in document order. */
function pageSeqs(page: Page): Promise<number[]> {
  return page
    .locator('.msg')
    .evaluateAll((els) => els.map((el) => Number((el as HTMLElement).dataset.seq)));
}

/** The seqs the claims gave these rows, in the order of `ids`. */
async function seqsOf(ids: readonly string[]): Promise<number[]> {
  const rows = await db.query<{ id: unknown; seq: unknown }[]>(
    'SELECT id, seq FROM msg WHERE id IN (?)',
    [ids],
  );
  const seqs = new Map(rows.map((row) => [String(row.id), Number(row.seq)]));
  return ids.map((id) => seqs.get(id) ?? Number.NaN);
}

function textOf(page: Page, id: string): Promise<string | null> {
  return page.locator(`.msg[data-id="${id}"]`).textContent();
}

test('a tab on /stream shows each new row as literal text, in delivery order, each once', async () => {
  await withTab({}, async (page) => {
    const [a] = (await db.insert('hi <b>there</b>')) as [string];
    await shown(page, a);
    assert.equal(await textOf(page, a), 'hi <b>there</b>');
    assert.equal(await page.locator('.msg b').count(), 0, 'markup must not become elements');

    // One statement, so one tick reads both: their order on the page is the batch's order.
    const [b, c] = (await db.insert('second', 'third')) as [string, string];
    await shown(page, c);
    // Rows reach the tab in stream order, so once a later row shows, any repeat of an earlier
    // one written by the ticks in between would show too.
    const [d] = (await db.insert('fourth')) as [string];
    await shown(page, d);
    assert.deepEqual(await messages(page), [
      { id: a, text: 'hi <b>there</b>' },
      { id: b, text: 'second' },
      { id: c, text: 'third' },
      { id: d, text: 'fourth' },
    ]);
    // Each fragment carries its place in the delivery order (docs/delivery.md 2, 4).
    const seqs = await seqsOf([a, b, c, d]);
    assert.deepEqual(await pageSeqs(page), seqs);
    assert.deepEqual(
      seqs.map((seq) => seq - (seqs[0] ?? 0)),
      [0, 1, 2, 3],
    );
  });
});

test('with PAD_BYTES=0 the first fragment renders although no byte follows it', async () => {
  // No heartbeat for an hour: after the row's fragment the server writes nothing, so a browser
  // that held bytes until more arrived would never render it.
  await withTab({ PAD_BYTES: '0', HEARTBEAT_MS: '3600000' }, async (page, app) => {
    const wire = await openStream(app.streamUrl);
    try {
      const [first] = (await db.insert('first')) as [string];
      await shown(page, first);
      assert.equal(await textOf(page, first), 'first');
      await wire.waitForIds([first]);
      const [seq] = await seqsOf([first]);
      assert.ok(
        wire.text.endsWith(`<div class="msg" data-id="${first}" data-seq="${seq}">first</div>\n`),
        'the fragment was the last byte on the wire',
      );

      assert.deepEqual(await page.evaluate(() => [document.characterSet, document.contentType]), [
        'UTF-8',
        'text/html',
      ]);
      const [intl] = (await db.insert('Grüße – 日本')) as [string];
      await shown(page, intl);
      assert.equal(await textOf(page, intl), 'Grüße – 日本');
    } finally {
      wire.close();
    }
  });
});

test('hostile rows neither run nor break the page; later rows still render', async () => {
  await withTab({}, async (page) => {
    // Quotes escape sixfold: a 6 MB frame that a tab reading at full speed must not be cut for.
    const big = `<i>${'"'.repeat(1_000_000 - 7)}</i>`;
    const markup = '</div><script>window.__pwned=1</script><img src=x onerror="window.__pwned=2">';
    const quotes = `She said "hi" & 'bye' &amp; &lt;b&gt; \\" \\'`;
    const ids = await db.insert(big, markup, quotes);
    const [bigId, markupId, quotesId] = ids as [string, string, string];
    assert.equal(Buffer.byteLength(big), 1_000_000);
    await shown(page, quotesId);
    // Inserted once the hostile batch has rendered, so it comes in a later batch: the stream
    // survived it.
    const [afterId] = (await db.insert('after')) as [string];
    await shown(page, afterId);

    const pwned = await page.evaluate(() => typeof (window as { __pwned?: unknown }).__pwned);
    assert.equal(pwned, 'undefined');
    assert.equal(await page.locator('body script, body img, .msg i').count(), 0);
    assert.equal(await textOf(page, markupId), markup);
    assert.equal(await textOf(page, quotesId), quotes);
    const bigText = await page
      .locator(`.msg[data-id="${bigId}"]`)
      .evaluate((el) => el.textContent ?? '');
    assert.equal(bigText.length, 1_000_000);
    assert.equal(bigText, big);
    assert.deepEqual(
      (await messages(page)).map((m) => m.id),
      [bigId, markupId, quotesId, afterId],
    );
    assert.equal(await textOf(page, afterId), 'after');
  });
});
