#!/usr/bin/env python3
"""Writes the small seed corpora of the libFuzzer harnesses (fuzz/corpus/) and the image
variants the image tests read (tests/data/images/). Deterministic; run from the repository root
with Debian's python3-pil: /usr/bin/python3 scripts/make_fuzz_seeds.py"""
import io
import json
import os
import shutil
import struct

from PIL import Image

root = os.getcwd()
corpus = os.path.join(root, "fuzz", "corpus")


def put(kind, name, data):
    path = os.path.join(corpus, kind, name)
    with open(path, "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())


def safetensors(tensors, metadata=None):
    header, blob = {}, b""
    for name, (dtype, shape, data) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(blob), len(blob) + len(data)]}
        blob += data
    if metadata:
        header["__metadata__"] = metadata
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + blob


f32 = lambda *v: struct.pack(f"<{len(v)}f", *v)
put("safetensors", "two.safetensors",
    safetensors({"a": ("F32", [2, 2], f32(1, 2, 3, 4)), "b": ("I64", [1], struct.pack("<q", 7))}, {"format": "pt"}))
put("safetensors", "half.safetensors", safetensors({"w": ("F16", [3], b"\x00\x3c\x00\x40\x00\xc0")}))
put("safetensors", "empty.safetensors", safetensors({}))
# LoRA / embedding shaped seeds for the tiny SD fixture (cross-attention 32 wide, text hidden 32)
k = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_v"
put("lora", "kohya.safetensors", safetensors({
    k + ".lora_down.weight": ("F32", [2, 32], f32(*([0.01] * 64))),
    k + ".lora_up.weight": ("F32", [32, 2], f32(*([0.01] * 64))),
    k + ".alpha": ("F32", [], f32(2.0))}))
put("lora", "peft.safetensors", safetensors({
    "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight": ("F32", [1, 32], f32(*([0.1] * 32))),
    "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_B.weight": ("F32", [32, 1], f32(*([0.1] * 32)))}))
put("lora", "embedding.safetensors", safetensors({"emb_params": ("F32", [1, 32], f32(*([0.5] * 32)))}))

fixtures = os.path.join(root, "tests", "fixtures")
for d in ["unet2d_ddpm", "unet2d_classcond", "unet_sd1_tiny", "unet_sd2_tiny", "unet_sdxl_tiny", "vae_tiny", "dit_tiny",
          "clip_text_tiny_gelu", "clip_text_proj_tiny"]:
    shutil.copy(os.path.join(fixtures, d, "config.json"), os.path.join(corpus, "config", d + ".json"))
shutil.copy(os.path.join(fixtures, "sd_pipeline_tiny", "scheduler", "scheduler_config.json"),
            os.path.join(corpus, "config", "scheduler_config.json"))

# Images: PNG colour types and depths, palette, interlaced, 16-bit, grey + alpha; JPEG baseline,
# progressive, grey and CMYK.
def img(mode, size=(5, 4)):
    im = Image.new("RGB", size)
    im.putdata([(x * 40 % 256, y * 60 % 256, (x + y) * 25 % 256) for y in range(size[1]) for x in range(size[0])])
    return im.convert(mode)


def smooth(mode, size=(16, 16)):
    """A gradient: JPEG variants of it differ from each other only by small compression errors."""
    im = Image.new("RGB", size)
    im.putdata([(x * 15, y * 15, 128) for y in range(size[1]) for x in range(size[0])])
    return im.convert(mode)


