#!/usr/bin/env python3
"""A labelled grid of a text-to-image model's samples: one row of N seeds per prompt, in sections.

    /usr/bin/python3 scripts/prompt_grid.py --model models/emoji-text --out grid.png \\
        --section "held out (names never seen in training)" "black heart, heart" "crying face, face-concerned" \\
        --section "new combinations" "blue apple, food-fruit"

Each row is `diffuse generate --prompt P -n N --seed 0` (dpm++2m, 20 steps, guidance 3 unless
given); the labels are drawn with Pillow's default font. Needs python3-pil.
"""
import argparse
import os
import subprocess
import sys
import tempfile

from PIL import Image, ImageDraw


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--section", nargs="+", action="append", required=True, metavar=("TITLE", "PROMPT"),
                    help="a title and its prompts (repeatable)")
    ap.add_argument("-n", type=int, default=6, help="seeds per prompt (0..n-1)")
    ap.add_argument("--steps", default="20")
    ap.add_argument("--sampler", default="dpm++2m")
    ap.add_argument("--guidance", default="3")
    ap.add_argument("--diffuse", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "build",
                                                      "diffuse"))
    a = ap.parse_args()
    sections = []
    with tempfile.TemporaryDirectory() as tmp:
        for s, (title, *prompts) in enumerate(a.section):
            rows = []
            for i, p in enumerate(prompts):
                png = os.path.join(tmp, f"{s}_{i}.png")
                r = subprocess.run([a.diffuse, "generate", "--model", a.model, "--prompt", p, "-n", str(a.n), "--nrow",
                                    str(a.n), "--seed", "0", "--steps", a.steps, "--sampler", a.sampler, "--guidance",
                                    a.guidance, "--out", png], capture_output=True, text=True)
                if r.returncode != 0:
                    sys.exit(f"prompt_grid.py: diffuse generate failed for '{p}':\n{r.stderr}")
                rows.append((p, Image.open(png).convert("RGB")))
            sections.append((title, rows))
    row_w = max(r.size[0] for _, rows in sections for _, r in rows)
    label_w, head_h, gap = 240, 18, 8
    height = sum(head_h + 4 + sum(r.size[1] + gap for _, r in rows) for _, rows in sections) + gap
    img = Image.new("RGB", (label_w + row_w + gap, height), "white")
    d = ImageDraw.Draw(img)
    y = 4
    for s, (title, rows) in enumerate(sections):
        if s > 0:
            d.line([(0, y), (img.size[0], y)], fill="black")
            y += 4
        d.text((4, y), title, fill="black")
        y += head_h
        for p, r in rows:
            img.paste(r, (label_w, y))
            d.text((4, y + r.size[1] // 2 - 5), p, fill="black")
            y += r.size[1] + gap
    img.crop((0, 0, img.size[0], y)).save(a.out)
    print(f"{a.out}: {img.size[0]}x{y}")


if __name__ == "__main__":
    main()
