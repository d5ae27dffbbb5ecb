import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import mysql from 'mysql2/promise';
import { type Browser, type BrowserContext, chromium, type Page } from 'playwright-core';
import { startApp, type TestApp } from './helpers/app.js';
import { CHROMIUM, withContext } from './helpers/browser.js';
import { connectionOptions, createTestDb, type TestDb } from './helpers/db.js';
import { waitUntil } from './helpers/wait.js';

// The demo page at GET / (issue 5), as a user sees it in a real Chromium tab: live messages,
// resume after a restart, the DOM cap, the forever-frame fallback and the publish form.

// Every Playwright wait. A row shows within one 50 ms tick, but an EventSource that lost its
// server retries every 2 s (the stream's `retry:`), and a slow CI machine must not fail the test.
const SHOWN_WITHIN_MS = 15_000;
const TOKEN = 'demo-secret-token';

let db: TestDb;
let browser: Browser;
before(async () => {
  db = await createTestDb('demo');
  browser = await chromium.launch(CHROMIUM);
});
after(async () => {
  await browser?.close();
  await db?.drop();
});

/** Starts a server with a publish token, gives `body` a fresh browser context, closes both. */
async function withDemo(
  env: Record<string, string>,
  body: (app: TestApp, context: BrowserContext) => Promise<void>,
): Promise<void> {
  await withContext(browser, db.url, { PUBLISH_TOKEN: TOKEN, ...env }, body);
}

/** Opens the demo page (`path` may carry a query) and waits until it says it is live. */
async function openDemo(context: BrowserContext, app: TestApp, path = '/'): Promise<Page> {
  const page = await context.newPage();
  page.setDefaultTimeout(SHOWN_WITHIN_MS);
  // The fallback's forever frame never finishes loading, and so neither does the page.
  await page.goto(new URL(path, app.url).href, { waitUntil: 'domcontentloaded' });
  await waitLive(page);
  return page;
}

async function waitLive(page: Page): Promise<void> {
  await page.locator('#state[data-state="live"]').waitFor();
}

/** The list as the reader sees it: each item's row id and text, top to bottom. */
function items(page: Page): Promise<{ id: string | undefined; text: string | null }[]> {
  return page.locator('#messages li').evaluateAll((els) =>
    els.map((el) => ({
      id: (el as HTMLElement).dataset.id,
      text: el.querySelector('.text')?.textContent ?? null,
    })),
  );
}

async function ids(page: Page): Promise<string[]> {
  return (await items(page)).map((item) => item.id as string);
}

/** Waits until the message with this row id is in the list. */
async function shown(page: Page, id: string): Promise<void> {
  await page.locator(`#messages li[data-id="${id}"]`).waitFor();
}

/** Waits until a message with exactly this text is in the list; returns its row id. */
async function shownText(page: Page, text: string): Promise<string> {
  const item = page.locator('#messages li').filter({
    has: page.locator('.text', { hasText: new RegExp(`^${escapeRegExp(text)}$`) }),
  });
  await item.first().waitFor();
  return (await item.first().getAttribute('data-id')) as string;
}

/** Waits until the message box is empty again, as it is after a 201. */
async function inputCleared(page: Page): Promise<void> {
  await page.waitForFunction(
    () => (document.getElementById('content') as HTMLTextAreaElement).value === '',
  );
}

async function rowsWith(content: string): Promise<number> {
  const rows = await db.query<{ n: number }[]>('SELECT COUNT(*) AS n FROM msg WHERE content = ?', [
    content,
  ]);
  return Number(rows[0]?.n);
}

