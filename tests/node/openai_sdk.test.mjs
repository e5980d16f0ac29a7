// The official OpenAI SDK (npm `openai`, pinned in package.json) as a client of `diffuse serve`:
// image generation on the shipped fashion-mnist model and an edit with a mask on the tiny Stable
// Diffusion fixture. Run by ctest: node --test tests/node/openai_sdk.test.mjs
// Environment: DIFFUSE_CLI (the diffuse binary), DIFFUSE_SOURCE_DIR (the repository).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import OpenAI, { toFile } from 'openai';
import { deflateSync } from 'node:zlib';

const cli = process.env.DIFFUSE_CLI;
const root = process.env.DIFFUSE_SOURCE_DIR;
let server, client, tmp;

// A copy of the tiny SD fixture whose tokenizer fits its vocab-1000 text encoder (as
// tests/sd_tiny_text.h builds it): ids < 998, <|startoftext|> 998, <|endoftext|> 999.
function tinySd(dir) {
  const src = path.join(root, 'tests/fixtures/sd_pipeline_tiny');
  fs.mkdirSync(path.join(dir, 'tokenizer'), { recursive: true });
  fs.copyFileSync(path.join(src, 'model_index.json'), path.join(dir, 'model_index.json'));
  for (const c of ['scheduler', 'unet', 'vae', 'text_encoder']) fs.symlinkSync(path.join(src, c), path.join(dir, c));
  const vocab = JSON.parse(fs.readFileSync(path.join(src, 'tokenizer/vocab.json'), 'utf8'));
  const cut = {};
  for (const [tok, id] of Object.entries(vocab)) if (id < 998) cut[tok] = id;
  cut['<|startoftext|>'] = 998;
  cut['<|endoftext|>'] = 999;
  fs.writeFileSync(path.join(dir, 'tokenizer/vocab.json'), JSON.stringify(cut));
  const merges = fs.readFileSync(path.join(src, 'tokenizer/merges.txt'), 'utf8').split('\n').slice(0, 487);
  fs.writeFileSync(path.join(dir, 'tokenizer/merges.txt'), merges.join('\n') + '\n');
  fs.copyFileSync(path.join(src, 'tokenizer/special_tokens_map.json'), path.join(dir, 'tokenizer/special_tokens_map.json'));
  return dir;
}

// A minimal RGBA PNG (w x h), alpha 0 on the top half: the part to repaint.
function rgbaPng(w, h) {
  const crcTable = Array.from({ length: 256 }, (_, n) => {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    return c >>> 0;
  });
  const crc = (buf) => {
    let c = 0xffffffff;
    for (const b of buf) c = crcTable[(c ^ b) & 0xff] ^ (c >>> 8);
    return (c ^ 0xffffffff) >>> 0;
  };
  const chunk = (type, data) => {
    const len = Buffer.alloc(4);
    len.writeUInt32BE(data.length);
    const td = Buffer.concat([Buffer.from(type), data]);
    const c = Buffer.alloc(4);
    c.writeUInt32BE(crc(td));
    return Buffer.concat([len, td, c]);
  };
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(w, 0);
  ihdr.writeUInt32BE(h, 4);
  ihdr[8] = 8;
  ihdr[9] = 6;
  const rows = [];
  for (let y = 0; y < h; y++) {
    rows.push(Buffer.from([0]));
    for (let x = 0; x < w; x++) rows.push(Buffer.from([200, 100, 50, y < h / 2 ? 0 : 255]));
  }
  const sig = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);
  return Buffer.concat([sig, chunk('IHDR', ihdr), chunk('IDAT', deflateSync(Buffer.concat(rows))), chunk('IEND', Buffer.alloc(0))]);
}

before(async () => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'diffuse-openai-'));
  const sd = tinySd(path.join(tmp, 'sd_tiny'));
  server = spawn(cli, ['serve', '--model', path.join(root, 'models/fashion-mnist'), '--model', sd, '--port', '0',
                       '--token', 'sk-test', '--threads', '1'], { stdio: ['ignore', 'pipe', 'inherit'] });
  const port = await new Promise((resolve, reject) => {
    let out = '';
    server.stdout.on('data', (d) => {
      out += d;
      const m = out.match(/http:\/\/[\d.]+:(\d+)/);
      if (m) resolve(Number(m[1]));
    });
    server.on('exit', (code) => reject(new Error(`diffuse serve exited with ${code}`)));
  });
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
