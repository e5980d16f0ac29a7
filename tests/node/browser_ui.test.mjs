// The web UI of `diffuse serve` in a real browser: playwright-core (pinned in package.json)
// driving Debian's chromium headless against the shipped models. Run by ctest:
//   node --test tests/node/browser_ui.test.mjs
// Environment: DIFFUSE_CLI, DIFFUSE_SOURCE_DIR; CHROMIUM (default /usr/bin/chromium);
// DIFFUSE_SCREENSHOTS=1 writes docs/ui-generate.png, docs/ui-edit.png and docs/ui-gallery.png.
import { test, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { deflateSync } from 'node:zlib';
import { chromium } from 'playwright-core';
import { decodePng, encodePng, pngTexts } from './png.mjs';
import { root, startServer, tinySd, tinySdxl, tinySdxlRefiner } from './serve.mjs';

const screenshots = process.env.DIFFUSE_SCREENSHOTS === '1';
let server, base, browser, context, page, tmp;
let offHost = []; // requests for anything but the server
let consoleErrors = [];
let allowedErrors = []; // console messages a test expects (a 400 the UI shows, ...)
const downloads = {}; // seed -> the PNG bytes the browser downloaded

// A page whose console errors and uncaught exceptions fail the test.
async function watchedPage() {
  const p = await context.newPage();
  p.on('console', (m) => {
    if (m.type() === 'error' && !allowedErrors.some((re) => re.test(m.text()))) consoleErrors.push(m.text());
  });
  p.on('pageerror', (e) => consoleErrors.push(`uncaught: ${e.message}`));
  return p;
}

async function openPage() {
  page = await watchedPage();
  await page.goto(base);
  await page.locator('#model option').first().waitFor({ state: 'attached' });
}

async function shot(name, top = null) {
  if (!screenshots) return;
  await page.evaluate(() => window.scrollTo(0, 0));
  if (top) await page.locator(top).evaluate((el) => window.scrollTo(0, el.getBoundingClientRect().top - 8));
  await page.screenshot({ path: path.join(root, 'docs', `ui-${name}.png`) });
}

const cards = () => page.locator('#gallery > li');

// The error messages the page shows.
const shownErrors = () => page.locator('.error:not([hidden])').allTextContents();

// Runs the form (Ctrl+Enter or the button); resolves with the number of new gallery images.
async function generate(key = true) {
  const before = await cards().count();
  const runs = await page.evaluate(() => Number(document.body.dataset.runs || 0));
  if (key) await page.keyboard.press('Control+Enter');
  else await page.locator('#generate').click();
  await page.waitForFunction((n) => Number(document.body.dataset.runs || 0) > n, runs, { timeout: 120000 });
  return (await cards().count()) - before;
}

async function download(card) {
  const [d] = await Promise.all([page.waitForEvent('download'), card.getByRole('link', { name: /Download/ }).click()]);
  return fs.readFileSync(await d.path());
}

// The card of the image with this seed.
const card = (seed) => page.locator(`#gallery > li[data-seed="${seed}"]`).first();

// The JSON body of the next job the page submits.
function nextJob() {
  return page.waitForRequest((r) => r.url().endsWith('/api/v1/jobs') && r.method() === 'POST').then((r) => r.postDataJSON());
}

// Range inputs cannot be typed into: set the value as a drag would.
async function setRange(selector, value) {
  await page.locator(selector).evaluate((el, v) => {
    el.value = v;
    el.dispatchEvent(new Event('input', { bubbles: true }));
  }, String(value));
}

// Fills inputs: {selector: value}.
async function fill(fields) {
  for (const [selector, value] of Object.entries(fields)) await page.fill(selector, String(value));
}

// "Edit the image" on the image with this seed.
async function editCard(seed) {
  await card(seed).getByRole('button', { name: /Edit the image/ }).click();
  await page.locator('#tab-edit[aria-selected="true"]').waitFor();
}

async function setClassModel(model, cls) {
  await page.selectOption('#model', model);
  await page.selectOption('#class', cls);
}

// The tiny SDXL model draws 16×16 natively; recommending 64×64 gives its SDXL presets room.
function sdxlAt64(dir) {
  fs.writeFileSync(path.join(dir, 'generation_config.json'), JSON.stringify({ width: 64, height: 64 }));
  return dir;
}

before(async () => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'diffuse-ui-'));
  ({ server, url: base } = await startServer([
    '--model', path.join(root, 'models/fashion-mnist'),
    '--model', path.join(root, 'models/emoji-dit'),
    '--model', tinySd(path.join(tmp, 'sd_tiny')),
    '--model', sdxlAt64(tinySdxl(path.join(tmp, 'sdxl'))),
    '--model', tinySdxlRefiner(path.join(tmp, 'sdxl_refiner')),
  ]));
  browser = await chromium.launch({ executablePath: process.env.CHROMIUM || '/usr/bin/chromium', headless: true });
  context = await browser.newContext({ viewport: { width: 1280, height: 860 }, acceptDownloads: true });
  // Nothing but the server: any other host fails the test.
  await context.route('**/*', (route) => {
    if (new URL(route.request().url()).hostname === '127.0.0.1') return route.continue();
    offHost.push(route.request().url());
    return route.abort();
  });
  await openPage();
});

