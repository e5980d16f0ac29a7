// The official OpenAI SDK (npm `openai`, pinned in package.json) as a client of `diffuse serve`:
// image generation on the shipped fashion-mnist model and an edit with a mask on the tiny Stable
// Diffusion fixture. Run by ctest: node --test tests/node/openai_sdk.test.mjs
// Environment: DIFFUSE_CLI (the diffuse binary), DIFFUSE_SOURCE_DIR (the repository).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import OpenAI, { toFile } from 'openai';
import { encodePng } from './png.mjs';
import { root, startServer, tinySd } from './serve.mjs';

let server, client, tmp;

// A minimal RGBA PNG (w x h), alpha 0 on the top half: the part to repaint.
function rgbaPng(w, h) {
  const px = new Uint8Array(w * h * 4);
  for (let i = 0; i < w * h; i++) px.set([200, 100, 50, i < (w * h) / 2 ? 0 : 255], i * 4);
  return encodePng(w, h, 4, px);
}

before(async () => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'diffuse-openai-'));
  const sd = tinySd(path.join(tmp, 'sd_tiny'));
  let port;
  ({ server, port } = await startServer(['--model', path.join(root, 'models/fashion-mnist'), '--model', sd,
                                          '--token', 'sk-test']));
  client = new OpenAI({ apiKey: 'sk-test', baseURL: `http://127.0.0.1:${port}/v1` });
});

after(() => {
  server?.kill('SIGTERM');
  fs.rmSync(tmp, { recursive: true, force: true });
});

test('lists the served models', async () => {
  const models = await client.models.list();
  assert.deepEqual(models.data.map((m) => m.id), ['fashion-mnist', 'sd_tiny']);
});

test('generates images', async () => {
  const res = await client.images.generate({ model: 'fashion-mnist', prompt: 'sneaker', n: 2, response_format: 'b64_json' });
  assert.equal(res.data.length, 2);
  const png = Buffer.from(res.data[0].b64_json, 'base64');
  assert.equal(png.subarray(1, 4).toString(), 'PNG');
  assert.match(png.toString('latin1'), /Class: sneaker/);
});

test('edits an image where the mask is transparent', async () => {
  const png = rgbaPng(16, 16);
  const res = await client.images.edit({
    model: 'sd_tiny',
    image: await toFile(png, 'in.png', { type: 'image/png' }),
    mask: await toFile(png, 'mask.png', { type: 'image/png' }),
    prompt: 'a red door',
    response_format: 'b64_json',
  });
  assert.equal(res.data.length, 1);
  assert.equal(Buffer.from(res.data[0].b64_json, 'base64').subarray(1, 4).toString(), 'PNG');
});

test('errors arrive as the SDK error class with the status', async () => {
  await assert.rejects(client.images.generate({ model: 'no-such-model', prompt: 'x' }), (e) => e.status === 400);
  const anon = new OpenAI({ apiKey: 'wrong', baseURL: client.baseURL });
  await assert.rejects(anon.models.list(), (e) => e.status === 401);
});
