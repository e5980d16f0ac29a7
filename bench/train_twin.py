#!/usr/bin/python3
"""PyTorch-Python twin of `diffuse train`, for the training-throughput benchmark.

A plain-PyTorch re-implementation of diffusers' UNet2DModel (0.28) for the blocks the
diffuse presets use and of DiTTransformer2DModel (adaLN-Zero DiT), with diffusers' parameter
names, reading a diffusers config.json, and a training loop doing the same work per step as
src/train/trainer.cpp (pixels, or VAE posteriors sampled per step as `diffuse train --latent`).
Needs only Debian's python3-torch (no diffusers, no safetensors package).

  train_twin.py train    [--preset small] [--batch 64] [--threads N] [--warmup 50] [--steps 50]
  train_twin.py train    --data synthetic --config CONFIG.json [--items 3300] [--latent --latent-scale S] ...
  train_twin.py forward  --model DIR --inputs IN.safetensors --out OUT.safetensors
  train_twin.py inputs   --model DIR --batch 4 --out IN.safetensors   (random sample/timestep/class_labels)
  train_twin.py compare  A.safetensors B.safetensors [--key out] [--tol 1e-4]
"""
import argparse
import gzip
import json
import math
import os
import struct
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

# ------------------------------------------------------------------ safetensors

_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64,
           "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
           "BOOL": torch.bool}
_NAMES = {v: k for k, v in _DTYPES.items()}


def load_safetensors(path):
    with open(path, "rb") as f:
        data = bytearray(f.read())
    (n,) = struct.unpack("<Q", data[:8])
    if n > len(data) - 8:
        raise ValueError(f"{path}: header length {n} exceeds the file")
    header = json.loads(data[8:8 + n])
    buf = memoryview(data)[8 + n:]
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        dtype = _DTYPES[info["dtype"]]
        shape = info["shape"]
        if end == begin:
            out[name] = torch.zeros(shape, dtype=dtype)
        else:
            out[name] = torch.frombuffer(buf[begin:end], dtype=dtype).reshape(shape).clone()
    return out


def save_safetensors(path, tensors, metadata=None):
    header, chunks, offset = {}, [], 0
    if metadata:
        header["__metadata__"] = metadata
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        raw = t.view(torch.uint8).flatten().numpy().tobytes() if t.numel() else b""
        header[name] = {"dtype": _NAMES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + len(raw)]}
        chunks.append(raw)
        offset += len(raw)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path + ".tmp", "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(chunks))
    os.replace(path + ".tmp", path)


# ------------------------------------------------------------------ UNet2DModel (diffusers names)

def timestep_embedding(t, dim, flip_sin_to_cos, shift, max_period=10000):
    half = dim // 2
    exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / (half - shift)
    emb = t[:, None].float() * torch.exp(exponent)[None, :]
    emb = torch.cat([torch.sin(emb), torch.cos(emb)], dim=-1)
    if flip_sin_to_cos:
        emb = torch.cat([emb[:, half:], emb[:, :half]], dim=-1)
    if dim % 2 == 1:
        emb = F.pad(emb, (0, 1, 0, 0))
    return emb


class Timesteps(nn.Module):
    def __init__(self, dim, flip_sin_to_cos, shift):
        super().__init__()
        self.dim, self.flip, self.shift = dim, flip_sin_to_cos, shift

    def forward(self, t):
        return timestep_embedding(t, self.dim, self.flip, self.shift)


class TimestepEmbedding(nn.Module):
    def __init__(self, in_channels, dim):
        super().__init__()
        self.linear_1 = nn.Linear(in_channels, dim)
        self.act = nn.SiLU()
        self.linear_2 = nn.Linear(dim, dim)

    def forward(self, x):
        return self.linear_2(self.act(self.linear_1(x)))


class ResnetBlock2D(nn.Module):
    def __init__(self, in_channels, out_channels, temb_channels, eps, groups, time_scale_shift="default",
                 output_scale_factor=1.0, dropout=0.0):
        super().__init__()
        self.scale_shift = time_scale_shift == "scale_shift"
        self.output_scale_factor = output_scale_factor
        self.norm1 = nn.GroupNorm(groups, in_channels, eps=eps, affine=True)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.time_emb_proj = nn.Linear(temb_channels, out_channels * (2 if self.scale_shift else 1))
        self.norm2 = nn.GroupNorm(groups, out_channels, eps=eps, affine=True)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.nonlinearity = nn.SiLU()
        self.conv_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x, temb):
        h = self.conv1(self.nonlinearity(self.norm1(x)))
        temb = self.time_emb_proj(self.nonlinearity(temb))[:, :, None, None]
        if self.scale_shift:
            scale, shift = torch.chunk(temb, 2, dim=1)
            h = self.norm2(h) * (1 + scale) + shift
        else:
            h = self.norm2(h + temb)
        h = self.conv2(self.dropout(self.nonlinearity(h)))
        if self.conv_shortcut is not None:
            x = self.conv_shortcut(x)
        return (x + h) / self.output_scale_factor


