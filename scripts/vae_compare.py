#!/usr/bin/python3
"""Reconstructions of chosen emoji by one or more AutoencoderKL folders, side by side.

Renders the emoji with Pillow from Debian's Noto Color Emoji (on white, 64 px), runs
`diffuse forward` (encode -> posterior mean -> decode) for each VAE, and writes a PNG grid
(first row: the inputs; then one row per VAE) plus per-VAE PSNR and mean-colour error.

  /usr/bin/python3 scripts/vae_compare.py --out cmp.png models/emoji-vae runs/emoji-vae-ft

Needs numpy and Pillow (Debian's python3-numpy, python3-pil); no PyTorch.
"""
import argparse
import json
import os
import struct
import subprocess
import sys
import tempfile

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# Saturated greens (the colour the small VAE lost), reds, blues, and fine detail.
DEFAULT = "🐸🤮🥦🍀🐢🌵🍏🦖🍓🚒🫐🐳📘🌈🔑📝"


def render(ch, font, size):
    im = Image.new("RGBA", (160, 160), (255, 255, 255, 255))
    ImageDraw.Draw(im).text((10, 10), ch, font=font, embedded_color=True)
    bbox = Image.eval(im.convert("RGB"), lambda v: 255 - v).getbbox()
    if bbox:
        l, t, r, b = bbox
        side = max(r - l, b - t)
        cx, cy = (l + r) // 2, (t + b) // 2
        im = im.crop((cx - side // 2, cy - side // 2, cx - side // 2 + side, cy - side // 2 + side))
    return np.asarray(im.convert("RGB").resize((size, size), Image.LANCZOS), dtype=np.float32)


def write_safetensors(path, tensors):
    header, blobs, offset = {}, [], 0
    for name, a in tensors.items():
        a = np.ascontiguousarray(a, dtype=np.float32)
        header[name] = {"dtype": "F32", "shape": list(a.shape), "data_offsets": [offset, offset + a.nbytes]}
        blobs.append(a.tobytes())
        offset += a.nbytes
    h = json.dumps(header).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def read_safetensors(path, name):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    e = header[name]
    assert e["dtype"] == "F32", e["dtype"]
    a, b = e["data_offsets"]
    return np.frombuffer(data[a:b], dtype=np.float32).reshape(e["shape"])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("vaes", nargs="+", help="AutoencoderKL folders")
    ap.add_argument("--out", required=True, help="grid PNG")
    ap.add_argument("--emoji", default=DEFAULT, help="the emoji to reconstruct (a string)")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--diffuse", default="build/diffuse")
    ap.add_argument("--font", default="/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")
    a = ap.parse_args()
    font = ImageFont.truetype(a.font, 109)
    chars = [c for c in a.emoji if not (0xFE00 <= ord(c) <= 0xFE0F)]
    x = np.stack([render(c, font, a.size) for c in chars]).transpose(0, 3, 1, 2) / 127.5 - 1.0
    rows = [x]
    with tempfile.TemporaryDirectory() as tmp:
        write_safetensors(os.path.join(tmp, "in.safetensors"), {"sample": x})
        for vae in a.vaes:
            out = os.path.join(tmp, "out.safetensors")
            subprocess.run([a.diffuse, "forward", "--model", vae, "--inputs", os.path.join(tmp, "in.safetensors"),
                            "--out", out], check=True, stdout=subprocess.DEVNULL)
            r = np.clip(read_safetensors(out, "recon"), -1, 1)
            rows.append(r)
            mse = ((r - x) ** 2).mean(axis=(1, 2, 3)) / 4.0
            psnr = -10 * np.log10(np.maximum(mse, 1e-12))
            colour = np.abs(r.mean(axis=(2, 3)) - x.mean(axis=(2, 3))).sum(1) * 127.5
            print(f"{vae}: PSNR {psnr.mean():.2f} dB, mean-colour error {colour.mean():.1f}/255 "
                  f"(per emoji: {' '.join(f'{v:.0f}' for v in colour)})")
    grid = np.concatenate([np.concatenate(list(r.transpose(0, 2, 3, 1)), axis=1) for r in rows], axis=0)
    Image.fromarray(((grid + 1) * 127.5).round().clip(0, 255).astype(np.uint8)).save(a.out)
    print(f"{a.out}: rows = inputs, " + ", ".join(a.vaes))


if __name__ == "__main__":
    sys.exit(main())
