#!/usr/bin/env node
// The wallboard in a real browser: Debian's chromium, headless, driven by playwright-core.
//
//   node tests/browser/wallboard.js --url http://127.0.0.1:PORT/wallboard \
//        --screenshot build/wallboard.png [--broker-pid PID] [--timeout-s 240]
//
// Loads the page and checks, while the caller puts calls on the stack, that every figure shown
// matches /wallboard.json fetched at the same moment and that the figures move. It prints
// "ready" once the page is live, then waits for the line "load-done" on stdin; then it checks
// the settled board once more, saves the screenshot and, given the broker's pid, pauses the
// broker (SIGSTOP) to see the page mark itself stale, and resumes it (SIGCONT) to see it recover.
// The last line on stdout is a JSON summary; exit status 0 only when every check passed.
'use strict';

const fs = require('fs');
const path = require('path');
const readline = require('readline');
const { chromium } = require('playwright-core');

function parseArgs(argv) {
  const o = { timeoutS: 240, chromium: process.env.CHROMIUM || '/usr/bin/chromium' };
  for (let i = 2; i < argv.length; i++) {
    const v = argv[i + 1];
    switch (argv[i]) {
      case '--url': o.url = v; i++; break;
      case '--screenshot': o.screenshot = v; i++; break;
      case '--broker-pid': o.brokerPid = parseInt(v, 10); i++; break;
      case '--timeout-s': o.timeoutS = parseFloat(v); i++; break;
      case '--chromium': o.chromium = v; i++; break;
      default: throw new Error('unknown argument ' + argv[i]);
    }
  }
  if (!o.url || !o.screenshot) throw new Error('--url and --screenshot are required');
  return o;
}

// The page's display rules (docs/wallboard.md), written out again so that the test checks the
// page against the specification rather than against itself.
const DASH = '\u2014';
function pad(n) { return (n < 10 ? '0' : '') + n; }
function fmtCount(v) { return v == null ? DASH : String(v).replace(/\B(?=(\d{3})+(?!\d))/g, ','); }
function fmtDuration(ms) {
  if (ms == null) return DASH;
  const s = Math.floor(ms / 1000), h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60);
  return (h ? h + ':' + pad(m) : String(m)) + ':' + pad(s % 60);
}
function fmtPct0(x) { return x == null ? DASH : Math.round(x * 100) + '%'; }
function fmtPct1(x) { return x == null ? DASH : (x * 100).toFixed(1) + '%'; }
function expectedText(key, v) {
  if (key === 'longest_wait_ms' || key === 'asa_ms') return fmtDuration(v);
  if (key === 'service_level') return fmtPct0(v);
  if (key === 'abandon_rate') return fmtPct1(v);
  return fmtCount(v);
}
const OVERALL_KEYS = ['calls_waiting', 'calls_ringing', 'calls_connected', 'longest_wait_ms',
  'service_level', 'asa_ms', 'answered', 'abandon_rate', 'abandoned', 'overflow'];
const PROGRAM_KEYS = ['calls_waiting', 'longest_wait_ms', 'service_level', 'asa_ms', 'abandon_rate',
  'calls_ringing', 'calls_connected', 'answered'];
const STATES = ['OFFLINE', 'NOT_READY', 'AVAILABLE', 'RESERVED', 'ON_CALL', 'WRAP_UP'];
// Waits move with the clock between the page's fetch and ours: allow this much.
const WAIT_SLACK_MS = 1500;

// Waits for the page's next render, reads every figure it shows, then fetches the JSON itself:
// the two are a few milliseconds apart.
async function sample(page) {
  return page.evaluate(async () => {
    const before = document.body.getAttribute('data-as-of');
    const t0 = Date.now();
    while (document.body.getAttribute('data-as-of') === before && Date.now() - t0 < 3000)
      await new Promise((r) => setTimeout(r, 10));
    const read = (el) => ({ text: el.textContent, value: el.getAttribute('data-value') });
    const shown = { overall: {}, agents: {}, programs: {}, top: [], asOf: document.body.getAttribute('data-as-of') };
    document.querySelectorAll('#overall [data-key]').forEach((el) => {
      shown.overall[el.getAttribute('data-key')] = read(el);
    });
    document.querySelectorAll('#agents [data-state]').forEach((el) => {
      shown.agents[el.getAttribute('data-state')] = read(el);
    });
    document.querySelectorAll('#programs tr[data-program]').forEach((tr) => {
      const row = { name: tr.querySelector('td.name').firstChild.textContent, top: tr.querySelector('td.name .top').textContent };
      tr.querySelectorAll('[data-key]').forEach((el) => { row[el.getAttribute('data-key')] = read(el); });
      shown.programs[tr.getAttribute('data-program')] = row;
    });
    document.querySelectorAll('#top li[data-agent]').forEach((li) => {
      shown.top.push({ id: li.getAttribute('data-agent'), text: li.textContent });
    });
    shown.stale = document.body.classList.contains('stale');
    shown.status = document.getElementById('status').textContent;
    const r = await fetch('wallboard.json', { cache: 'no-store' });
    const json = await r.json();
    return { shown, json };
  });
}