class Attention(nn.Module):
    """diffusers Attention as UNet2D blocks build it (group norm, residual, AttnProcessor math)."""

    use_bmm = False  # train --attention bmm

    def __init__(self, channels, heads, dim_head, eps, groups, rescale_output_factor=1.0):
        super().__init__()
        inner = heads * dim_head
        self.heads, self.scale, self.rescale = heads, dim_head ** -0.5, rescale_output_factor
        self.group_norm = nn.GroupNorm(groups, channels, eps=eps, affine=True) if groups else None
        self.to_q = nn.Linear(channels, inner)
        self.to_k = nn.Linear(channels, inner)
        self.to_v = nn.Linear(channels, inner)
        self.to_out = nn.ModuleList([nn.Linear(inner, channels), nn.Dropout(0.0)])

    def forward(self, x):
        residual = x
        b, c, hgt, wid = x.shape
        h = x.view(b, c, hgt * wid).transpose(1, 2)
        if self.group_norm is not None:
            h = self.group_norm(h.transpose(1, 2)).transpose(1, 2)
        q, k, v = self.to_q(h), self.to_k(h), self.to_v(h)

        def heads(t):  # [B, N, H*D] -> [B*H, N, D]  (diffusers head_to_batch_dim)
            return t.reshape(b, -1, self.heads, t.shape[-1] // self.heads).permute(0, 2, 1, 3).reshape(
                b * self.heads, -1, t.shape[-1] // self.heads)

        q, k, v = heads(q), heads(k), heads(v)
        if Attention.use_bmm:  # what diffuse does (one bmm, then scale)
            scores = torch.bmm(q, k.transpose(-1, -2)) * self.scale
        else:  # diffusers' AttnProcessor (its choice on torch < 2.0): baddbmm, which loops over B*heads on CPU
            scores = torch.baddbmm(torch.empty(q.shape[0], q.shape[1], k.shape[1], dtype=q.dtype), q,
                                   k.transpose(-1, -2), beta=0, alpha=self.scale)
        probs = scores.float().softmax(dim=-1).to(q.dtype)
        h = torch.bmm(probs, v)
        h = h.reshape(b, self.heads, -1, h.shape[-1]).permute(0, 2, 1, 3).reshape(b, -1, self.heads * h.shape[-1])
        h = self.to_out[1](self.to_out[0](h))
        h = h.transpose(-1, -2).reshape(b, c, hgt, wid)
        return (h + residual) / self.rescale


class Downsample2D(nn.Module):
    def __init__(self, channels, padding):
        super().__init__()
        self.padding = padding
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=padding)

    def forward(self, x):
        if self.padding == 0:
            x = F.pad(x, (0, 1, 0, 1))
        return self.conv(x)


