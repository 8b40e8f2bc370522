// Drives the relay dashboard in headless Chromium (playwright-core); started by
// test-dashboard.sh, which runs the stack and the load. Exits non-zero on failure.
"use strict";

const path = require("path");
const { chromium } = require(process.env.TERN_PLAYWRIGHT);

const admin = process.env.TERN_ADMIN;
const token = process.env.TERN_ADMIN_TOKEN.trim();
const relayId = process.env.TERN_RELAY_ID;
const artifacts = process.env.TERN_ARTIFACTS;

const checks = [];
function pass(what) { checks.push(["ok", what]); console.log("  ok    " + what); }
class Failure extends Error {}
function fail(what) { throw new Failure(what); }
function assert(cond, what) { if (!cond) fail(what); pass(what); }
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function waitFor(what, timeoutMs, probe) {
  const deadline = Date.now() + timeoutMs;
  let last;
  for (;;) {
    last = await probe();
    if (last) { pass(what); return last; }
    if (Date.now() > deadline) fail(what + " (not within " + timeoutMs / 1000 + " s)");
    await sleep(250);
  }
}

async function api(p) {
  const r = await fetch(admin + p, { headers: { Authorization: "Bearer " + token } });
  if (!r.ok) fail("GET " + p + " answered " + r.status);
  return r.json();
}

// "1,234", "12.5k", "1.20M", "3.4 ms" -> number
function num(text) {
  const m = String(text).replace(/,/g, "").match(/(-?[0-9.]+)\s*([kM]?)/);
  if (!m) return NaN;
  return parseFloat(m[1]) * (m[2] === "k" ? 1e3 : m[2] === "M" ? 1e6 : 1);
}