afterEach(() => {
  const [left, errors] = [offHost, consoleErrors];
  [offHost, consoleErrors, allowedErrors] = [[], [], []];
  assert.deepEqual(left, [], 'requests that left the server');
  assert.deepEqual(errors, [], 'console errors');
});

after(async () => {
  await browser?.close();
  server?.kill('SIGTERM');
  fs.rmSync(tmp, { recursive: true, force: true });
});

test('the page comes from the binary with a strict Content-Security-Policy', async () => {
  const res = await fetch(base + '/');
  assert.equal(res.status, 200);
  assert.match(res.headers.get('content-type'), /^text\/html/);
  assert.match(res.headers.get('content-security-policy'), /default-src 'self'; img-src 'self' data: blob:/);
  const js = await fetch(base + '/ui/app.js');
  assert.match(js.headers.get('content-type'), /^text\/javascript/);
  const again = await fetch(base + '/ui/app.js', { headers: { 'If-None-Match': js.headers.get('etag') } });
  assert.equal(again.status, 304);
  const missing = await fetch(base + '/ui/../README.md');
  assert.equal(missing.status, 404);
  assert.equal((await fetch(base + '/ui/nothing.js')).status, 404);
  assert.deepEqual((await (await fetch(base + '/ui/nothing.js')).json()).error.field, 'path');
});

test('model picker shows kinds and classes; a class model generates into the gallery', async () => {
  await page.selectOption('#model', 'emoji-dit');
  assert.match(await page.locator('#model-kind').textContent(), /class-conditional · 99 classes/);
  await page.selectOption('#model', 'fashion-mnist');
  assert.match(await page.locator('#model-kind').textContent(), /class-conditional · 10 classes/);
  assert.equal(await page.locator('#prompt').isVisible(), false);
  assert.equal(await page.getAttribute('#width', 'step'), '4'); // the model's size_step
  assert.equal(await page.inputValue('#steps'), '20'); // the model's recommendation
  await page.selectOption('#class', 'sneaker');
  await page.fill('#steps', '8');
  await page.fill('#n', '2');
  await page.fill('#seed', '1234');
  await page.locator('#seed').focus();
  assert.equal(await generate(), 2); // Ctrl+Enter
  assert.match(await page.locator('#status').textContent(), /Done: 2 images/);
  await card(1234).waitFor();
  assert.match(await card(1234).locator('.caption').textContent(), /sneaker · seed 1234/);
  assert.match(await card(1235).locator('.caption').textContent(), /seed 1235/);
  assert.equal(await card(1234).locator('img').evaluate((img) => img.naturalWidth), 28);
  assert.match(await card(1235).locator('pre').textContent(), /Steps: 8.*Seed: 1235/s);
  // Reuse last / random seed
  await page.click('#seed-random');
  assert.equal(await page.inputValue('#seed'), '-1');
  await page.click('#seed-reuse');
  assert.equal(await page.inputValue('#seed'), '1234');
  // The downloaded file is the server's PNG, parameters chunk included.
  const png = await download(card(1235));
  assert.match(pngTexts(png).parameters, /Class: sneaker/);
  assert.match(pngTexts(png).parameters, /Seed: 1235/);
  assert.equal(decodePng(png).width, 28);
  downloads[1235] = png;

  await setClassModel('emoji-dit', 'food-fruit');
  await page.fill('#n', '4');
  await page.fill('#seed', '7');
  assert.equal(await generate(false), 4);
});

test('the preview updates during a run, Cancel stops it', async () => {
  await setClassModel('fashion-mnist', 'bag');
  await page.fill('#steps', '600');
  await page.fill('#n', '1');
  const count = await cards().count();
  await page.click('#generate');
  const previews = new Set();
  const deadline = Date.now() + 60000;
  while (previews.size < 3 && Date.now() < deadline) {
    const src = await page.locator('#preview').getAttribute('src');
    if (src) previews.add(src);
    await page.waitForTimeout(50);
  }
  assert.ok(previews.size >= 3, `${previews.size} distinct previews`);
  assert.match(await page.locator('#status').textContent(), /^Step \d+\/600 · ETA \d+/);
  const step = Number(/Step (\d+)/.exec(await page.locator('#status').textContent())[1]);
  assert.ok(step > 0 && step < 600);
  await shot('generate');
  await page.click('#cancel');
  await page.waitForFunction(() => /Cancelled at step/.test(document.querySelector('#status').textContent));
  const at = Number(/step (\d+)/.exec(await page.locator('#status').textContent())[1]);
  assert.ok(at < 600, `cancelled at ${at}`);
  assert.equal(await cards().count(), count);
  const metrics = await (await fetch(base + '/metrics')).text();
  assert.match(metrics, /diffuse_jobs\{state="cancelled"\} 1/);
});

