#!/usr/bin/env python3
"""Rewrites every F32 tensor of a safetensors file as F16 (other dtypes are copied unchanged).

Usage: scripts/safetensors_to_fp16.py IN.safetensors OUT.safetensors

Used for shipped model weights (models/emoji-dit/transformer): diffuse loads F16 tensors into
float32 modules. Needs only numpy. OUT is written to a temporary file and renamed.
"""
import json
import os
import struct
import sys

import numpy as np


def main() -> int:
    if len(sys.argv) != 3:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    src, dst = sys.argv[1], sys.argv[2]
    with open(src, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        data = f.read()
    meta = header.pop("__metadata__", None)
    out, blobs, off = {}, [], 0
    for name in sorted(header):
        h = header[name]
        begin, end = h["data_offsets"]
        raw, dtype = data[begin:end], h["dtype"]
        if dtype == "F32":
            f32 = np.frombuffer(raw, dtype=np.float32)
            if np.any(np.abs(f32) > 65504):
                print(f"{src}: tensor '{name}' has values beyond the fp16 range", file=sys.stderr)
                return 1
            raw, dtype = f32.astype(np.float16).tobytes(), "F16"
        out[name] = {"dtype": dtype, "shape": h["shape"], "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    if meta:
        out = {"__metadata__": meta, **out}
    text = json.dumps(out, separators=(",", ":")).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    tmp = dst + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for b in blobs:
            f.write(b)
    os.replace(tmp, dst)
    return 0


if __name__ == "__main__":
    sys.exit(main())
