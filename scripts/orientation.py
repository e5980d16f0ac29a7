#!/usr/bin/python3
"""Which way do Fashion-MNIST samples face?

    scripts/orientation.py CLASS SAMPLES.safetensors [...]

CLASS is a class index (5 sandal, 7 sneaker, 9 ankle-boot). Each file is the raw output of
`diffuse generate --class NAME --out FILE.safetensors` (tensor "samples", [N, 1, 32, 32] or
[N, 1, 28, 28] in [-1, 1]). An image "faces the data's way" when it correlates more with the mean
training image of its class than with that mean mirrored. The script prints that share for the
training images of the class and for each file: a model trained with random horizontal flips puts
about half of its shoes the wrong way round.
"""
import gzip
import json
import os
import struct
import sys

import numpy as np

DATA = os.environ.get("FASHION_MNIST", "/usr/share/datasets/fashion-mnist")


def read_idx(name, offset):
    with gzip.open(os.path.join(DATA, name)) as f:
        return np.frombuffer(f.read(), np.uint8, offset=offset)


def read_samples(path):
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        body = f.read()
    meta = header["samples"]
    if meta["dtype"] != "F32":
        raise SystemExit(f"{path}: samples must be F32, not {meta['dtype']}")
    a, b = meta["data_offsets"]
    x = np.frombuffer(body[a:b], np.float32).reshape(meta["shape"])
    if x.shape[-1] == 32:  # the loader pads 28 -> 32 with 2 px of background
        x = x[..., 2:30, 2:30]
    return x.reshape(len(x), 28, 28)


def facing_share(images, mean):
    same = (images * mean).sum((1, 2))
    mirrored = (images * mean[:, ::-1]).sum((1, 2))
    return float((same > mirrored).mean())


def main():
    if len(sys.argv) < 3:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    cls = int(sys.argv[1])
    images = read_idx("train-images-idx3-ubyte.gz", 16).reshape(-1, 28, 28).astype(np.float32) / 127.5 - 1
    labels = read_idx("train-labels-idx1-ubyte.gz", 8)
    real = images[labels == cls]
    mean = real.mean(0) + 1  # background (-1) contributes nothing
    print(f"training images of class {cls}: {facing_share(real + 1, mean):.1%} face the data's way")
    for path in sys.argv[2:]:
        x = read_samples(path) + 1
        print(f"{path}: {facing_share(x, mean):.1%} of {len(x)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