test('the gallery survives a reload', async () => {
  const seeds = await cards().evaluateAll((li) => li.map((x) => x.dataset.seed));
  assert.equal(seeds.length, 6);
  await page.reload();
  await page.locator('#model option').first().waitFor({ state: 'attached' });
  await cards().nth(5).waitFor();
  assert.deepEqual(await cards().evaluateAll((li) => li.map((x) => x.dataset.seed)), seeds);
  await page.waitForFunction(() => [...document.querySelectorAll('#gallery img')].every((i) => i.naturalWidth > 0));
  await shot('gallery');
});

test('a text model takes a prompt, a negative prompt and a size', async () => {
  await page.selectOption('#model', 'sd_tiny');
  assert.equal(await page.locator('#model-kind').textContent(), 'Stable Diffusion · SD1');
  for (const id of ['#prompt', '#negative_prompt', '#width', '#size-preset']) assert.ok(await page.locator(id).isEnabled(), id);
  assert.equal(await page.locator('#class').isVisible(), false);
  const size = Number(await page.inputValue('#width'));
  await page.selectOption('#size-preset', { label: `landscape 3:2 ${size * 1.5}×${size}` });
  assert.equal(await page.inputValue('#width'), String(size * 1.5));
  await page.selectOption('#size-preset', { index: 0 });
  await page.fill('#prompt', 'a red door');
  await page.fill('#negative_prompt', 'blurry');
  await page.fill('#steps', '2');
  await page.fill('#n', '1');
  await page.fill('#seed', '42');
  const sent = nextJob();
  assert.equal(await generate(), 1);
  const body = await sent;
  assert.equal(body.prompt, 'a red door');
  assert.equal(body.negative_prompt, 'blurry');
  assert.equal(body.width, size);
  assert.match(await card(42).locator('.caption').textContent(), /a red door · seed 42/);
  assert.match(await card(42).locator('pre').textContent(), /Negative prompt: blurry/);
});

test('"use settings" restores the form of an image', async () => {
  await setClassModel('emoji-dit', 'animal-mammal');
  await page.fill('#steps', '30');
  await page.fill('#seed', '-1');
  await card(1235).getByRole('button', { name: /Use the settings/ }).click();
  assert.equal(await page.inputValue('#model'), 'fashion-mnist');
  assert.equal(await page.inputValue('#class'), 'sneaker');
  assert.equal(await page.inputValue('#steps'), '8');
  assert.equal(await page.inputValue('#seed'), '1235');
  assert.equal(await page.inputValue('#n'), '2');
  // "Copy parameters" puts the image's parameters text on the clipboard.
  await context.grantPermissions(['clipboard-read', 'clipboard-write'], { origin: base });
  await card(1235).getByRole('button', { name: /Copy the parameters/ }).click();
  await page.waitForFunction(() => document.querySelector('#status').textContent === 'Parameters copied');
  assert.equal(await page.evaluate(() => navigator.clipboard.readText()), await card(1235).locator('pre').textContent());
});

test('an invalid value shows the server\'s error at its field', async () => {
  allowedErrors = [/status of 400/];
  await page.fill('#steps', '5000');
  await page.click('#generate');
  const err = page.locator('[data-error-for="steps"]');
  await err.waitFor();
  assert.match(await err.textContent(), /5000 is over the limit of 1000/);
  assert.equal(await page.getAttribute('#steps', 'aria-invalid'), 'true');
  assert.equal(await page.locator('#general-error').isVisible(), false);
  await page.fill('#steps', '8');
});

const meanDiff = (a, b) => a.pixels.reduce((s, v, i) => s + Math.abs(v - b.pixels[i]), 0) / a.pixels.length;

