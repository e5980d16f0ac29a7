// Reads the A1111 "parameters" text of a PNG (tEXt, zTXt or iTXt chunk), as diffuse, A1111 and
// stable-diffusion.cpp write it.

const SIGNATURE = [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a];

async function inflate(bytes) {
  const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream('deflate'));
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

// Resolves with the text, or '' when the PNG has none; rejects when the bytes are not a PNG.
export async function pngParameters(buffer) {
  const b = new Uint8Array(buffer);
  if (b.length < 8 || SIGNATURE.some((v, i) => b[i] !== v)) throw new Error('not a PNG file');
  const view = new DataView(b.buffer, b.byteOffset, b.byteLength);
  const latin1 = new TextDecoder('latin1');
  const utf8 = new TextDecoder('utf-8');
  let pos = 8;
  while (pos + 12 <= b.length) {
    const len = view.getUint32(pos);
    const type = latin1.decode(b.subarray(pos + 4, pos + 8));
    const data = b.subarray(pos + 8, pos + 8 + len);
    if (data.length < len) break;
    pos += 12 + len;
    if (type === 'IEND') break;
    if (type !== 'tEXt' && type !== 'zTXt' && type !== 'iTXt') continue;
    const nul = data.indexOf(0);
    if (nul < 0 || latin1.decode(data.subarray(0, nul)) !== 'parameters') continue;
    let rest = data.subarray(nul + 1);
    if (type === 'tEXt') return latin1.decode(rest);
    if (type === 'zTXt') return latin1.decode(await inflate(rest.subarray(1)));
    // iTXt: compression flag, method, language tag\0, translated keyword\0, text
    const compressed = rest[0] === 1;
    rest = rest.subarray(2);
    rest = rest.subarray(rest.indexOf(0) + 1);
    rest = rest.subarray(rest.indexOf(0) + 1);
    return utf8.decode(compressed ? await inflate(rest) : rest);
  }
  return '';
}
