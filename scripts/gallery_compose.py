#!/usr/bin/env python3
"""Lays out labelled images in one row, enlarged without smoothing (for docs/gallery).

Usage: gallery_compose.py OUT.png SCALE LABEL=IMAGE.png [LABEL=IMAGE.png ...]
Needs Debian's python3-pil.
"""
import sys

from PIL import Image, ImageDraw

out, scale, items = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
tiles = []
for item in items:
    label, path = item.split("=", 1)
    im = Image.open(path).convert("RGB")
    tiles.append((label, im.resize((im.width * scale, im.height * scale), Image.NEAREST)))
pad, text_h = 8, 16
width = sum(t.width for _, t in tiles) + pad * (len(tiles) + 1)
height = max(t.height for _, t in tiles) + text_h + 2 * pad
canvas = Image.new("RGB", (width, height), (200, 200, 200))
draw = ImageDraw.Draw(canvas)
x = pad
for label, t in tiles:
    draw.text((x, pad // 2), label, fill=(0, 0, 0))
    canvas.paste(t, (x, pad + text_h))
    x += t.width + pad
canvas.save(out, optimize=True)