test('img2img round trip', async () => {
  await card(1234).getByRole('button', { name: /Edit the image/ }).click();
  await page.locator('#tab-edit[aria-selected="true"]').waitFor();
  await page.locator('#edit-stage').waitFor();
  const source = await download(card(1234));
  await page.check('input[name="edit-mode"][value="img2img"]');
  await setRange('#strength', 0.3);
  await page.fill('#seed', '99');
  const sent = nextJob();
  assert.equal(await generate(), 2, String(await shownErrors()));
  const body = await sent;
  assert.equal(body.strength, 0.3);
  assert.deepEqual(Buffer.from(body.init_image.split(',')[1], 'base64'), source); // the server's bytes
  const out = decodePng(await download(card(99)));
  const src = decodePng(source);
  assert.equal(out.width, src.width);
  const other = decodePng(downloads[1235]);
  const d = meanDiff(out, src);
  assert.ok(d > 0, 'img2img changed the image');
  assert.ok(d < meanDiff(other, src), `strength 0.3 stays near its source (${d})`);
});

// Counts the pixels of `out` that differ from `source` inside and outside `mask` (non-zero =
// inside); `at` places the source in `out` (outpainting).
function changes(source, out, mask, at = [0, 0]) {
  const c = source.channels;
  const n = { inside: 0, changedInside: 0, changedOutside: 0 };
  for (let y = 0; y < source.height; y++)
    for (let x = 0; x < source.width; x++) {
      const p = y * source.width + x;
      const q = (y + at[1]) * out.width + x + at[0];
      const changed = [...Array(c).keys()].some((k) => out.pixels[q * out.channels + k] !== source.pixels[p * c + k]);
      if (mask && mask.pixels[p * mask.channels]) {
        n.inside++;
        n.changedInside += changed;
      } else n.changedOutside += changed;
    }
  return n;
}

const maskOf = (body) => decodePng(Buffer.from(body.mask.split(',')[1], 'base64'));

test('inpainting changes pixels only inside the painted mask, with RePaint or blend', async () => {
  await editCard(1234);
  const source = decodePng(await download(card(1234)));
  await page.check('input[name="edit-mode"][value="inpaint"]');
  assert.equal(await page.locator('#inpaint-method').isVisible(), true);
  assert.equal(await page.inputValue('#inpaint-method'), 'repaint');
  assert.match(await page.locator('#method-note').textContent(), /RePaint/);
  await setRange('#strength', 1);
  await setRange('#brush-size', 6);
  const box = await page.locator('#edit-mask').boundingBox();
  await page.mouse.move(box.x + box.width * 0.15, box.y + box.height * 0.1);
  await page.mouse.down();
  await page.mouse.move(box.x + box.width * 0.35, box.y + box.height * 0.9, { steps: 10 });
  await page.mouse.up();
  await fill({ '#jump-length': 3, '#jump-n-sample': 2, '#seed': 5 });
  await shot('edit', '.edit-mode');
  let sent = nextJob();
  assert.equal(await generate(), 2, String(await shownErrors()));
  let body = await sent;
  assert.equal(body.jump_length, 3);
  assert.equal(body.jump_n_sample, 2);
  assert.equal(body.inpaint_method, undefined); // RePaint is the default
  const mask = maskOf(body);
  let out = decodePng(await download(card(5)));
  assert.equal(out.width, source.width);
  let n = changes(source, out, mask);
  assert.ok(n.inside > 20 && n.inside < source.width * source.height / 2, `${n.inside} masked pixels`);
  assert.equal(n.changedOutside, 0, 'pixels changed outside the mask');
  assert.ok(n.changedInside > n.inside / 4, `${n.changedInside} of ${n.inside} masked pixels changed`);
  assert.match(await card(5).locator('pre').textContent(), /RePaint jumps: 3x2/);

  // Blend: no RePaint numbers in the request.
  await page.selectOption('#inpaint-method', 'blend');
  assert.equal(await page.locator('#jump-length').isVisible(), false);
  assert.match(await page.locator('#method-note').textContent(), /Blend/);
  await page.fill('#seed', '15');
  sent = nextJob();
  assert.equal(await generate(), 2, String(await shownErrors()));
  body = await sent;
  assert.equal(body.inpaint_method, 'blend');
  assert.equal(body.jump_length, undefined);
  assert.equal(body.jump_n_sample, undefined);
  out = decodePng(await download(card(15)));
  n = changes(source, out, maskOf(body));
  assert.equal(n.changedOutside, 0, 'pixels changed outside the mask (blend)');
  assert.ok(n.changedInside > n.inside / 4, `${n.changedInside} of ${n.inside} masked pixels changed (blend)`);
  assert.match(await card(15).locator('pre').textContent(), /Inpaint method: blend/);

  // "Use the settings" of the RePaint image restores the method and its numbers.
  await card(5).getByRole('button', { name: /Use the settings/ }).click();
  assert.equal(await page.inputValue('#inpaint-method'), 'repaint');
  assert.equal(await page.inputValue('#jump-length'), '3');
  assert.equal(await page.inputValue('#jump-n-sample'), '2');
  await page.click('#tab-edit');

  // Clear and invert act on the mask
  await page.click('#mask-invert');
  const inverted = await page.evaluate(() => {
    const c = document.querySelector('#edit-mask');
    const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
    let on = 0;
    for (let i = 3; i < d.length; i += 4) on += d[i] >= 128;
    return on;
  });
  assert.equal(inverted, source.width * source.height - n.inside);
  await page.click('#mask-clear');
  assert.equal(await page.evaluate(() => {
    const c = document.querySelector('#edit-mask');
    return c.getContext('2d').getImageData(0, 0, c.width, c.height).data.some((v) => v !== 0);
  }), false);
  await fill({ '#jump-length': 10, '#jump-n-sample': 10 });
});