variants = {
    "rgb.png": (img("RGB"), "PNG", {}),
    "rgba.png": (img("RGBA"), "PNG", {}),
    "grey.png": (img("L"), "PNG", {}),
    "grey_alpha.png": (img("LA"), "PNG", {}),
    "palette.png": (img("P"), "PNG", {}),
    "grey16.png": (img("L").convert("I").point(lambda v: v * 257).convert("I;16"), "PNG", {}),
    "bilevel.png": (img("1"), "PNG", {}),
    "baseline.jpg": (smooth("RGB"), "JPEG", {"quality": 90}),
    "progressive.jpg": (smooth("RGB"), "JPEG", {"quality": 90, "progressive": True}),
    "grey.jpg": (smooth("L"), "JPEG", {}),
    "cmyk.jpg": (smooth("CMYK"), "JPEG", {"quality": 90}),
}
def interlaced_png(im):
    """Adam7-interlaced 8-bit RGB PNG (PIL writes only non-interlaced ones)."""
    import zlib
    w, h = im.size
    px = im.load()
    raw = b""
    for x0, y0, dx, dy in [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)]:
        xs, ys = range(x0, w, dx), range(y0, h, dy)
        if not xs or not ys:
            continue
        for y in ys:
            raw += b"\0" + b"".join(bytes(px[x, y]) for x in xs)
    chunk = lambda t, d: struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 1)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


os.makedirs(os.path.join(root, "tests", "data", "images"), exist_ok=True)
encoded = {"interlaced.png": interlaced_png(img("RGB"))}
for name, (im, fmt, kw) in variants.items():
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    encoded[name] = buf.getvalue()
for name, data in encoded.items():
    put("image", name, data)
    with open(os.path.join(root, "tests", "data", "images", name), "wb") as f:
        f.write(data)

infotexts = {
    "a1111.txt": "masterpiece, a castle\nNegative prompt: lowres\nSteps: 28, Sampler: DPM++ 2M Karras, CFG scale: 7.5, "
                 "Seed: 3921, Size: 512x768, Model hash: 6ce0161689, Model: v1-5, Clip skip: 2, Lora hashes: \"x: ab\"",
    "diffuse.txt": "Steps: 20, Sampler: dpm++2m, CFG scale: 1.5, Guide model: fashion-mnist-guide, Guide unconditional: "
                   "True, Seed: 3, Size: 28x28, Model: fashion-mnist, Class: sneaker, Sigmas: \"14.6, 3, 0\", "
                   "Guidance interval: \"0.3, 5\", Outpaint: \"8, 0, 0, 8\", Version: diffuse 0.1.0",
    "sdcpp.txt": "a cat\nSteps: 20, CFG scale: 7, Guidance: 3.5, Seed: 42, Size: 512x512, Model: sd, RNG: cuda, "
                 "Sampler: euler_a, Version: stable-diffusion.cpp",
    "prompt_only.txt": "just a prompt",
}
for name, text in infotexts.items():
    put("infotext", name, text)

requests = {
    "native.json": {"model": "m", "prompt": "a cat", "steps": 20, "guidance": 7, "seed": 1, "width": 512, "height": 512,
                    "n": 2, "sampler": "DPM++ 2M Karras", "loras": [{"name": "x", "weight": 0.5}],
                    "guidance_interval": [0.3, None], "outpaint": [8, 0, 0, 8], "init_image": "aGk=", "mask": "aGk="},
    "class.json": {"class": "sneaker", "n": 4, "steps": 4},
    "a1111_txt2img.json": {"prompt": "x", "steps": 20, "cfg_scale": 7, "batch_size": 2, "n_iter": 1, "width": 512,
                           "height": 512, "sampler_name": "Euler a", "scheduler": "Karras",
                           "override_settings": {"sd_model_checkpoint": "m", "CLIP_stop_at_last_layers": 2}},
    "a1111_img2img.json": {"prompt": "x", "init_images": ["data:image/png;base64,aGk="], "denoising_strength": 0.6,
                           "mask": "aGk=", "mask_blur": 4, "inpainting_mask_invert": 1, "inpaint_full_res": True},
}
for name, r in requests.items():
    put("request_json", name, json.dumps(r))

for name, text in {"plain.txt": "a photo of a cat", "weights.txt": "(a red:1.3) [car] ((big)) \\(x\\) BREAK sky",
                   "lora.txt": "a cat <lora:style:0.8> <lora:other>", "unicode.txt": "Ünïcödé 猫 🐈 &amp; naïve",
                   "broken.txt": "((((a:1.2 [[b] c:)"}.items():
    put("tokenizer", name, text)
