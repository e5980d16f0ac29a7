// Starts `diffuse serve` for the client tests on 127.0.0.1 with a free port.
// Environment: DIFFUSE_CLI (the diffuse binary), DIFFUSE_SOURCE_DIR (the repository).
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';

export const cli = process.env.DIFFUSE_CLI;
export const root = process.env.DIFFUSE_SOURCE_DIR;

// Resolves {server, port, url} once the server prints its address.
export function startServer(args) {
  const server = spawn(cli, ['serve', '--host', '127.0.0.1', '--port', '0', '--threads', '1', ...args], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  return new Promise((resolve, reject) => {
    let out = '';
    server.stdout.on('data', (d) => {
      out += d;
      const m = out.match(/http:\/\/[\d.]+:(\d+)/);
      if (m) resolve({ server, port: Number(m[1]), url: `http://127.0.0.1:${m[1]}` });
    });
    server.on('exit', (code) => reject(new Error(`diffuse serve exited with ${code}`)));
  });
}

// A copy of the tiny SD fixture whose tokenizer fits its vocab-1000 text encoder (as
// tests/sd_tiny_text.h builds it): ids < 998, <|startoftext|> 998, <|endoftext|> 999.
export function tinySd(dir) {
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

// The tiny tokenizer of tinySd in `dir`.
function tinyTokenizer(dir) {
  const src = path.join(root, 'tests/fixtures/sd_pipeline_tiny/tokenizer');
  fs.mkdirSync(dir, { recursive: true });
  const vocab = JSON.parse(fs.readFileSync(path.join(src, 'vocab.json'), 'utf8'));
  const cut = {};
  for (const [tok, id] of Object.entries(vocab)) if (id < 998) cut[tok] = id;
  cut['<|startoftext|>'] = 998;
  cut['<|endoftext|>'] = 999;
  fs.writeFileSync(path.join(dir, 'vocab.json'), JSON.stringify(cut));
  const merges = fs.readFileSync(path.join(src, 'merges.txt'), 'utf8').split('\n').slice(0, 487);
  fs.writeFileSync(path.join(dir, 'merges.txt'), merges.join('\n') + '\n');
  fs.copyFileSync(path.join(src, 'special_tokens_map.json'), path.join(dir, 'special_tokens_map.json'));
}

// The tiny SDXL fixture (sdxl_pipeline_tiny) with tokenizers its text encoders can take, as
// tests/sdxl_tiny.h's tiny_sdxl_folder builds it.
export function tinySdxl(dir) {
  const src = path.join(root, 'tests/fixtures/sdxl_pipeline_tiny');
  fs.mkdirSync(dir, { recursive: true });
  fs.copyFileSync(path.join(src, 'model_index.json'), path.join(dir, 'model_index.json'));
  for (const c of ['scheduler', 'unet', 'vae', 'text_encoder', 'text_encoder_2'])
    fs.symlinkSync(path.join(src, c), path.join(dir, c));
  tinyTokenizer(path.join(dir, 'tokenizer'));
  tinyTokenizer(path.join(dir, 'tokenizer_2'));
  for (const f of ['special_tokens_map.json', 'tokenizer_config.json']) // pad '!'
    fs.copyFileSync(path.join(src, 'tokenizer_2', f), path.join(dir, 'tokenizer_2', f));
  return dir;
}

// Rewrites a float32 safetensors file, slicing the columns of 2-D tensors: cols(name) -> [from, to] or null.
function sliceColumns(from, to, cols) {
  const buf = fs.readFileSync(from);
  const n = Number(buf.readBigUInt64LE(0));
  const header = JSON.parse(buf.subarray(8, 8 + n).toString('utf8'));
  const data = buf.subarray(8 + n);
  const out = { __metadata__: header.__metadata__ };
  const parts = [];
  let offset = 0;
  for (const [name, t] of Object.entries(header)) {
    if (name === '__metadata__') continue;
    let bytes = data.subarray(t.data_offsets[0], t.data_offsets[1]);
    let shape = t.shape;
    const range = cols(name);
    if (range) {
      if (t.dtype !== 'F32' || shape.length !== 2) throw new Error(`${name}: not a 2-D float32 tensor`);
      const [rows, width] = shape;
      const [a, b] = range;
      const cut = Buffer.alloc(rows * (b - a) * 4);
      for (let r = 0; r < rows; r++) bytes.copy(cut, r * (b - a) * 4, (r * width + a) * 4, (r * width + b) * 4);
      [bytes, shape] = [cut, [rows, b - a]];
    }
    out[name] = { dtype: t.dtype, shape, data_offsets: [offset, offset + bytes.length] };
    parts.push(bytes);
    offset += bytes.length;
  }
  let json = JSON.stringify(out);
  json += ' '.repeat((8 - (json.length % 8)) % 8);
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(Buffer.byteLength(json)));
  fs.writeFileSync(to, Buffer.concat([len, Buffer.from(json), ...parts]));
}

// An SDXL refiner cut from the tiny SDXL fixture, as tests/sdxl_tiny.h's tiny_sdxl_refiner: no
// first text encoder, cross-attention on the second encoder's 32 features, an added embedding of
// 32 pooled features plus 5 time ids of 8.
export function tinySdxlRefiner(dir) {
  const src = path.join(root, 'tests/fixtures/sdxl_pipeline_tiny');
  tinySdxl(dir);
  fs.unlinkSync(path.join(dir, 'text_encoder'));
  fs.rmSync(path.join(dir, 'tokenizer'), { recursive: true });
  const index = JSON.parse(fs.readFileSync(path.join(dir, 'model_index.json'), 'utf8'));
  Object.assign(index, {
    _class_name: 'StableDiffusionXLImg2ImgPipeline',
    text_encoder: [null, null],
    tokenizer: [null, null],
    requires_aesthetics_score: true,
    force_zeros_for_empty_prompt: false,
  });
  fs.writeFileSync(path.join(dir, 'model_index.json'), JSON.stringify(index, null, 2));
  fs.unlinkSync(path.join(dir, 'unet'));
  fs.mkdirSync(path.join(dir, 'unet'));
  const cfg = JSON.parse(fs.readFileSync(path.join(src, 'unet/config.json'), 'utf8'));
  Object.assign(cfg, { cross_attention_dim: 32, projection_class_embeddings_input_dim: 72 });
  fs.writeFileSync(path.join(dir, 'unet/config.json'), JSON.stringify(cfg, null, 2));
  sliceColumns(
    path.join(src, 'unet/diffusion_pytorch_model.safetensors'),
    path.join(dir, 'unet/diffusion_pytorch_model.safetensors'),
    (name) =>
      /attn2\.to_[kv]\.weight$/.test(name) ? [32, 64] : name === 'add_embedding.linear_1.weight' ? [0, 72] : null,
  );
  return dir;
}