test('outpainting a class model keeps the original pixels inside the bigger image', async () => {
  await editCard(1234);
  const source = decodePng(await download(card(1234)));
  await page.check('input[name="edit-mode"][value="outpaint"]');
  await fill({ '#out-left': 4, '#out-right': 4, '#out-bottom': 8, '#jump-length': 2, '#jump-n-sample': 2 });
  await fill({ '#steps': 6, '#n': 1, '#seed': 21 });
  const sent = nextJob();
  assert.equal(await generate(), 1, String(await shownErrors()));
  const body = await sent;
  assert.deepEqual(body.outpaint, [4, 0, 4, 8]);
  const out = decodePng(await download(card(21)));
  assert.deepEqual([out.width, out.height], [source.width + 8, source.height + 8]);
  const n = changes(source, out, null, [4, 0]);
  assert.equal(n.changedOutside, 0, 'original pixels changed');
  await fill({ '#out-left': 0, '#out-right': 0, '#out-bottom': 0, '#jump-length': 10, '#jump-n-sample': 10 });
});

test('class transfer: sneaker to sandal', async () => {
  await editCard(1234);
  await page.check('input[name="edit-mode"][value="transfer"]');
  assert.equal(await page.locator('#repaint-tools').isVisible(), false);
  assert.match(await page.locator('#transfer-tools').textContent(), /euler.*ddim/s);
  await page.selectOption('#invert-from', 'sneaker');
  await page.selectOption('#class', 'sandal');
  await setRange('#strength', 1);
  await page.selectOption('#sampler', 'euler');
  await fill({ '#steps': 6, '#n': 1, '#seed': 31 });
  const sent = nextJob();
  assert.equal(await generate(), 1, String(await shownErrors()));
  const body = await sent;
  assert.equal(body.invert_from, 'sneaker');
  assert.equal(body.class, 'sandal');
  assert.equal(body.strength, 1);
  const png = await download(card(31));
  assert.equal(decodePng(png).width, 28);
  assert.match(pngTexts(png).parameters, /Invert from: sneaker/);
  assert.match(await card(31).locator('.caption').textContent(), /sandal/);
  // The settings come back through "use the settings" and PNG info.
  await page.selectOption('#invert-from', '');
  await page.check('input[name="edit-mode"][value="img2img"]');
  await card(31).getByRole('button', { name: /Use the settings/ }).click();
  assert.equal(await page.inputValue('#invert-from'), 'sneaker');
  assert.equal(await page.isChecked('input[name="edit-mode"][value="transfer"]'), true);
  await page.click('#tab-edit');
  await page.selectOption('#invert-from', '');
  await dropPng(png, 'transfer.png');
  await page.click('#pnginfo-apply');
  assert.equal(await page.inputValue('#invert-from'), 'sneaker');
  assert.equal(await page.inputValue('#class'), 'sandal');
  await page.selectOption('#sampler', '');
  await page.click('#tab-edit');
  await page.check('input[name="edit-mode"][value="img2img"]');
});

test('class models draw multiples of their size step; other sizes get the server\'s error', async () => {
  await page.click('#tab-generate');
  await setClassModel('fashion-mnist', 'bag');
  await page.selectOption('#size-preset', { label: '2× native 56×56' });
  await fill({ '#steps': 4, '#n': 1, '#seed': 56 });
  const sent = nextJob();
  assert.equal(await generate(), 1, String(await shownErrors()));
  assert.equal((await sent).width, 56);
  const out = decodePng(await download(card(56)));
  assert.deepEqual([out.width, out.height], [56, 56]);
  assert.match(await card(56).locator('pre').textContent(), /Size: 56x56/);

  allowedErrors = [/status of 400/];
  await page.fill('#width', '30');
  assert.equal(await page.locator('#width').evaluate((el) => el.validity.stepMismatch), true);
  await page.click('#generate');
  const err = page.locator('[data-error-for="width"]');
  await err.waitFor();
  assert.match(await err.textContent(), /must be a multiple of 4/);
  assert.equal(await page.getAttribute('#width', 'aria-invalid'), 'true');
  await page.selectOption('#size-preset', { index: 0 });
  assert.equal(await page.inputValue('#width'), '28');
});