function escapeRegExp(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

test('a message sent through the form shows in two tabs, once in each', async () => {
  await withDemo({}, async (app, context) => {
    const sender = await openDemo(context, app);
    const viewer = await openDemo(context, app);
    assert.equal(await sender.locator('#token-row').isVisible(), true, 'the token is asked for');

    const first = 'hello <b>both</b> & "you"';
    await sender.locator('#token').fill(TOKEN);
    await sender.locator('#content').fill(first);
    await sender.getByRole('button', { name: 'Send' }).click();
    await inputCleared(sender);
    const firstId = await shownText(viewer, first);
    await shown(sender, firstId);

    // The token was kept: the second message goes out with Enter and no question asked.
    assert.equal(await sender.locator('#token-row').isVisible(), false);
    const second = 'second line\nof the second message';
    await sender.locator('#content').fill(second);
    await sender.locator('#content').press('Enter');
    const secondId = await shownText(viewer, second);
    await shown(sender, secondId);

    const expected = [
      { id: firstId, text: first },
      { id: secondId, text: second },
    ];
    assert.deepEqual(await items(sender), expected);
    assert.deepEqual(await items(viewer), expected);
    assert.equal(await viewer.locator('#messages b').count(), 0, 'content is text, not markup');
    assert.equal(await rowsWith(first), 1);
    assert.equal(await rowsWith(second), 1);
  });
});

test('after a server restart the page shows exactly the rows inserted while it was down', async () => {
  const context = await browser.newContext();
  let app = await startApp(db.url, { PUBLISH_TOKEN: TOKEN });
  try {
    const port = app.url.port;
    const page = await openDemo(context, app);
    const before = await db.insert('before 1', 'before 2');
    await shown(page, before[1] as string);

    await app.close();
    await page.locator('#state:not([data-state="live"])').waitFor();
    // One row at a time, as separate publishers would while nobody streams.
    const down: string[] = [];
    for (const content of ['down 1', 'down 2', 'down 3']) down.push(...(await db.insert(content)));
    app = await startApp(db.url, { PUBLISH_TOKEN: TOKEN, PORT: port });

    await shown(page, down[2] as string);
    await waitLive(page);
    const [live] = (await db.insert('after restart')) as [string];
    await shown(page, live);
    assert.deepEqual(await items(page), [
      { id: before[0], text: 'before 1' },
      { id: before[1], text: 'before 2' },
      { id: down[0], text: 'down 1' },
      { id: down[1], text: 'down 2' },
      { id: down[2], text: 'down 3' },
      { id: live, text: 'after restart' },
    ]);
  } finally {
    await context.close();
    await app.close();
  }
});

test('with ?cap=20 the list keeps the newest 20 of 50 messages', async () => {
  await withDemo({}, async (app, context) => {
    const page = await openDemo(context, app, '/?cap=20');
    const rows = await db.insert(...Array.from({ length: 50 }, (_, i) => `row ${i + 1}`));
    await shown(page, rows[49] as string);
    assert.deepEqual(await ids(page), rows.slice(30));
    assert.equal(
      await page.locator('#messages li').first().locator('.text').textContent(),
      'row 31',
    );
  });
});

test('without EventSource the page reads a hidden forever frame and reloads it from the last id', async () => {
  await withDemo({}, async (app, context) => {
    await context.addInitScript(() => {
      delete (window as { EventSource?: unknown }).EventSource;
    });
    // Reloaded every 5 rows here, so 12 rows take it through at least two reloads.
    const page = await openDemo(context, app, '/?reload=5');
    assert.equal(await page.evaluate(() => typeof window.EventSource), 'undefined');
    const frame = page.locator('iframe');
    assert.equal(await frame.isHidden(), true);

    const rows: string[] = [];
    for (let i = 1; i <= 12; i++) {
      rows.push(...(await db.insert(`frame row ${i} <i>x</i>`)));
      if (i % 4 === 0) await shown(page, rows[i - 1] as string);
    }
    await shown(page, rows[11] as string);
    assert.match((await frame.getAttribute('src')) ?? '', /^\/stream\?since=\d+$/);
    const [last] = (await db.insert('after the reloads')) as [string];
    await shown(page, last);
    assert.deepEqual(await items(page), [
      ...rows.map((id, i) => ({ id, text: `frame row ${i + 1} <i>x</i>` })),
      { id: last, text: 'after the reloads' },
    ]);
  });
});

test('a wrong token is asked for again and publishes nothing', async () => {
  await withDemo({}, async (app, context) => {
    const page = await openDemo(context, app);
    const text = 'sent with a wrong token';
    await page.locator('#token').fill('not-the-token');
    await page.locator('#content').fill(text);
    await page.getByRole('button', { name: 'Send' }).click();

    await page
      .getByRole('alert')
      .filter({ hasText: /wrong publish token/i })
      .waitFor();
    await page.locator('#token').waitFor({ state: 'visible' });
    assert.equal(await page.locator('#token').inputValue(), '');
    assert.equal(await page.locator('#content').inputValue(), text, 'the message is kept');
    assert.equal(await page.evaluate(() => sessionStorage.getItem('rowcast.token')), null);
    assert.equal(await rowsWith(text), 0);

    await page.locator('#token').fill(TOKEN);
    await page.getByRole('button', { name: 'Send' }).click();
    const id = await shownText(page, text);
    assert.equal(await page.getByRole('alert').isVisible(), false);
    assert.deepEqual(await items(page), [{ id, text }]);
    assert.equal(await rowsWith(text), 1);
  });
});

test('a 503 leaves EventSource closed: the page starts over with ?since= after a pause', async () => {
  const context = await browser.newContext();
  let app = await startApp(db.url, { PUBLISH_TOKEN: TOKEN });
  try {
    const port = app.url.port;
    const page = await openDemo(context, app);
    const [first] = (await db.insert('seen before the 503')) as [string];
    await shown(page, first);

    // What an overloaded or stopping server answers; EventSource does not retry after it.
    const refused: string[] = [];
    await page.route('**/events*', (route) => {
      refused.push(new URL(route.request().url()).search);
      return route.fulfill({ status: 503, headers: { 'Retry-After': '5' }, body: 'full\n' });
    });
    await app.close();
    const missed = await db.insert('missed 1', 'missed 2');
    app = await startApp(db.url, { PUBLISH_TOKEN: TOKEN, PORT: port });
    // The page's own retry, not the browser's, asks again: the request carries ?since=.
    await waitUntil(() => refused.includes(`?since=${first}`), 'a retry with ?since=');
    await page.locator('#state:is([data-state="reconnecting"], [data-state="offline"])').waitFor();
    await page.unroute('**/events*');

    await shown(page, missed[1] as string);
    await waitLive(page);
    assert.deepEqual(await items(page), [
      { id: first, text: 'seen before the 503' },
      { id: missed[0], text: 'missed 1' },
      { id: missed[1], text: 'missed 2' },
    ]);
  } finally {
    await context.close();
    await app.close();
  }
});

test('a tab that comes back to the page gets the rows it missed, from sessionStorage', async () => {
  await withDemo({}, async (app, context) => {
    const page = await openDemo(context, app);
    const [seen] = (await db.insert('seen')) as [string];
    await shown(page, seen);
    await page.goto('about:blank');
    const missed = await db.insert('missed while away 1', 'missed while away 2');
    await db.waitMarked(missed);

    await page.goto(app.url.href, { waitUntil: 'domcontentloaded' });
    await shown(page, missed[1] as string);
    assert.deepEqual(await items(page), [
      { id: missed[0], text: 'missed while away 1' },
      { id: missed[1], text: 'missed while away 2' },
    ]);
  });
});

test('rows delivered out of id order: the page resumes after the last one it received', async () => {
  await withDemo({}, async (app, context) => {
    const page = await openDemo(context, app);
    // A writer whose transaction is still open holds the smaller id; a faster one commits the
    // next id, which is claimed first (docs/delivery.md 2: seq order, not id order).
    const slow = await mysql.createConnection({ ...connectionOptions(), database: db.name });
    let slowId: string;
    try {
      await slow.beginTransaction();
      const [result] = await slow.query('INSERT INTO msg (content) VALUES (?)', ['slow writer']);
      slowId = String((result as { insertId: number }).insertId);
      const [fastId] = (await db.insert('fast writer')) as [string];
      assert.ok(BigInt(fastId) > BigInt(slowId));
      await shown(page, fastId);
      await slow.commit();
      await shown(page, slowId);
      assert.deepEqual(await items(page), [
        { id: fastId, text: 'fast writer' },
        { id: slowId, text: 'slow writer' },
      ]);
    } finally {
      await slow.end();
    }

    await page.goto('about:blank');
    const [away] = (await db.insert('while away')) as [string];
    await db.waitMarked([away]);
    await page.goto(app.url.href, { waitUntil: 'domcontentloaded' });
    await shown(page, away);
    // Resumed after the slow writer's row, the last received, not after the largest id (which
    // would bring the slow writer's row back as if it had been missed).
    assert.deepEqual(await items(page), [{ id: away, text: 'while away' }]);
  });
});

test('a tab back after more than REPLAY_LIMIT rows says older ones are missing, either way in', async () => {
  await withDemo({ REPLAY_LIMIT: '2' }, async (app) => {
    for (const way of ['EventSource', 'forever frame'] as const) {
      // A context of its own each: sessionStorage (the last id) is not shared.
      const tab = await browser.newContext();
      try {
        if (way === 'forever frame') {
          await tab.addInitScript(() => {
            delete (window as { EventSource?: unknown }).EventSource;
          });
        }
        const page = await openDemo(tab, app);
        const [seen] = (await db.insert(`seen (${way})`)) as [string];
        await shown(page, seen);
        assert.equal(await page.locator('#gap').isVisible(), false, `${way}: no gap while live`);
        await page.goto('about:blank');
        const missed = await db.insert(...[1, 2, 3, 4, 5].map((n) => `missed ${n} (${way})`));
        await db.waitMarked(missed);

        await page.goto(app.url.href, { waitUntil: 'domcontentloaded' });
        await shown(page, missed[4] as string);
        // docs/delivery.md 4: the newest REPLAY_LIMIT rows, after the word that some are missing.
        await page.locator('#gap[data-reason="limit"]').waitFor();
        assert.match((await page.locator('#gap').textContent()) ?? '', /older ones are not shown/);
        assert.deepEqual(await items(page), [
          { id: missed[3], text: `missed 4 (${way})` },
          { id: missed[4], text: `missed 5 (${way})` },
        ]);
        const [live] = (await db.insert(`live (${way})`)) as [string];
        await shown(page, live);
        assert.deepEqual((await ids(page)).slice(-1), [live], way);
      } finally {
        await tab.close();
      }
    }
  });
});

test('the list follows new messages only while the reader is at the bottom', async () => {
  await withDemo({}, async (app, context) => {
    const page = await openDemo(context, app);
    const rows = await db.insert(...Array.from({ length: 40 }, (_, i) => `line ${i + 1}`));
    await shown(page, rows[39] as string);
    assert.equal(await inView(page, rows[39] as string), true, 'followed to the newest');

    await page.locator('#log').evaluate((log) => {
      log.scrollTop = 0;
    });
    const [late] = (await db.insert('while scrolled up')) as [string];
    await shown(page, late);
    await page.getByRole('button', { name: /new messages/i }).waitFor();
    assert.equal(await inView(page, rows[0] as string), true, 'the reader keeps their place');
    assert.equal(await inView(page, late), false);

    await page.getByRole('button', { name: /new messages/i }).click();
    await waitUntil(() => inView(page, late), 'the newest message in view');
    await page.getByRole('button', { name: /new messages/i }).waitFor({ state: 'hidden' });
  });
});

/** Whether the whole item is inside the visible part of the list. */
function inView(page: Page, id: string): Promise<boolean> {
  return page.evaluate((id) => {
    const log = document.getElementById('log') as HTMLElement;
    const item = document.querySelector(`#messages li[data-id="${id}"]`) as HTMLElement;
    const box = item.getBoundingClientRect();
    const view = log.getBoundingClientRect();
    return box.top >= view.top && box.bottom <= view.bottom;
  }, id);
}
