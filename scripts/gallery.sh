#!/usr/bin/env bash
# Makes the pictures of docs/gallery.md: every editing operation on the shipped models, each from
# one `diffuse` command (shown in docs/gallery.md). Needs build/diffuse (scripts/build.sh) and
# Debian's python3-pil for the layout. Usage: scripts/gallery.sh [OUT_DIR] (default docs/gallery).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-docs/gallery}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$out"
d() { build/diffuse "$@" --threads "$(nproc)" >/dev/null; }
compose() { /usr/bin/python3 scripts/gallery_compose.py "$@"; }
fm=models/fashion-mnist
em=models/emoji-dit

# Inputs: a sneaker and a t-shirt from the Fashion-MNIST model, a smiling face from the emoji DiT.
d generate --model $fm --class sneaker -n 1 --seed 3 --out "$tmp/sneaker.png"
d generate --model $fm --class t-shirt -n 1 --seed 5 --out "$tmp/tshirt.png"
d generate --model $em --class face-smiling -n 1 --seed 2 --out "$tmp/face.png"
/usr/bin/python3 - "$tmp" <<'PY'
import sys
from PIL import Image
t = sys.argv[1]
def mask(w, h, box, path):
    m = Image.new("L", (w, h), 0)
    m.paste(255, box)
    m.save(path)
mask(28, 28, (14, 0, 28, 28), f"{t}/right.png")
mask(28, 28, (0, 14, 28, 28), f"{t}/lower28.png")
mask(64, 64, (0, 32, 64, 64), f"{t}/lower.png")
PY

# img2img (SDEdit): the sneaker re-drawn as a sandal at growing strength.
args=()
for s in 0.4 0.6 0.8 1.0; do
  d generate --model $fm --class sandal --image "$tmp/sneaker.png" --strength $s -n 1 --seed 1 --out "$tmp/i2i_$s.png"
  args+=("$s=$tmp/i2i_$s.png")
done
compose "$out/img2img.png" 4 "input=$tmp/sneaker.png" "${args[@]}"

# Class transfer by DDIM inversion: inverted as a sneaker, regenerated as other classes.
args=()
for c in sandal ankle-boot bag dress; do
  d generate --model $fm --class $c --image "$tmp/sneaker.png" --invert-from sneaker --strength 1 --sampler euler \
    --steps 30 -n 1 --seed 1 --out "$tmp/inv_$c.png"
  args+=("$c=$tmp/inv_$c.png")
done
d generate --model $fm --class sneaker --image "$tmp/sneaker.png" --invert-from sneaker --strength 1 --sampler euler \
  --steps 30 --guidance 1 -n 1 --seed 1 --out "$tmp/inv_same.png"
compose "$out/invert.png" 4 "input=$tmp/sneaker.png" "round trip=$tmp/inv_same.png" "${args[@]}"

# Inpainting: RePaint (default) against the masked blend, four seeds each.
d generate --model $fm --class sneaker --image "$tmp/sneaker.png" --mask "$tmp/right.png" -n 4 --seed 1 \
  --out "$tmp/repaint.png"
d generate --model $fm --class sneaker --image "$tmp/sneaker.png" --mask "$tmp/right.png" --inpaint-method blend -n 4 \
  --seed 1 --out "$tmp/blend.png"
d generate --model $fm --class dress --image "$tmp/tshirt.png" --mask "$tmp/lower28.png" --mask-blur 1 -n 4 --seed 1 \
  --out "$tmp/repaint_dress.png"
compose "$out/inpaint.png" 3 "input=$tmp/sneaker.png" "mask=$tmp/right.png" "RePaint=$tmp/repaint.png" \
  "blend=$tmp/blend.png" "input=$tmp/tshirt.png" "mask=$tmp/lower28.png" "as a dress=$tmp/repaint_dress.png"

# Outpainting: 8 pixels added on the left and right, 4 at the bottom.
d generate --model $fm --class sneaker --image "$tmp/sneaker.png" --outpaint 8,0,8,4 -n 4 --seed 1 \
  --out "$tmp/outpaint.png"
compose "$out/outpaint.png" 3 "input=$tmp/sneaker.png" "outpainted=$tmp/outpaint.png"

# The latent DiT: img2img to another class and RePaint of the lower half.
d generate --model $em --class cat-face --image "$tmp/face.png" --strength 0.7 -n 2 --seed 1 --out "$tmp/cat.png"
d generate --model $em --class face-tongue --image "$tmp/face.png" --mask "$tmp/lower.png" --jump-n-sample 4 -n 2 \
  --seed 1 --out "$tmp/face_repaint.png"
compose "$out/emoji.png" 2 "input=$tmp/face.png" "cat-face, 0.7=$tmp/cat.png" "lower half=$tmp/lower.png" \
  "RePaint, face-tongue=$tmp/face_repaint.png"
# Super-resolution: 14x14 -> 28x28 with models/fashion-mnist-sr, against bicubic.
/usr/bin/python3 - "$tmp" <<'PY'
import random, sys
from PIL import Image
t = sys.argv[1]
for name in ("sneaker", "tshirt"):
    im = Image.open(f"{t}/{name}.png").convert("L")
    small = im.resize((14, 14), Image.BOX)
    small.save(f"{t}/{name}_14.png")
    small.resize((28, 28), Image.BICUBIC).save(f"{t}/{name}_bicubic.png")
# Gaussian noise of sigma 0.2 in [-1, 1] units (25.5 of 255) on the t-shirt, seeded
rng = random.Random(0)
im = Image.open(f"{t}/tshirt.png").convert("L")
im.putdata([min(255, max(0, round(v + rng.gauss(0, 25.5)))) for v in im.getdata()])
im.save(f"{t}/noisy.png")
PY
args=()
for n in sneaker tshirt; do
  d upscale --model models/fashion-mnist-sr --image "$tmp/${n}_14.png" --seed 1 --out "$tmp/${n}_sr.png"
  args+=("14x14=$tmp/${n}_14.png" "bicubic=$tmp/${n}_bicubic.png" "diffuse upscale=$tmp/${n}_sr.png" "original=$tmp/$n.png")
done
compose "$out/superres.png" 4 "${args[@]}"

# Denoising: sigma 0.2 noise, the one-shot estimate and the sampled version.
d denoise --model $fm --image "$tmp/noisy.png" --out "$tmp/mmse.png"
d denoise --model $fm --image "$tmp/noisy.png" --sigma 0.2 --mode sample --steps 20 --out "$tmp/sampled.png"
compose "$out/denoise.png" 4 "noisy (0.2)=$tmp/noisy.png" "mmse, auto sigma=$tmp/mmse.png" \
  "sample=$tmp/sampled.png" "original=$tmp/tshirt.png"

# Animations: the denoising trajectory and an interpolation between classes.
d animate --model $fm --mode trajectory --class sneaker --frames 11 --out "$out/trajectory.webp"
d animate --model $fm --mode interpolate --class sneaker --to-class sandal --frames 12 --out "$out/interpolate.gif"
d animate --model $em --mode interpolate --class food-fruit --seed 1 --to-seed 2 --frames 12 --out "$out/emoji.webp"
echo "wrote $out"