test('outpainting extends the canvas; Delete removes images for good', async () => {
  const source = decodePng(await download(card(42)));
  await card(42).getByRole('button', { name: /Edit the image/ }).click();
  await page.locator('#tab-edit[aria-selected="true"]').waitFor();
  assert.equal(await page.inputValue('#model'), 'sd_tiny');
  await page.check('input[name="edit-mode"][value="outpaint"]');
  await page.fill('#out-right', '16');
  await page.fill('#out-bottom', '8');
  assert.deepEqual(await page.evaluate(() => [document.querySelector('#edit-image').width, document.querySelector('#edit-image').height]),
                   [source.width + 16, source.height + 8]);
  await page.fill('#seed', '43');
  const sent = nextJob();
  assert.equal(await generate(), 1);
  const body = await sent;
  assert.deepEqual(body.outpaint, [0, 0, 16, 8]);
  assert.equal(body.width, undefined); // the size is the image's plus the border
  const out = decodePng(await download(card(43)));
  assert.deepEqual([out.width, out.height], [source.width + 16, source.height + 8]);
  // An uploaded image takes the gallery image's place.
  await page.setInputFiles('#edit-upload', { name: 'out.png', mimeType: 'image/png', buffer: await download(card(43)) });
  await page.waitForFunction((w) => document.querySelector('#edit-hint').textContent.startsWith(`Image: ${w}×`), out.width);
  const count = await cards().count();
  for (const seed of [43, 42]) await card(seed).getByRole('button', { name: /Delete/ }).click();
  await page.waitForFunction((n) => document.querySelectorAll('#gallery > li').length === n, count - 2);
  await page.reload();
  await cards().nth(count - 3).waitFor();
  assert.equal(await cards().count(), count - 2);
  await page.click('#tab-generate');
});

// Drops a file on the PNG info tab.
async function dropPng(bytes, name) {
  await page.click('#tab-pnginfo');
  const dt = await page.evaluateHandle(({ data, name }) => {
    const t = new DataTransfer();
    t.items.add(new File([new Uint8Array(data)], name, { type: 'image/png' }));
    return t;
  }, { data: [...bytes], name });
  await page.dispatchEvent('#drop', 'drop', { dataTransfer: dt });
  await page.locator('#pnginfo-apply').waitFor();
}

test('a PNG dropped on PNG info restores its parameters', async () => {
  await page.click('#tab-generate');
  await setClassModel('emoji-dit', 'animal-mammal');
  await page.fill('#steps', '30');
  await page.fill('#seed', '-1');
  await dropPng(downloads[1235], 'diffuse.png');
  assert.match(await page.locator('#pnginfo-text').textContent(), /Seed: 1235/);
  await page.click('#pnginfo-apply');
  assert.equal(await page.getAttribute('#tab-generate', 'aria-selected'), 'true');
  assert.equal(await page.inputValue('#model'), 'fashion-mnist');
  assert.equal(await page.inputValue('#class'), 'sneaker');
  assert.equal(await page.inputValue('#steps'), '8');
  assert.equal(await page.inputValue('#seed'), '1235');

  // An A1111-style PNG: compressed iTXt, A1111 sampler names.
  const text = 'sneaker\nSteps: 12, Sampler: DPM++ 2M Karras, CFG scale: 2.5, Seed: 77, Size: 28x28, Model: fashion-mnist';
  const itxt = Buffer.concat([Buffer.from('parameters\0\x01\x00\0\0', 'latin1'), deflateSync(Buffer.from(text))]);
  const a1111 = encodePng(2, 2, 3, new Uint8Array(12), [['iTXt', itxt]]);
  await dropPng(a1111, 'a1111.png');
  assert.equal(await page.locator('#pnginfo-text').textContent(), text);
  await page.click('#pnginfo-apply');
  assert.equal(await page.inputValue('#steps'), '12');
  assert.equal(await page.inputValue('#sampler'), 'dpm++2m');
  assert.equal(await page.inputValue('#schedule'), 'karras');
  assert.equal(await page.inputValue('#guidance'), '2.5');
  assert.equal(await page.inputValue('#seed'), '77');
  assert.equal(await page.inputValue('#class'), 'sneaker');

  // A PNG without parameters says so.
  await page.click('#tab-pnginfo');
  const plain = encodePng(2, 2, 1, new Uint8Array(4));
  const dt = await page.evaluateHandle((data) => {
    const t = new DataTransfer();
    t.items.add(new File([new Uint8Array(data)], 'plain.png', { type: 'image/png' }));
    return t;
  }, [...plain]);
  await page.dispatchEvent('#drop', 'drop', { dataTransfer: dt });
  await page.locator('#pnginfo-error').waitFor();
  assert.match(await page.locator('#pnginfo-error').textContent(), /carries no generation parameters/);
});

