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