class Upsample2D(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class DownBlock(nn.Module):  # DownBlock2D / AttnDownBlock2D
    def __init__(self, attn, layers, cin, cout, temb, add_down, eps, groups, head_dim, pad, shift):
        super().__init__()
        self.resnets = nn.ModuleList(
            [ResnetBlock2D(cin if i == 0 else cout, cout, temb, eps, groups, shift) for i in range(layers)])
        if attn:
            self.attentions = nn.ModuleList(
                [Attention(cout, cout // head_dim, head_dim, eps, groups) for _ in range(layers)])
        else:
            self.attentions = None
        self.downsamplers = nn.ModuleList([Downsample2D(cout, pad)]) if add_down else None

    def forward(self, h, temb):
        states = []
        for i, resnet in enumerate(self.resnets):
            h = resnet(h, temb)
            if self.attentions is not None:
                h = self.attentions[i](h)
            states.append(h)
        if self.downsamplers is not None:
            h = self.downsamplers[0](h)
            states.append(h)
        return h, states


class UpBlock(nn.Module):  # UpBlock2D / AttnUpBlock2D
    def __init__(self, attn, layers, cin, prev, cout, temb, add_up, eps, groups, head_dim, shift):
        super().__init__()
        self.resnets = nn.ModuleList([
            ResnetBlock2D((prev if i == 0 else cout) + (cin if i == layers - 1 else cout), cout, temb, eps, groups,
                          shift) for i in range(layers)])
        if attn:
            self.attentions = nn.ModuleList(
                [Attention(cout, cout // head_dim, head_dim, eps, groups) for _ in range(layers)])
        else:
            self.attentions = None
        self.upsamplers = nn.ModuleList([Upsample2D(cout)]) if add_up else None

    def forward(self, h, skips, temb):
        for i, resnet in enumerate(self.resnets):
            h = resnet(torch.cat([h, skips.pop()], dim=1), temb)
            if self.attentions is not None:
                h = self.attentions[i](h)
        if self.upsamplers is not None:
            h = self.upsamplers[0](h)
        return h


class UNetMidBlock2D(nn.Module):
    def __init__(self, c, temb, eps, groups, attn_groups, head_dim, scale, shift, add_attention):
        super().__init__()
        if attn_groups is None:
            attn_groups = groups if shift == "default" else None
        self.resnets = nn.ModuleList([ResnetBlock2D(c, c, temb, eps, groups, shift, scale) for _ in range(2)])
        self.attentions = nn.ModuleList(
            [Attention(c, c // head_dim, head_dim, eps, attn_groups, scale)]) if add_attention else None

    def forward(self, h, temb):
        h = self.resnets[0](h, temb)
        if self.attentions is not None:
            h = self.attentions[0](h)
        return self.resnets[1](h, temb)


class UNet2DModel(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        c = dict(cfg)
        unsupported = {"time_embedding_type": "positional", "class_embed_type": None, "act_fn": "silu",
                       "downsample_type": "conv", "upsample_type": "conv"}
        for key, want in unsupported.items():
            if c.get(key, want) != want:
                raise ValueError(f"config: {key}={c[key]!r} is not supported by the twin (only {want!r})")
        self.center_input_sample = c.get("center_input_sample", False)
        boc = c["block_out_channels"]
        temb = boc[0] * 4
        eps, groups = c.get("norm_eps", 1e-5), c.get("norm_num_groups", 32)
        head = c.get("attention_head_dim", 8)
        shift = c.get("resnet_time_scale_shift", "default")
        layers = c.get("layers_per_block", 2)

        self.conv_in = nn.Conv2d(c.get("in_channels", 3), boc[0], 3, padding=1)
        self.time_proj = Timesteps(boc[0], c.get("flip_sin_to_cos", True), c.get("freq_shift", 0))
        self.time_embedding = TimestepEmbedding(boc[0], temb)
        n_cls = c.get("num_class_embeds")
        self.class_embedding = nn.Embedding(n_cls, temb) if n_cls else None

        self.down_blocks = nn.ModuleList()
        out = boc[0]
        for i, kind in enumerate(c["down_block_types"]):
            cin, out = out, boc[i]
            if kind not in ("DownBlock2D", "AttnDownBlock2D"):
                raise ValueError(f"config: down block {kind} is not supported by the twin")
            self.down_blocks.append(DownBlock(kind == "AttnDownBlock2D", layers, cin, out, temb, i < len(boc) - 1, eps,
                                              groups, head or out, c.get("downsample_padding", 1), shift))
        self.mid_block = UNetMidBlock2D(boc[-1], temb, eps, groups, c.get("attn_norm_num_groups"), head or boc[-1],
                                        c.get("mid_block_scale_factor", 1), shift, c.get("add_attention", True))
        self.up_blocks = nn.ModuleList()
        rev = list(reversed(boc))
        out = rev[0]
        for i, kind in enumerate(c["up_block_types"]):
            prev, out = out, rev[i]
            cin = rev[min(i + 1, len(boc) - 1)]
            if kind not in ("UpBlock2D", "AttnUpBlock2D"):
                raise ValueError(f"config: up block {kind} is not supported by the twin")
            self.up_blocks.append(UpBlock(kind == "AttnUpBlock2D", layers + 1, cin, prev, out, temb,
                                          i < len(boc) - 1, eps, groups, head or out, shift))
        self.conv_norm_out = nn.GroupNorm(groups, boc[0], eps=eps)
        self.conv_act = nn.SiLU()
        self.conv_out = nn.Conv2d(boc[0], c.get("out_channels", 3), 3, padding=1)

    def forward(self, sample, timestep, class_labels=None):
        if self.center_input_sample:
            sample = 2 * sample - 1.0
        t = timestep.reshape(-1).to(sample.device)
        if t.shape[0] == 1:
            t = t.expand(sample.shape[0])
        emb = self.time_embedding(self.time_proj(t).to(sample.dtype))
        if self.class_embedding is not None:
            emb = emb + self.class_embedding(class_labels.long()).to(sample.dtype)
        h = self.conv_in(sample)
        skips = [h]
        for block in self.down_blocks:
            h, states = block(h, emb)
            skips += states
        h = self.mid_block(h, emb)
        for block in self.up_blocks:
            h = block(h, skips, emb)
        return self.conv_out(self.conv_act(self.conv_norm_out(h)))

# ------------------------------------------------------------------ DiTTransformer2DModel (diffusers names)

def get_2d_sincos_pos_embed(embed_dim, grid_h, grid_w, base_size, interpolation_scale):
    """diffusers get_2d_sincos_pos_embed: float32 grid, float64 frequencies, row-major tokens."""
    gh = torch.arange(grid_h, dtype=torch.float32) / (grid_h / base_size) / interpolation_scale
    gw = torch.arange(grid_w, dtype=torch.float32) / (grid_w / base_size) / interpolation_scale
    omega = torch.arange(embed_dim // 4, dtype=torch.float64) / (embed_dim / 4.0)
    omega = 1.0 / 10000 ** omega

    def one_d(pos):
        out = pos.double()[:, None] * omega[None, :]
        return torch.cat([torch.sin(out), torch.cos(out)], dim=1)

    w = gw[None, :].expand(grid_h, grid_w).reshape(-1)  # first half from the w coordinate
    h = gh[:, None].expand(grid_h, grid_w).reshape(-1)
    return torch.cat([one_d(w), one_d(h)], dim=1).float()


class PatchEmbed(nn.Module):
    def __init__(self, sample_size, patch, cin, dim, interpolation_scale):
        super().__init__()
        self.patch, self.dim, self.base, self.scale = patch, dim, sample_size // patch, interpolation_scale
        self.proj = nn.Conv2d(cin, dim, patch, stride=patch)
        self._pos = {}

    def forward(self, x):
        gh, gw = x.shape[2] // self.patch, x.shape[3] // self.patch
        if (gh, gw) not in self._pos:
            self._pos[(gh, gw)] = get_2d_sincos_pos_embed(self.dim, gh, gw, self.base, self.scale)
        return self.proj(x).flatten(2).transpose(1, 2) + self._pos[(gh, gw)].to(x.dtype)[None]


class LabelEmbedding(nn.Module):  # class dropout is done by the training loop
    def __init__(self, num_classes, dim):
        super().__init__()
        self.embedding_table = nn.Embedding(num_classes + 1, dim)  # last row: the CFG null class


class CombinedTimestepLabelEmbeddings(nn.Module):
    def __init__(self, num_classes, dim):
        super().__init__()
        self.time_proj = Timesteps(256, True, 1)
        self.timestep_embedder = TimestepEmbedding(256, dim)
        self.class_embedder = LabelEmbedding(num_classes, dim)

    def forward(self, t, labels, dtype):
        return self.timestep_embedder(self.time_proj(t).to(dtype)) + self.class_embedder.embedding_table(labels)


class AdaLayerNormZero(nn.Module):
    def __init__(self, dim, num_classes):
        super().__init__()
        self.emb = CombinedTimestepLabelEmbeddings(num_classes, dim)
        self.silu = nn.SiLU()
        self.linear = nn.Linear(dim, 6 * dim)

    def forward(self, x, t, labels):
        e = self.linear(self.silu(self.emb(t, labels, x.dtype)))
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = e.chunk(6, dim=1)
        x = F.layer_norm(x, (x.shape[-1],), eps=1e-6) * (1 + scale_msa[:, None]) + shift_msa[:, None]
        return x, gate_msa, shift_mlp, scale_mlp, gate_mlp


class SelfAttention(nn.Module):
    """diffusers Attention on tokens (no group norm, no residual), AttnProcessor math."""

    def __init__(self, dim, heads, dim_head, bias):
        super().__init__()
        inner = heads * dim_head
        self.heads, self.scale = heads, dim_head ** -0.5
        self.to_q = nn.Linear(dim, inner, bias=bias)
        self.to_k = nn.Linear(dim, inner, bias=bias)
        self.to_v = nn.Linear(dim, inner, bias=bias)
        self.to_out = nn.ModuleList([nn.Linear(inner, dim), nn.Dropout(0.0)])

    def forward(self, x):
        b, n, _ = x.shape
        q, k, v = self.to_q(x), self.to_k(x), self.to_v(x)
        d = q.shape[-1] // self.heads

        def heads(t):  # [B, N, H*D] -> [B*H, N, D]
            return t.reshape(b, n, self.heads, d).permute(0, 2, 1, 3).reshape(b * self.heads, n, d)

        q, k, v = heads(q), heads(k), heads(v)
        if Attention.use_bmm:
            scores = torch.bmm(q, k.transpose(-1, -2)) * self.scale
        else:
            scores = torch.baddbmm(torch.empty(q.shape[0], n, n, dtype=q.dtype), q, k.transpose(-1, -2), beta=0,
                                   alpha=self.scale)
        h = torch.bmm(scores.float().softmax(dim=-1).to(q.dtype), v)
        h = h.reshape(b, self.heads, n, d).permute(0, 2, 1, 3).reshape(b, n, self.heads * d)
        return self.to_out[1](self.to_out[0](h))


class GELU(nn.Module):  # ff.net.0
    def __init__(self, cin, cout, approximate):
        super().__init__()
        self.proj = nn.Linear(cin, cout)
        self.approximate = approximate

    def forward(self, x):
        return F.gelu(self.proj(x), approximate=self.approximate)


class FeedForward(nn.Module):
    def __init__(self, dim, approximate, dropout):
        super().__init__()
        self.net = nn.ModuleList([GELU(dim, 4 * dim, approximate), nn.Dropout(dropout), nn.Linear(4 * dim, dim)])

    def forward(self, x):
        for m in self.net:
            x = m(x)
        return x


class DiTBlock(nn.Module):  # BasicTransformerBlock, norm_type ada_norm_zero, no cross-attention
    def __init__(self, c):
        super().__init__()
        dim = c["num_attention_heads"] * c["attention_head_dim"]
        self.norm1 = AdaLayerNormZero(dim, c["num_embeds_ada_norm"])
        self.attn1 = SelfAttention(dim, c["num_attention_heads"], c["attention_head_dim"], c["attention_bias"])
        self.norm3 = nn.LayerNorm(dim, eps=c["norm_eps"], elementwise_affine=c["norm_elementwise_affine"])
        self.ff = FeedForward(dim, "tanh" if c["activation_fn"] == "gelu-approximate" else "none", c["dropout"])

    def forward(self, x, t, labels):
        n, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.norm1(x, t, labels)
        x = x + gate_msa[:, None] * self.attn1(n)
        m = self.norm3(x) * (1 + scale_mlp[:, None]) + shift_mlp[:, None]
        return x + gate_mlp[:, None] * self.ff(m)


class DiTTransformer2DModel(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        c = {"num_attention_heads": 16, "attention_head_dim": 72, "in_channels": 4, "out_channels": None,
             "num_layers": 28, "dropout": 0.0, "attention_bias": True, "sample_size": 32, "patch_size": 2,
             "activation_fn": "gelu-approximate", "num_embeds_ada_norm": 1000, "norm_type": "ada_norm_zero",
             "norm_elementwise_affine": False, "norm_eps": 1e-5, "upcast_attention": False}
        c.update({k: v for k, v in cfg.items() if not k.startswith("_")})
        if c["norm_type"] != "ada_norm_zero" or c["activation_fn"] not in ("gelu-approximate", "gelu"):
            raise ValueError("config: only the DiT form (ada_norm_zero, gelu) is supported by the twin")
        dim = c["num_attention_heads"] * c["attention_head_dim"]
        self.patch, self.cout = c["patch_size"], c["out_channels"] or c["in_channels"]
        self.pos_embed = PatchEmbed(c["sample_size"], self.patch, c["in_channels"], dim,
                                    c.get("interpolation_scale") or 1.0)
        self.transformer_blocks = nn.ModuleList([DiTBlock(c) for _ in range(c["num_layers"])])
        self.norm_out = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.proj_out_1 = nn.Linear(dim, 2 * dim)
        self.proj_out_2 = nn.Linear(dim, self.patch * self.patch * self.cout)

    def forward(self, sample, timestep, class_labels):
        b, p = sample.shape[0], self.patch
        gh, gw = sample.shape[2] // p, sample.shape[3] // p
        t = timestep.reshape(-1)
        t = t.expand(b) if t.shape[0] == 1 else t
        labels = class_labels.reshape(-1).long()
        h = self.pos_embed(sample)
        for block in self.transformer_blocks:
            h = block(h, t, labels)
        cond = self.transformer_blocks[0].norm1.emb(t, labels, h.dtype)
        shift, scale = self.proj_out_1(F.silu(cond)).chunk(2, dim=1)
        h = self.proj_out_2(self.norm_out(h) * (1 + scale[:, None]) + shift[:, None])
        h = h.reshape(b, gh, gw, p, p, self.cout).permute(0, 5, 1, 3, 2, 4)  # nhwpqc -> nchpwq
        return h.reshape(b, self.cout, gh * p, gw * p)


def build_model(cfg):
    cls = cfg.get("_class_name", "UNet2DModel")
    if cls == "DiTTransformer2DModel":
        return DiTTransformer2DModel(cfg)
    if cls == "UNet2DModel":
        return UNet2DModel(cfg)
    raise ValueError(f"config: {cls} is not supported by the twin (UNet2DModel or DiTTransformer2DModel)")


def num_classes(cfg):
    """Real classes of a config (the null class of CFG is the last embedding row)."""
    if cfg.get("_class_name") == "DiTTransformer2DModel":
        return cfg["num_embeds_ada_norm"]
    return (cfg["num_class_embeds"] - 1) if cfg.get("num_class_embeds") else 0


def load_model(folder):
    with open(os.path.join(folder, "config.json")) as f:
        cfg = json.load(f)
    model = build_model(cfg)
    model.load_state_dict(load_safetensors(os.path.join(folder, "diffusion_pytorch_model.safetensors")), strict=True)
    return model.eval(), cfg


def preset(name, image_size, channels, num_class_embeds):
    """Same configs as src/train/presets.cpp."""
    j = {"_class_name": "UNet2DModel", "act_fn": "silu", "attention_head_dim": 8, "center_input_sample": False,
         "downsample_padding": 1, "flip_sin_to_cos": True, "freq_shift": 0, "in_channels": channels,
         "out_channels": channels, "mid_block_scale_factor": 1, "norm_eps": 1e-5,
         "resnet_time_scale_shift": "default", "sample_size": image_size, "time_embedding_type": "positional"}
    if num_class_embeds > 0:
        j["num_class_embeds"] = num_class_embeds
    if name == "tiny":
        j.update(block_out_channels=[16, 32], layers_per_block=1, norm_num_groups=8,
                 down_block_types=["DownBlock2D", "AttnDownBlock2D"], up_block_types=["AttnUpBlock2D", "UpBlock2D"])
    elif name in ("small", "medium"):
        c = 32 if name == "small" else 64
        j.update(block_out_channels=[c, 2 * c, 4 * c], layers_per_block=2,
                 norm_num_groups=16 if name == "small" else 32, attention_head_dim=32,
                 down_block_types=["DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"],
                 up_block_types=["AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"])
    elif name == "ddpm-cifar10":
        j.update(block_out_channels=[128, 256, 256, 256], layers_per_block=2, norm_num_groups=32,
                 attention_head_dim=None, down_block_types=["DownBlock2D", "AttnDownBlock2D", "DownBlock2D",
                                                            "DownBlock2D"],
                 up_block_types=["UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"])
    else:
        raise ValueError(f"unknown preset {name}")
    return j


# ------------------------------------------------------------------ training (as src/train/trainer.cpp)

def read_idx(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    return torch.frombuffer(bytearray(data[4 + 4 * ndim:]), dtype=torch.uint8).reshape(dims)


def cosine_alphas_cumprod(n=1000):
    def alpha_bar(t):
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    betas = [min(1 - alpha_bar((i + 1) / n) / alpha_bar(i / n), 0.999) for i in range(n)]
    return torch.cumprod(1.0 - torch.tensor(betas, dtype=torch.float64).float(), dim=0)


def load_training_data(a):
    """uint8 images [N, C, H, W] (or float32 posteriors [N, 2C, h, w] with --latent), labels, config."""
    if a.data != "synthetic":
        images = read_idx(os.path.join(a.data, "train-images-idx3-ubyte.gz")).unsqueeze(1)  # uint8 [N, 1, 28, 28]
        labels = read_idx(os.path.join(a.data, "train-labels-idx1-ubyte.gz")).long()
        n_cls = int(labels.max()) + 1
        if a.config:
            with open(a.config) as f:
                return images, labels, json.load(f)
        return images, labels, preset(a.preset, images.shape[-1], images.shape[1], n_cls + 1)
    # Synthetic data of the shape the config asks for: throughput does not depend on the pixels.
    if not a.config:
        raise SystemExit("train_twin.py: --data synthetic needs --config CONFIG.json")
    with open(a.config) as f:
        cfg = json.load(f)
    g = torch.Generator().manual_seed(1234)
    c, size = cfg["in_channels"], cfg["sample_size"]
    size = size if isinstance(size, list) else [size, size]
    n_cls = max(1, num_classes(cfg))
    labels = torch.randint(n_cls, (a.items,), generator=g)
    if a.latent:  # posterior mean and standard deviation per item, as `diffuse train --latent` keeps them
        mean = torch.randn([a.items, c] + size, generator=g)
        std = torch.rand([a.items, c] + size, generator=g) * 0.1
        return torch.cat([mean, std], dim=1), labels, cfg
    return torch.randint(256, [a.items, c] + size, generator=g, dtype=torch.uint8), labels, cfg


def norms_in_fp32_under_autocast():
    """torch 1.13's CPU autocast hands bf16 activations with fp32 affine parameters to group_norm
    and layer_norm, which reject mixed dtypes. Compute them in fp32, as CUDA autocast does and as
    diffuse's AutocastGuard does (src/nn/autocast.cpp)."""
    group_norm, layer_norm = F.group_norm, F.layer_norm

    def mixed(x, *ts):
        return any(t is not None and t.dtype != x.dtype for t in ts)

    def gn(x, groups, weight=None, bias=None, eps=1e-5):
        return group_norm(x.float() if mixed(x, weight, bias) else x, groups, weight, bias, eps)

    def ln(x, shape, weight=None, bias=None, eps=1e-5):
        return layer_norm(x.float() if mixed(x, weight, bias) else x, shape, weight, bias, eps)

    F.group_norm, F.layer_norm = gn, ln


def train(a):
    torch.set_num_threads(a.threads)
    if a.bf16:
        norms_in_fp32_under_autocast()
    images, labels, cfg = load_training_data(a)
    n_cls = num_classes(cfg)
    null_class = n_cls  # the last class embedding is the CFG null class
    torch.manual_seed(a.seed)
    gen = torch.Generator().manual_seed(a.seed)
    model = build_model(cfg).train()
    ema = build_model(cfg).eval()
    ema.load_state_dict(model.state_dict())
    for p in ema.parameters():
        p.requires_grad_(False)
    params, ema_params = list(model.parameters()), list(ema.parameters())
    opt = torch.optim.AdamW(params, lr=a.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    alphas_cumprod = cosine_alphas_cumprod()
    total = a.warmup + a.steps
    perm, pos = torch.randperm(len(images), generator=gen), 0
    print(f"twin: {len(images)} {'latents' if a.latent else 'images'} {tuple(images.shape[1:])}, {n_cls} classes | "
          f"{cfg.get('_class_name', 'UNet2DModel')} {os.path.basename(a.config) if a.config else a.preset} "
          f"{sum(p.numel() for p in params) / 1e6:.2f}M parameters | torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads{', bf16 autocast' if a.bf16 else ''}", file=sys.stderr)
    t_start = None
    for step in range(total):
        if step == a.warmup:
            t_start = time.perf_counter()
        for g in opt.param_groups:  # linear warm-up of 500 steps, constant afterwards (trainer defaults)
            g["lr"] = a.lr * min(1.0, (step + 1) / 500)
        opt.zero_grad()
        if pos + a.batch > len(perm):
            perm, pos = torch.randperm(len(images), generator=gen), 0
        idx = perm[pos:pos + a.batch]
        pos += a.batch
        if a.latent:  # a fresh sample of each item's posterior, scaled (flips are encoded beforehand)
            post = images.index_select(0, idx)
            mean, std = post.chunk(2, dim=1)
            x0 = (mean + std * torch.randn(mean.shape, generator=gen)) * a.latent_scale
        else:
            x0 = images.index_select(0, idx).float().div_(127.5).sub_(1.0)
            flip = torch.rand(a.batch, generator=gen) < 0.5
            x0 = torch.where(flip[:, None, None, None], x0.flip(3), x0)
        y = labels.index_select(0, idx).masked_fill_(torch.rand(a.batch, generator=gen) < a.class_dropout, null_class)
        t = torch.randint(1000, (a.batch,), generator=gen)
        noise = torch.randn(x0.shape, generator=gen)
        ac = alphas_cumprod.index_select(0, t).view(-1, 1, 1, 1)
        xt = ac.sqrt() * x0 + (1 - ac).sqrt() * noise
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=a.bf16):
            out = model(xt, t.float(), y)
        out = out.float()
        loss = (out - noise).pow(2).mean(dim=(1, 2, 3)).mean()
        loss.backward()
        value = loss.item()
        if not math.isfinite(value):
            raise RuntimeError(f"training diverged at step {step}")
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        with torch.no_grad():
            d = min(a.ema, (1.0 + step) / (10.0 + step))
            for e, p in zip(ema_params, params):
                e.mul_(d).add_(p.detach(), alpha=1.0 - d)
        if step + 1 == a.warmup or step + 1 == total:
            print(f"twin: step {step + 1}/{total} loss {value:.4f}", file=sys.stderr)
    seconds = time.perf_counter() - t_start
    ips = a.steps * a.batch / seconds
    print(f"img_per_s {ips:.2f} seconds {seconds:.3f} steps {a.steps} batch {a.batch} threads {a.threads}")
    if a.save:
        os.makedirs(a.save, exist_ok=True)
        with open(os.path.join(a.save, "config.json"), "w") as f:
            json.dump(cfg, f, indent=2, sort_keys=True)
        save_safetensors(os.path.join(a.save, "diffusion_pytorch_model.safetensors"), ema.state_dict(),
                         {"format": "pt"})


# ------------------------------------------------------------------ CLI

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="time training steps (img/s on stdout)")
    t.add_argument("--data", default=os.environ.get("DIFFUSE_FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist"),
                   help="Fashion-MNIST IDX folder, or 'synthetic' (random data of the config's shape)")
    t.add_argument("--preset", default="small")
    t.add_argument("--config", help="a UNet2DModel or DiTTransformer2DModel config.json instead of --preset")
    t.add_argument("--items", type=int, default=3300, help="--data synthetic: number of training items")
    t.add_argument("--latent", action="store_true",
                   help="--data synthetic: items are VAE posteriors (mean, std), sampled and scaled per step")
    t.add_argument("--latent-scale", type=float, default=1.0, help="the VAE's scaling_factor (with --latent)")
    t.add_argument("--batch", type=int, default=64)
    t.add_argument("--threads", type=int, default=os.cpu_count())
    t.add_argument("--warmup", type=int, default=50, help="untimed steps first")
    t.add_argument("--steps", type=int, default=50, help="timed steps")
    t.add_argument("--lr", type=float, default=2e-4)
    t.add_argument("--ema", type=float, default=0.9995)
    t.add_argument("--class-dropout", type=float, default=0.1)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--save", help="write the EMA model here (diffusers layout)")
    t.add_argument("--bf16", action="store_true",
                   help="forward pass under bf16 autocast, like `diffuse train --bf16` (weights and AdamW stay fp32)")
    t.add_argument("--attention", choices=["baddbmm", "bmm"], default="baddbmm",
                   help="attention scores as diffusers' AttnProcessor (baddbmm) or as diffuse (bmm)")
    f = sub.add_parser("forward", help="one forward pass, like `diffuse forward`")
    f.add_argument("--model", required=True)
    f.add_argument("--inputs", required=True)
    f.add_argument("--out", required=True)
    i = sub.add_parser("inputs", help="random inputs for a model folder")
    i.add_argument("--model", required=True)
    i.add_argument("--batch", type=int, default=4)
    i.add_argument("--seed", type=int, default=0)
    i.add_argument("--out", required=True)
    c = sub.add_parser("compare", help="max abs difference of one tensor in two files")
    c.add_argument("a")
    c.add_argument("b")
    c.add_argument("--key", default="out")
    c.add_argument("--tol", type=float, default=1e-4)
    a = ap.parse_args()

    if a.cmd == "train":
        if a.warmup < 1 or a.steps < 1:
            ap.error("--warmup and --steps must be at least 1")
        Attention.use_bmm = a.attention == "bmm"
        train(a)
    elif a.cmd == "forward":
        model, _ = load_model(a.model)
        x = load_safetensors(a.inputs)
        with torch.no_grad():
            out = model(x["sample"].float(), x["timestep"], x.get("class_labels"))
        save_safetensors(a.out, {"out": out})
    elif a.cmd == "inputs":
        with open(os.path.join(a.model, "config.json")) as fh:
            cfg = json.load(fh)
        g = torch.Generator().manual_seed(a.seed)
        size = cfg["sample_size"]
        size = size if isinstance(size, list) else [size, size]
        x = {"sample": torch.randn([a.batch, cfg["in_channels"]] + size, generator=g),
             "timestep": torch.randint(1000, (a.batch,), generator=g).float()}
        if cfg.get("_class_name") == "DiTTransformer2DModel":  # classes and the null class
            x["class_labels"] = torch.randint(cfg["num_embeds_ada_norm"] + 1, (a.batch,), generator=g)
        elif cfg.get("num_class_embeds"):
            x["class_labels"] = torch.randint(cfg["num_class_embeds"], (a.batch,), generator=g)
        save_safetensors(a.out, x)
    else:
        x, y = load_safetensors(a.a)[a.key].float(), load_safetensors(a.b)[a.key].float()
        if x.shape != y.shape:
            print(f"{a.key}: shapes differ {tuple(x.shape)} vs {tuple(y.shape)}")
            sys.exit(1)
        diff = (x - y).abs().max().item()
        ok = diff <= a.tol
        print(f"{a.key} {tuple(x.shape)}: max abs diff {diff:.3g} ({'ok' if ok else 'FAIL'}, tolerance {a.tol:g})")
        sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