test('narrow screens get one column; the tabs work from the keyboard', async () => {
  await page.setViewportSize({ width: 390, height: 844 });
  const form = await page.locator('#form').boundingBox();
  const out = await page.locator('.output').boundingBox();
  assert.ok(out.y >= form.y + form.height - 1, 'the output is below the form');
  assert.ok(form.width <= 390);
  await page.setViewportSize({ width: 1280, height: 860 });
  await page.locator('#tab-generate').focus();
  await page.keyboard.press('ArrowRight');
  assert.equal(await page.getAttribute('#tab-edit', 'aria-selected'), 'true');
  assert.equal(await page.evaluate(() => document.activeElement.id), 'tab-edit');
  // The system's dark / light preference.
  const background = () => page.evaluate(() => getComputedStyle(document.body).backgroundColor);
  await page.emulateMedia({ colorScheme: 'light' });
  const light = await background();
  await page.emulateMedia({ colorScheme: 'dark' });
  assert.notEqual(await background(), light);
  await page.emulateMedia({ colorScheme: 'light' });
  // Every control has a label.
  const unlabelled = await page.evaluate(() =>
    [...document.querySelectorAll('input, select, textarea')]
      .filter((el) => el.type !== 'hidden' && !el.labels?.length && !el.getAttribute('aria-label'))
      .map((el) => el.id));
  assert.deepEqual(unlabelled, []);
});