async function main() {
  const browser = await chromium.launch({
    executablePath: process.env.TERN_CHROMIUM,
    headless: true,
    args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
  });
  const problems = [];
  let page;
  const shot = async (name) => {
    const file = path.join(artifacts, name + ".png");
    await page.evaluate(() => window.scrollTo(0, 0)); // the sticky header at the top
    await page.screenshot({ path: file, fullPage: true });
    console.log("        screenshot " + file);
  };
  try {
    const context = await browser.newContext({ viewport: { width: 1440, height: 1000 } });
    page = await context.newPage();
    page.on("pageerror", (e) => problems.push("page error: " + e.message));
    page.on("console", (m) => {
      // 401s of the deliberately wrong token are expected; anything else is a problem
      // (CSP violations are reported here too).
      if (m.type() === "error" && !/401/.test(m.text())) problems.push("console: " + m.text());
    });

    // 1. The page, without a token: the sign-in form.
    const resp = await page.goto(admin + "/");
    assert(page.url() === admin + "/dashboard/", "GET / redirects to /dashboard/");
    const csp = resp.headers()["content-security-policy"] || "";
    assert(/default-src 'none'/.test(csp) && /script-src 'self'/.test(csp), "the page carries a strict CSP (" + csp.slice(0, 40) + "…)");
    await page.locator("#login").waitFor({ state: "visible" });
    pass("the sign-in form is shown");
    await shot("01-sign-in");

    // 2. A wrong token: a clear 401 message, still signed out.
    await page.fill("#token-input", "not-the-token");
    await page.click("#login-submit");
    await waitFor("a wrong token shows the 401 message", 10000, async () =>
      /401/.test(await page.textContent("#login-error")));
    assert(await page.isHidden("#main"), "nothing is shown with a wrong token");
    await shot("02-wrong-token");

    // 3. The right token.
    await page.fill("#token-input", token);
    await page.fill("#operator-input", "browser-test");
    await page.click("#login-submit");
    await page.locator("#main").waitFor({ state: "visible", timeout: 10000 });
    await waitFor("the header names the relay (" + relayId + ")", 10000, async () =>
      (await page.textContent("#relay-id")) === relayId);
    const stored = await page.evaluate(() => sessionStorage.getItem("tern.admin.token"));
    assert(stored === token, "the token is kept in sessionStorage");

    // 4. Live numbers under load: events/s > 0 and moving; charts drawn.
    const events = async () => num(await page.textContent("#kpi-events"));
    const seen = new Set();
    await waitFor("events/s is above 0 under load", 30000, async () => (await events()) > 0);
    await waitFor("events/s changes from second to second", 15000, async () => {
      seen.add(await page.textContent("#kpi-events"));
      seen.add(await page.textContent("#last-updated"));
      return seen.size >= 4;
    });
    await waitFor("forwarded batches/s is above 0", 10000, async () =>
      num(await page.textContent("#kpi-forwarded")) > 0);
    await waitFor("the throughput chart has a line", 10000, async () =>
      (await page.locator("#chart-events path.series").count()) === 1);
    await waitFor("the latency chart has p99 and mean lines, both > 0", 10000, async () => {
      const n = (await api("/admin/v1/status")).rates.now;
      return (await page.locator("#chart-latency path.series").count()) === 2 &&
        n.mean_ingest_ms > 0 && n.p99_ingest_ms > 0;
    });
    assert((await page.locator("#apps-body tr[data-app='demo']").count()) === 1, "the apps table lists the loaded app");
    assert(/closed/.test(await page.textContent("#breaker-badge")), "the breaker badge says closed");
    const hasDrain = (await api("/admin/v1/status")).drain !== undefined;
    assert((await page.isVisible("#drain-button")) === hasDrain,
      "the drain control is shown exactly when the relay reports a drain state (" + hasDrain + ")");
    await shot("03-live-under-load");

    // 5. Degrade forwarding, cancelled first: nothing changes.
    await page.click("#svc-forwarding-toggle");
    await page.locator("#confirm").waitFor({ state: "visible" });
    pass("degrading forwarding asks for confirmation");
    await shot("04-confirm-degrade");
    await page.click("#confirm-cancel");
    await sleep(1500);
    assert((await api("/admin/v1/status")).settings.switches.forwarding_degraded === false,
      "cancelling the confirmation changes nothing");

    // 6. Degrade forwarding, confirmed: the relay spools.
    const before = (await api("/admin/v1/status")).totals.degraded_spooled;
    await page.click("#svc-forwarding-toggle");
    await page.locator("#confirm").waitFor({ state: "visible" });
    await page.click("#confirm-ok");
    await waitFor("the services table shows forwarding DEGRADED", 10000, async () =>
      (await page.getAttribute("#svc-forwarding", "data-degraded")) === "true");
    await waitFor("the page shows spooled batches/s > 0", 15000, async () =>
      num(await page.textContent("#kpi-spooled")) > 0);
    await waitFor("the page shows forwarded batches/s back at 0", 15000, async () =>
      num(await page.textContent("#kpi-forwarded")) === 0);
    const s1 = await api("/admin/v1/status");
    assert(s1.settings.switches.forwarding_degraded === true, "the admin API reports forwarding degraded");
    await waitFor("totals.degraded_spooled grows (was " + before + ")", 10000, async () =>
      (await api("/admin/v1/status")).totals.degraded_spooled > before + 5);
    assert(/degraded/.test(await page.textContent("#forwarding-badge")), "the header badge says forwarding degraded");
    await waitFor("the audit log shows the change by browser-test", 10000, async () => {
      const t = await page.textContent("#audit-body");
      return /service\.forwarding/.test(t) && /browser-test/.test(t);
    });
    await sleep(2500); // let the charts show the switch
    await shot("05-forwarding-degraded");

    // 7. Restore: forwarding again.
    const restoredAt = (await api("/admin/v1/status")).totals.degraded_spooled;
    await page.click("#svc-forwarding-toggle");
    await waitFor("the services table shows forwarding NORMAL", 10000, async () =>
      (await page.getAttribute("#svc-forwarding", "data-degraded")) === "false");
    await waitFor("the page shows forwarded batches/s > 0 again", 15000, async () =>
      num(await page.textContent("#kpi-forwarded")) > 0);
    await sleep(1500);
    const s2 = await api("/admin/v1/status");
    assert(s2.totals.degraded_spooled - restoredAt <= 50,
      "degraded spooling stopped after restore (" + (s2.totals.degraded_spooled - restoredAt) + " batches in flight at the switch)");
    await sleep(2000);
    await shot("06-forwarding-restored");

    // 8. Emergency block of the app (confirmed, with a reason): its devices get Retry.
    await page.click("#apps-body tr[data-app='demo'] button.danger");
    await page.locator("#confirm-reason").waitFor({ state: "visible" });
    pass("blocking an app asks for confirmation and a reason");
    await page.fill("#confirm-reason", "browser-test incident");
    await page.click("#confirm-ok");
    await waitFor("the apps table shows demo BLOCKED with the reason", 10000, async () =>
      /BLOCKED: browser-test incident/.test(await page.textContent("#apps-body tr[data-app='demo']")));
    await waitFor("the page shows Retry/s > 0 for the blocked app", 15000, async () =>
      num(await page.textContent("#kpi-retried")) > 0);
    assert((await api("/admin/v1/status")).settings.blocked_apps.demo === "browser-test incident",
      "the admin API reports the block and its reason");
    await shot("07-app-blocked");
    await page.click("#apps-body tr[data-app='demo'] button.primary");
    await waitFor("unblocking clears the block", 10000, async () =>
      !(await api("/admin/v1/status")).settings.blocked_apps.demo);

    // 9. Breaker forced open (confirmed), then back to automatic.
    await page.click("#breaker-force-open");
    await page.locator("#confirm").waitFor({ state: "visible" });
    await page.click("#confirm-ok");
    await waitFor("the breaker badge says forced open", 10000, async () =>
      /forced open/.test(await page.textContent("#breaker-badge")));
    assert((await api("/admin/v1/status")).breaker.state === "forced_open", "the admin API reports the breaker forced open");
    await page.click("#breaker-auto");
    await waitFor("the breaker is automatic again", 10000, async () =>
      (await api("/admin/v1/status")).breaker.setting === "auto");

    assert(problems.length === 0, "no page errors or CSP violations" + (problems.length ? ": " + problems.join("; ") : ""));

    // 10. Drain (relays with #7 item 3), confirmed: the relay drains and exits; the
    // page says the live data is failing instead of showing stale numbers as live.
    if (hasDrain) {
      await page.click("#drain-button");
      await page.locator("#confirm").waitFor({ state: "visible" });
      await page.click("#confirm-ok");
      await waitFor("the relay drains and exits (admin API gone)", 60000, async () => {
        try { await fetch(admin + "/admin/v1/status", { headers: { Authorization: "Bearer " + token } }); return false; }
        catch (_) { return true; }
      });
      await waitFor("the page shows the failure banner", 10000, async () =>
        (await page.isVisible("#error-banner")) && /failing/.test(await page.textContent("#error-banner")));
      await shot("08-drained");
    }

    // 11. Sign out: the token is gone.
    await page.click("#sign-out");
    assert(await page.evaluate(() => sessionStorage.getItem("tern.admin.token")) === null, "signing out forgets the token");
  } catch (e) {
    if (page) await shot("99-failure").catch(() => {});
    throw e;
  } finally {
    await browser.close();
  }
}

main().then(
  () => { console.log("\nbrowser test: " + checks.length + " checks passed"); },
  (e) => {
    console.error("\nbrowser test FAILED: " + (e instanceof Failure ? e.message : e.stack || e));
    process.exitCode = 1;
  },
);