function valueString(v) { return v == null ? '' : String(v); }

// Differences between what the page shows and the JSON; [] when they agree.
function compare(shown, json) {
  const diffs = [];
  const check = (where, key, got, want) => {
    if (got === undefined) { diffs.push(where + ' ' + key + ': not shown'); return; }
    if (key === 'longest_wait_ms') {
      const g = got.value === '' ? null : Number(got.value);
      if ((g == null) !== (want == null) || Math.abs((g || 0) - (want || 0)) > WAIT_SLACK_MS)
        diffs.push(where + ' ' + key + ': shown ' + got.value + ', JSON ' + want);
      return;
    }
    if (got.value !== valueString(want))
      diffs.push(where + ' ' + key + ': shown value ' + JSON.stringify(got.value) + ', JSON ' + JSON.stringify(want));
    if (got.text !== expectedText(key, want))
      diffs.push(where + ' ' + key + ': shown text ' + JSON.stringify(got.text) + ', expected ' + JSON.stringify(expectedText(key, want)));
  };
  for (const k of OVERALL_KEYS) check('overall', k, shown.overall[k], json.overall[k]);
  for (const s of STATES) {
    const want = json.overall.agents ? json.overall.agents[s] : null;
    const got = shown.agents[s];
    if (!got || got.value !== valueString(want) || got.text !== fmtCount(want))
      diffs.push('agents ' + s + ': shown ' + JSON.stringify(got) + ', JSON ' + want);
  }
  const ids = json.programs.map((p) => p.id);
  const shownIds = Object.keys(shown.programs);
  if (ids.join(',') !== shownIds.join(','))
    diffs.push('programs: shown ' + shownIds.join(',') + ', JSON ' + ids.join(','));
  for (const p of json.programs) {
    const row = shown.programs[p.id];
    if (!row) continue;
    if (row.name !== (p.name || p.id)) diffs.push('program ' + p.id + ' name: shown ' + row.name);
    for (const k of PROGRAM_KEYS) check('program ' + p.id, k, row[k], p[k]);
    for (const a of p.top_agents) {
      if (!row.top.includes(a.name)) diffs.push('program ' + p.id + ' top agents: ' + a.name + ' missing');
    }
  }
  const wantTop = (json.overall.top_agents || []).map((a) => String(a.id));
  const gotTop = shown.top.map((t) => t.id);
  if (wantTop.join(',') !== gotTop.join(','))
    diffs.push('top agents: shown ' + gotTop.join(',') + ', JSON ' + wantTop.join(','));
  for (const a of json.overall.top_agents || []) {
    const t = shown.top.find((x) => x.id === String(a.id));
    if (t && t.text !== a.score.toFixed(1) + a.name)
      diffs.push('top agent ' + a.id + ': shown ' + JSON.stringify(t.text));
  }
  return diffs;
}

async function waitFor(page, fn, arg, timeoutMs, what) {
  try {
    await page.waitForFunction(fn, arg, { timeout: timeoutMs, polling: 100 });
  } catch (e) {
    throw new Error('timed out waiting for ' + what);
  }
}

