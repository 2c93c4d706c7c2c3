// A tiny line-oriented driver for Debian's firefox-esr over WebDriver BiDi (puppeteer-core),
// for tests/browser/test_firefox.py: Playwright cannot drive a stock Firefox.
//
// stdin: one JSON command per line {id, op, ...}; stdout: one JSON answer per line
// {id, ok, value | error}. Ops: launch {prefs, initScript}, goto {url}, eval {expr} (an
// expression or an async arrow body, awaited), click {selector}, reload, close.
// Console lines of the page are sent as {event: "console", text}.

import readline from "node:readline";
import puppeteer from "puppeteer-core";

const FIREFOX = process.env.FIREFOX_BIN || "/usr/bin/firefox-esr";
let browser = null;
let page = null;

function send(obj) {
  process.stdout.write(JSON.stringify(obj) + "\n");
}

const ops = {
  async launch({ prefs = {}, initScript = null, viewport = { width: 1280, height: 800 } }) {
    browser = await puppeteer.launch({
      browser: "firefox",
      executablePath: FIREFOX,
      headless: true,
      protocolTimeout: 30000,
      extraPrefsFirefox: prefs,
      args: [`--width=${viewport.width}`, `--height=${viewport.height}`],
    });
    page = await browser.newPage();
    await page.setViewport(viewport);
    page.on("console", (msg) => send({ event: "console", text: `[${msg.type()}] ${msg.text()}` }));
    page.on("pageerror", (err) => send({ event: "console", text: `[pageerror] ${err?.message ?? err}` }));
    if (initScript) await page.evaluateOnNewDocument(initScript);
    return (await browser.version()) || "firefox";
  },
  async goto({ url }) {
    await page.goto(url, { waitUntil: "load" });
    return page.url();
  },
  async eval({ expr }) {
    // `expr` is wrapped so both plain expressions and promises are awaited.
    return await page.evaluate(`(async () => (${expr}))()`);
  },
  async click({ selector }) {
    await page.click(selector);
    return true;
  },
  async reload() {
    await page.reload({ waitUntil: "load" });
    return true;
  },
  async close() {
    if (browser) await browser.close();
    browser = null;
    return true;
  },
};

const rl = readline.createInterface({ input: process.stdin });
rl.on("line", async (line) => {
  let cmd;
  try {
    cmd = JSON.parse(line);
  } catch {
    return;
  }
  try {
    const value = await ops[cmd.op](cmd);
    send({ id: cmd.id, ok: true, value: value ?? null });
  } catch (err) {
    send({ id: cmd.id, ok: false, error: String(err?.stack ?? err) });
  }
  if (cmd.op === "close") process.exit(0);
});
rl.on("close", async () => {
  if (browser) await browser.close().catch(() => {});
  process.exit(0);
});
