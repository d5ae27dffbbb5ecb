import type { Browser, BrowserContext } from 'playwright-core';
import { type TestApp, withApp } from './app.js';

/** Debian's Chromium, headless, as root on a machine whose network refuses its own traffic. */
export const CHROMIUM = {
  executablePath: '/usr/bin/chromium',
  args: [
    '--no-sandbox',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync',
    '--disable-quic',
    '--no-first-run',
    '--disable-gpu',
  ],
};

/** Runs `body` with a test server of its own and a fresh browser context; closes both after. */
export async function withContext(
  browser: Browser,
  databaseUrl: string,
  env: Record<string, string>,
  body: (app: TestApp, context: BrowserContext) => Promise<void>,
): Promise<void> {
  await withApp(databaseUrl, env, async (app) => {
    const context = await browser.newContext();
    try {
      await body(app, context);
    } finally {
      await context.close();
    }
  });
}
