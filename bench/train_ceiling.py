#!/usr/bin/env python3
"""Where a UNet training step's time goes, and the most any program using the same convolution and
matrix-multiply kernels could gain over it.

Times training steps (forward, backward, AdamW) of the PyTorch twin (bench/train_twin.py, the same
network as `diffuse train --config PRESET`) under torch.profiler, splits the self time into
convolutions (oneDNN forward and backward), matrix multiplies (attention bmm, linear layers) and
everything else, and measures the convolutions' achieved GFLOP/s against a large sgemm on the
same threads. The ceiling is step time / (convolution + matmul time): the speed-up of a program
whose every other operation took no time at all.

    /usr/bin/python3 bench/train_ceiling.py [--preset small] [--batch 64] [--threads N] [--steps 3]
"""
import argparse
import os
import platform
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import train_twin  # noqa: E402

CONV = ("convolution", "conv2d", "slow_conv", "thnn_conv", "mkldnn_conv")
MATMUL = ("aten::bmm", "aten::mm", "aten::addmm", "aten::baddbmm", "aten::matmul", "aten::addmm_")


def cpu_model():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="small")
    ap.add_argument("--image-size", type=int, default=28, help="28: Fashion-MNIST")
    ap.add_argument("--channels", type=int, default=1)
    ap.add_argument("--classes", type=int, default=11, help="10 and the null class")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--steps", type=int, default=3, help="profiled steps (after one warm-up step)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    cfg = train_twin.preset(a.preset, a.image_size, a.channels, a.classes)
    model = train_twin.build_model(cfg).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(a.batch, a.channels, a.image_size, a.image_size)
    t = torch.randint(1000, (a.batch,)).float()
    y = torch.randint(a.classes, (a.batch,))

    conv_flops = [0]

    def count(mod, inp, out):
        k = mod.kernel_size[0] * mod.kernel_size[1]
        conv_flops[0] += 2 * (mod.in_channels // mod.groups) * k * out.numel()
    hooks = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    with torch.no_grad():
        model(x, t, y)
    for h in hooks:
        h.remove()
    fwd_gflop = conv_flops[0] / 1e9

    def step():
        opt.zero_grad()
        loss = (model(x, t, y) - x).pow(2).mean()
        loss.backward()
        opt.step()

    step()
    t0 = time.perf_counter()
    for _ in range(a.steps):
        step()
    wall = (time.perf_counter() - t0) / a.steps  # without the profiler's overhead
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(a.steps):
            step()
    groups = {"convolution": 0.0, "matmul": 0.0, "other": 0.0}
    total = 0.0
    for e in prof.key_averages():
        s = e.self_cpu_time_total / 1e6 / a.steps
        total += s
        name = e.key.lower()
        if any(c in name for c in CONV):
            groups["convolution"] += s
        elif e.key in MATMUL:
            groups["matmul"] += s
        else:
            groups["other"] += s
    # The profiler's own overhead inflates `total`: shares are of it, times scaled to `wall`.
    scale = wall / total
    conv_s, mm_s = groups["convolution"] * scale, groups["matmul"] * scale

    n = 2048
    m1, m2 = torch.randn(n, n), torch.randn(n, n)
    m1 @ m2
    t0 = time.perf_counter()
    for _ in range(5):
        m1 @ m2
    sgemm = 2 * n ** 3 * 5 / (time.perf_counter() - t0) / 1e9

    print(f"CPU: {cpu_model()}, {a.threads} threads, torch {torch.__version__}")
    print(f"preset {a.preset}, {a.image_size}x{a.image_size}x{a.channels}, batch {a.batch}: "
          f"{wall:.3f} s per training step ({a.batch / wall:.1f} img/s)")
    for k, v in groups.items():
        print(f"  {k:12s} {v * scale:7.3f} s  {100 * v / total:5.1f} %")
    print(f"convolutions: {fwd_gflop:.1f} GFLOP forward, {3 * fwd_gflop:.1f} GFLOP forward + backward per step, "
          f"{3 * fwd_gflop / conv_s:.0f} GFLOP/s achieved; sgemm {n}x{n}: {sgemm:.0f} GFLOP/s")
    print(f"ceiling with the same convolution and matmul kernels: {wall / (conv_s + mm_s):.2f}x "
          f"(everything else free); {wall / conv_s:.2f}x with matmuls free as well")


if __name__ == "__main__":
    main()