test('SDXL models get SDXL sizes, micro-conditioning and a refiner; other models do not', async () => {
  await page.click('#tab-generate');
  const visible = (id) => page.locator(id).isVisible();
  await page.selectOption('#model', 'sd_tiny');
  assert.equal(await visible('#sdxl-fields'), false);
  await page.selectOption('#model', 'sdxl');
  assert.equal(await page.locator('#model-kind').textContent(), 'Stable Diffusion · SDXL');
  assert.equal(await page.inputValue('#guidance'), '5'); // the library's SDXL default
  for (const id of ['#sdxl-fields', '#original-width', '#crop-top', '#target-width', '#refiner'])
    assert.equal(await visible(id), true, id);
  for (const id of ['#aesthetic-score', '#refiner-switch']) assert.equal(await visible(id), false, id);
  // refiners only in the picker
  assert.deepEqual(await page.locator('#refiner option').allTextContents(), ['none', 'sdxl_refiner']);
  // the recommended size, then SDXL's aspect buckets scaled to it (1024 -> 64)
  assert.deepEqual(await page.locator('#size-preset option').allTextContents(), [
    'native 64×64', '9:7 72×56', '7:9 56×72', '19:13 80×56', '13:19 56×80', '7:4 88×48', '4:7 48×88',
  ]);
  await page.selectOption('#size-preset', { label: '9:7 72×56' });
  assert.deepEqual([await page.inputValue('#width'), await page.inputValue('#height')], ['72', '56']);
  // a refiner takes aesthetic scores and no target size, and refines nothing else
  await page.selectOption('#model', 'sdxl_refiner');
  for (const id of ['#aesthetic-score', '#negative-aesthetic-score', '#original-width'])
    assert.equal(await visible(id), true, id);
  for (const id of ['#target-width', '#refiner']) assert.equal(await visible(id), false, id);

  await page.selectOption('#model', 'sdxl');
  await page.selectOption('#size-preset', { label: '9:7 72×56' });
  await page.selectOption('#refiner', 'sdxl_refiner');
  assert.equal(await visible('#refiner-switch'), true);
  assert.equal(await page.inputValue('#refiner-switch'), '0.8');
  await setRange('#refiner-switch', 0.6);
  assert.equal(await page.locator('#refiner-switch-out').textContent(), '0.6');
  await fill({ '#prompt': 'a red cube', '#negative_prompt': '', '#steps': 5, '#n': 1, '#seed': 77 });
  // a size given by half is the server's error, under its field
  allowedErrors = [/status of 400/];
  await fill({ '#original-width': 128, '#original-height': '' });
  await page.click('#generate');
  const err = page.locator('[data-error-for="original_size"]');
  await err.waitFor();
  assert.match(await err.textContent(), /must be \[height, width\]/);
  assert.equal(await page.getAttribute('#original-width', 'aria-invalid'), 'true');

  await fill({ '#original-height': 96, '#crop-top': 8, '#target-width': 80, '#target-height': 64 });
  let sent = nextJob();
  assert.equal(await generate(), 1, String(await shownErrors()));
  let body = await sent;
  assert.equal(body.model, 'sdxl');
  assert.deepEqual(
    [body.original_size, body.crop_coords, body.target_size, body.refiner, body.refiner_switch],
    [[96, 128], [8, 0], [64, 80], 'sdxl_refiner', 0.6],
  );
  assert.equal(body.aesthetic_score, undefined);
  assert.equal(body.guidance, undefined); // left at the model's default
  const params = await card(77).locator('pre').textContent();
  for (const s of ['Size: 72x56', 'Original size: "96, 128"', 'Crop coords: "8, 0"', 'Target size: "64, 80"',
    'CFG scale: 5', 'Refiner: sdxl_refiner, Refiner switch at: 0.6'])
    assert.ok(params.includes(s), `${s} in ${params}`);
  const png = await download(card(77));
  assert.match(pngTexts(png).parameters, /Refiner: sdxl_refiner, Refiner switch at: 0\.6/);
  assert.deepEqual([decodePng(png).width, decodePng(png).height], [72, 56]);

  // "use settings" restores them; a model that is not SDXL sends none of them
  await fill({ '#original-width': '', '#original-height': '', '#crop-top': '' });
  await setRange('#refiner-switch', 0.9);
  await page.selectOption('#refiner', '');
  await page.selectOption('#model', 'sd_tiny');
  await card(77).getByRole('button', { name: /Use the settings/ }).click();
  assert.equal(await page.inputValue('#model'), 'sdxl');
  assert.deepEqual(
    await Promise.all(['#original-width', '#original-height', '#crop-top', '#refiner', '#refiner-switch'].map((id) =>
      page.inputValue(id))),
    ['128', '96', '8', 'sdxl_refiner', '0.6'],
  );
  await page.selectOption('#model', 'sd_tiny');
  await fill({ '#steps': 1, '#seed': 78 });
  sent = nextJob();
  assert.equal(await generate(), 1, String(await shownErrors()));
  body = await sent;
  for (const k of ['original_size', 'crop_coords', 'target_size', 'refiner', 'refiner_switch'])
    assert.equal(body[k], undefined, k);
  assert.doesNotMatch(await card(78).locator('pre').textContent(), /Refiner/);

  // PNG info: an A1111 SDXL PNG picks the base, its refiner and switch; the diffuse PNG its sizes
  const text = 'a lighthouse\nSteps: 4, Sampler: Euler, Seed: 5, Size: 64x64, Model: sdxl, Refiner: sdxl_refiner, ' +
    'Refiner switch at: 0.7';
  await dropPng(encodePng(2, 2, 3, new Uint8Array(12), [['tEXt', Buffer.from(`parameters\0${text}`, 'latin1')]]), 'xl.png');
  assert.equal(await page.locator('#pnginfo-text').textContent(), text);
  await page.click('#pnginfo-apply');
  assert.deepEqual(
    await Promise.all(['#model', '#refiner', '#refiner-switch'].map((id) => page.inputValue(id))),
    ['sdxl', 'sdxl_refiner', '0.7'],
  );
  await dropPng(png, 'diffuse-xl.png');
  await page.waitForFunction(() => /Original size/.test(document.querySelector('#pnginfo-text').textContent));
  await page.click('#pnginfo-apply');
  assert.deepEqual(
    await Promise.all(['#original-width', '#original-height', '#crop-top', '#crop-left', '#target-width', '#refiner-switch']
      .map((id) => page.inputValue(id))),
    ['128', '96', '8', '0', '80', '0.6'],
  );
});

test('with --token the page asks for the token once and keeps it', async () => {
  const guarded = await startServer(['--model', path.join(root, 'models/fashion-mnist'), '--token', 's3cret']);
  try {
    allowedErrors = [/status of 401/];
    const p = await watchedPage();
    await p.goto(guarded.url);
    await p.locator('#token-dialog[open]').waitFor();
    await p.fill('#token-input', 's3cret');
    await p.getByRole('button', { name: 'Save' }).click();
    await p.locator('#model option[value="fashion-mnist"]').waitFor({ state: 'attached' });
    assert.equal(await p.evaluate(() => localStorage.getItem('diffuse.token')), 's3cret');
    await p.reload();
    await p.locator('#model option[value="fashion-mnist"]').waitFor({ state: 'attached' });
    assert.equal(await p.locator('#token-dialog[open]').count(), 0);
    await p.evaluate(() => localStorage.removeItem('diffuse.token'));
    await p.close();
  } finally {
    guarded.server.kill('SIGTERM');
  }
});