async function main() {
  const opt = parseArgs(process.argv);
  const deadline = Date.now() + opt.timeoutS * 1000;
  const summary = { samples: 0, matched: 0, mismatched: 0, moved: {}, screenshot: opt.screenshot };
  const failures = [];
  const origin = new URL(opt.url).origin;

  let loadDone = false;
  const rl = readline.createInterface({ input: process.stdin });
  rl.on('line', (line) => { if (line.trim() === 'load-done') loadDone = true; });
  rl.on('close', () => { loadDone = true; });

  const browser = await chromium.launch({
    executablePath: opt.chromium,
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'],
  });
  let paused = false;
  try {
    const page = await browser.newPage({ viewport: { width: 1920, height: 1080 } });
    const foreign = [];
    const pageErrors = [];
    page.on('request', (r) => { if (!r.url().startsWith(origin + '/')) foreign.push(r.url()); });
    page.on('pageerror', (e) => pageErrors.push(String(e)));
    page.on('console', (m) => { if (m.type() === 'error') pageErrors.push(m.text()); });

    const resp = await page.goto(opt.url, { waitUntil: 'load' });
    if (!resp || resp.status() !== 200) throw new Error('GET ' + opt.url + ': ' + (resp ? resp.status() : 'no answer'));
    await waitFor(page, () => document.body.hasAttribute('data-as-of') &&
      document.getElementById('status').textContent === 'LIVE', null, 10000, 'the page to go live');
    console.log('ready');

    // Under load: every figure matches, and the figures move.
    const first = await sample(page);
    let last = first;
    let streak = 0;
    let shotTaken = false;
    let sawWaiting = false, sawConnected = false;
    while (!loadDone) {
      if (Date.now() > deadline) throw new Error('no load-done line before the time limit');
      const s = await sample(page);
      summary.samples++;
      const diffs = compare(s.shown, s.json);
      if (diffs.length === 0) {
        summary.matched++;
        streak = 0;
      } else {
        // A call may change state between the page's fetch and ours: only a disagreement
        // that persists is a fault.
        summary.mismatched++;
        if (++streak >= 5) failures.push('page and JSON disagree in 5 samples running: ' + diffs.join('; '));
        if (streak >= 5) break;
      }
      const o = s.shown.overall;
      if (Number(o.calls_waiting.value) > 0) sawWaiting = true;
      if (Number(o.calls_connected.value) > 0) sawConnected = true;
      if (!shotTaken && Number(o.calls_connected.value) > 0 && Number(o.answered.value) > 0) {
        fs.mkdirSync(path.dirname(opt.screenshot), { recursive: true });
        await page.screenshot({ path: opt.screenshot, fullPage: true });
        shotTaken = true;
      }
      last = s;
      await page.waitForTimeout(300);
    }

    // Settled: no call moves, so the page and the JSON must agree exactly.
    await page.waitForTimeout(1200);
    let settled = null;
    for (let i = 0; i < 5; i++) {
      const s = await sample(page);
      const diffs = compare(s.shown, s.json);
      if (diffs.length === 0) { settled = s; break; }
      if (i === 4) failures.push('settled board: ' + diffs.join('; '));
    }
    if (settled) {
      last = settled;
      summary.matched++;
    }
    for (const k of ['answered', 'abandoned']) {
      const a = Number(first.shown.overall[k].value), b = Number(last.shown.overall[k].value);
      summary.moved[k] = [a, b];
      if (!(b > a)) failures.push('overall ' + k + ' did not move while calls flowed: ' + a + ' -> ' + b);
    }
    if (!sawConnected) failures.push('the page never showed a connected call');
    if (!sawWaiting) failures.push('the page never showed a waiting call');
    summary.sawWaiting = sawWaiting;
    summary.sawConnected = sawConnected;
    if (summary.matched < 3) failures.push('only ' + summary.matched + ' samples matched the JSON');
    if (!shotTaken) {
      fs.mkdirSync(path.dirname(opt.screenshot), { recursive: true });
      await page.screenshot({ path: opt.screenshot, fullPage: true });
    }

    // The broker stops answering: the page says so, and recovers when it answers again.
    if (opt.brokerPid) {
      process.kill(opt.brokerPid, 'SIGSTOP');
      paused = true;
      try {
        await waitFor(page, () => document.body.classList.contains('stale') &&
          document.getElementById('status').textContent.startsWith('STALE'), null, 10000,
          'the stale marker while the broker is paused');
        const stalePath = opt.screenshot.replace(/\.png$/, '') + '-stale.png';
        await page.screenshot({ path: stalePath });
        summary.staleScreenshot = stalePath;
      } catch (e) {
        failures.push(e.message);
      }
      process.kill(opt.brokerPid, 'SIGCONT');
      paused = false;
      try {
        await waitFor(page, () => !document.body.classList.contains('stale') &&
          document.getElementById('status').textContent === 'LIVE', null, 10000,
          'the page to go live again after the broker resumed');
      } catch (e) {
        failures.push(e.message);
      }
    }
    if (foreign.length) failures.push('the page requested other origins: ' + foreign.slice(0, 5).join(', '));
    if (pageErrors.length) failures.push('errors in the page: ' + pageErrors.slice(0, 5).join('; '));
    summary.final = last.json.overall;
  } finally {
    if (paused) {
      try { process.kill(opt.brokerPid, 'SIGCONT'); } catch (e) { /* already gone */ }
    }
    rl.close();
    await browser.close();
  }
  summary.failures = failures;
  console.log(JSON.stringify(summary));
  return failures.length === 0 ? 0 : 1;
}

main().then((code) => process.exit(code), (e) => {
  console.error('wallboard browser test: ' + (e && e.stack ? e.stack : e));
  console.log(JSON.stringify({ failures: [String(e && e.message ? e.message : e)] }));
  process.exit(1);
});
