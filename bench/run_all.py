#!/usr/bin/python3
"""The benchmark suite in one command: runs each benchmark side by side with its contenders on this
machine and rewrites the generated section of docs/benchmarks.md (between the `run_all` markers).

    bench/run_all.py                       # everything that can run here; prints the section
    bench/run_all.py --write               # ... and rewrites its sections in docs/benchmarks.md
    bench/run_all.py --only sd15,int8      # some sections: sd15, int8, sdxl, lora, train, blocks
    bench/run_all.py --only lora --write   # rewrites the lora section; the others stay as they are
    bench/run_all.py --quick               # one repeat, fewer steps: a smoke run of the driver

Contenders:
  diffuse            build/diffuse (BUILD=...), built beforehand (scripts/build.sh)
  stable-diffusion.cpp
                     SDCPP=/path/to/sd-cli, or SDCPP_SRC=/path/to/a source tree (stable-diffusion.cpp
                     with its ggml submodule checked out): built once into build/sdcpp with CMake.
                     Neither given: its rows are skipped. docs/benchmarks.md names the pinned commits.
  PyTorch twin       bench/train_twin.py with /usr/bin/python3 (python3-torch), for training
  train-lora         build/diffuse train-lora on SD15_CKPT with and without --gradient-checkpointing
                     (section lora: LORA_SIZE, default 512, and LORA_STEPS, default 5; batch 1, --bf16)

Checkpoints (random weights with every key and shape of the real ones; values do not change the
cost): SD15_CKPT (default /tmp/sd15_random.safetensors) and SDXL_CKPT (default
/tmp/sdxl_random.safetensors), written by build/bench/sd_random_checkpoint when missing (2.1 GB
and 6.9 GB, fp16). REPEATS (default 3) runs per contender, alternating; medians are reported.
THREADS (default: the number of cores) for every contender. STEPS (e.g. "512:4") overrides the steps of a
size. SIZES (e.g. "256,1024") and SD15_DTYPES
("fp32,bf16") narrow the generation rows.
"""
import argparse
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD = os.environ.get("BUILD", os.path.join(ROOT, "build"))
DIFFUSE = os.path.join(BUILD, "diffuse")
THREADS = int(os.environ.get("THREADS", os.cpu_count() or 1))
PROMPT = "a photograph of an astronaut riding a horse"
nan = float("nan")
BEGIN = "<!-- bench/run_all.py: begin (generated; edit the script, not this section) -->"
END = "<!-- bench/run_all.py: end -->"


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def sh(cmd, **kw):
    return subprocess.run(cmd, shell=True, capture_output=True, text=True, **kw).stdout.strip()


def machine():
    cpu = sh("lscpu | sed -n 's/^Model name: *//p'") or platform.processor()
    flags = sh("grep -m1 '^flags' /proc/cpuinfo").split()
    wanted = ["avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_int8", "avx512_vnni"]
    have = [f for f in wanted if f in flags]
    blas = os.path.realpath("/usr/lib/x86_64-linux-gnu/libblas.so.3")
    blas = os.path.join(os.path.basename(os.path.dirname(blas)), os.path.basename(blas))
    torch = sh("dpkg-query -W -f '${Version}' libtorch-dev 2>/dev/null") or "?"
    mem = sh("free -g | awk '/^Mem/{print $2}'")
    # OpenBLAS's kernels: its own choice (what the PyTorch twin runs) and diffuse's (src/core/blas.h).
    chosen = sh("/usr/bin/python3 -c \"import ctypes; b = ctypes.CDLL('libopenblas.so.0'); "
                "b.openblas_get_corename.restype = ctypes.c_char_p; print(b.openblas_get_corename().decode())\"")
    m = re.search(r"OpenBLAS (\w+)", sh(f"{DIFFUSE} --version"))
    kernels = f"; OpenBLAS kernels {chosen or '?'} (its own choice), {m.group(1) if m else '?'} in diffuse"
    return (f"{cpu}; flags {' '.join(have) or 'none of ' + ', '.join(wanted)}; {os.cpu_count()} cores, {mem} GiB; "
            f"libtorch {torch}; BLAS {blas}{kernels if chosen else ''}; {THREADS} threads per contender")


def loadavg():
    return open("/proc/loadavg").read().split()[0]


def sample_rss(time_pid, t0, samples):
    """Appends (seconds since t0, RSS GB) of the command that /usr/bin/time (time_pid) runs, every 0.1 s
    while it runs (Linux /proc)."""
    child = None
    while True:
        try:
            if child is None:
                kids = open(f"/proc/{time_pid}/task/{time_pid}/children").read().split()
                child = kids[0] if kids else None
            if child is not None:
                for line in open(f"/proc/{child}/status"):
                    if line.startswith("VmRSS:"):
                        samples.append((time.monotonic() - t0, int(line.split()[1]) * 1024 / 1e9))
        except (OSError, ValueError):
            if child is not None or not os.path.exists(f"/proc/{time_pid}"):
                return
        time.sleep(0.1)


def timed(cmd, log_path, stamps=None, rss=None):
    """Runs cmd under /usr/bin/time -v; returns (wall seconds, peak RSS GB, combined output, failure). With
    a list as `stamps`, appends (seconds since the start, line) for each output line as it arrives; with
    a list as `rss`, (seconds since the start, RSS GB) every 0.1 s."""
    with open(log_path, "w") as f:
        t0 = time.monotonic()
        if stamps is None:
            rc = subprocess.run(["/usr/bin/time", "-v"] + cmd, stdout=f, stderr=subprocess.STDOUT).returncode
        else:
            p = subprocess.Popen(["/usr/bin/time", "-v"] + cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 text=True, errors="replace")
            if rss is not None:
                threading.Thread(target=sample_rss, args=(p.pid, t0, rss), daemon=True).start()
            for line in p.stdout:
                stamps.append((time.monotonic() - t0, line.rstrip("\n")))
                f.write(line)
            rc = p.wait()
        wall = time.monotonic() - t0
    out = open(log_path, errors="replace").read()
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", out)
    failed = {}
    if rc != 0:
        why = "killed (out of memory?)" if "terminated by signal 9" in out else f"exited {rc}"
        failed = {"failed": f"{os.path.basename(cmd[0])} {why}, RSS {int(rss.group(1)) * 1024 / 1e9:.2f} GB when it "
                            f"ended; see {log_path}" if rss else f"{os.path.basename(cmd[0])} {why}; see {log_path}"}
    return wall, (int(rss.group(1)) * 1024 / 1e9 if rss else float("nan")), out, failed


def diffuse_generate(ckpt, size, steps, out_png, log_path, extra=()):
    cmd = [DIFFUSE, "generate", "--model", ckpt, "--prompt", PROMPT, "--width", str(size), "--height", str(size),
           "--steps", str(steps), "--guidance", "7", "--seed", "0", "--threads", str(THREADS), "--timings",
           "--out", out_png] + list(extra)
    wall, rss, out, failed = timed(cmd, log_path)
    m = re.search(r'^timings \{"load_s": ([\d.e+-]+), "step_s": \[([^\]]*)\], "decode_s": ([\d.e+-]+)', out, re.M)
    steps_s = [float(x) for x in m.group(2).split(",")] if m else []
    return {"wall": wall, "rss": rss, "load": float(m.group(1)) if m else float("nan"),
            "step": statistics.median(steps_s[1:] or steps_s) if steps_s else float("nan"),
            "decode": float(m.group(3)) if m else float("nan"), **failed}


def sdcpp_generate(sd, ckpt, size, steps, out_png, log_path, extra=()):
    cmd = [sd, "-m", ckpt, "-p", PROMPT, "-W", str(size), "-H", str(size), "--steps", str(steps), "--cfg-scale", "7",
           "-s", "0", "-t", str(THREADS), "--sampling-method", "euler", "-o", out_png] + list(extra)
    wall, rss, out, failed = timed(cmd, log_path)

    def secs(pattern):
        m = re.search(pattern + r", taking ([\d.]+)s", out)
        return float(m.group(1)) if m else float("nan")

    # It loads each component when first used: the load is the sum of its "loading tensors" lines.
    load = sum(float(x) for x in re.findall(r"loading tensors completed, taking ([\d.]+)s", out)) or float("nan")
    sampling = secs("sampling completed")
    return {"wall": wall, "rss": rss, "load": load, "step": sampling / steps,
            "decode": secs("decode_first_stage completed"), **failed}


def sdcpp_binary(tmp):
    if os.environ.get("SDCPP"):
        return os.environ["SDCPP"]
    src = os.environ.get("SDCPP_SRC")
    if not src:
        return None
    out = os.path.join(BUILD, "sdcpp")
    binary = os.path.join(out, "bin", "sd-cli")
    if not os.path.exists(binary):
        log(f"building stable-diffusion.cpp from {src} into {out}")
        subprocess.run(["cmake", "-S", src, "-B", out, "-DCMAKE_BUILD_TYPE=Release", "-DGGML_NATIVE=ON"], check=True,
                       stdout=subprocess.DEVNULL)
        subprocess.run(["cmake", "--build", out, "-j", str(os.cpu_count()), "--target", "sd-cli"], check=True,
                       stdout=subprocess.DEVNULL)
    return binary


def random_checkpoint(path, keys):
    if not os.path.exists(path):
        log(f"writing {path} (random weights, the names and shapes of {keys})")
        subprocess.run([os.path.join(BUILD, "bench", "sd_random_checkpoint"), os.path.join(ROOT, keys), path],
                       check=True, stdout=subprocess.DEVNULL)
    return path


def psnr(a_png, b_png):
    """PSNR (dB) of two 8-bit RGB images, with PIL alone (no numpy needed)."""
    code = ("import sys, math; from PIL import Image, ImageChops, ImageStat\n"
            "a, b = (Image.open(f).convert('RGB') for f in sys.argv[1:3])\n"
            "rms = ImageStat.Stat(ImageChops.difference(a, b)).rms\n"
            "m = sum(r * r for r in rms) / len(rms)\n"
            "print('inf' if m == 0 else f'{10 * math.log10(255 ** 2 / m):.1f}')")
    r = subprocess.run(["/usr/bin/python3", "-c", code, a_png, b_png], capture_output=True, text=True)
    return r.stdout.strip() or "?"


def side_by_side(contenders, repeats):
    """contenders: list of (name, fn() -> dict). Runs them alternately `repeats` times; medians."""
    runs = {name: [] for name, _ in contenders}
    for r in range(repeats):
        for name, fn in contenders:
            log(f"  {name}, run {r + 1}/{repeats} (load average {loadavg()})")
            runs[name].append(fn(r))
            if "failed" in runs[name][-1]:  # killed (out of memory) or failed: reported, not the end
                log("  " + runs[name][-1]["failed"])
    res = {}
    for name, rs in runs.items():
        ok = [x for x in rs if "failed" not in x] or rs
        res[name] = {k: statistics.median(x[k] for x in ok) for k in ["wall", "rss", "load", "step", "decode"]}
        if len(ok) < len(rs) or "failed" in ok[0]:
            res[name]["failed"] = next(x["failed"] for x in rs if "failed" in x)
            if "failed" in ok[0]:
                res[name]["wall"] = nan  # an unfinished run has no wall time to compare
    return res


def fmt(x, digits=1):
    return "-" if x != x else f"{x:.{digits}f}"


def generation_table(title, results, base_name, ref_name, note):
    for name, m in results.items():
        if "failed" in m:
            note += f" {name}: {m['failed']}."
    lines = [f"### {title}", "", note, "",
             "| contender | wall (s) | load (s) | s/step | VAE decode (s) | peak RSS (GB) |", "|---|---|---|---|---|---|"]
    for name, m in results.items():
        lines.append(f"| {name} | {fmt(m['wall'])} | {fmt(m['load'])} | {fmt(m['step'], 2)} | {fmt(m['decode'])} | "
                     f"{fmt(m['rss'], 2)} |")
    if ref_name in results:
        b = results[ref_name]
        lines.append("")
        for name, a in results.items():
            if name != ref_name:
                lines.append(f"- {name} / {ref_name}: wall **{a['wall'] / b['wall']:.2f}**, peak RSS "
                             f"**{a['rss'] / b['rss']:.2f}**, s/step {a['step'] / b['step']:.2f}, load "
                             f"{a['load'] / b['load']:.2f}.")
    return lines + [""]


def section_generation(kind, args, sd, tmp):
    if kind == "sdxl":
        ckpt = random_checkpoint(os.environ.get("SDXL_CKPT", "/tmp/sdxl_random.safetensors"), "tests/fixtures/sdxl_keys.tsv")
        cases = [(768, 2), (1024, 2)] if not args.quick else [(768, 2)]
        cases = [c for c in cases if str(c[0]) in os.environ.get("SIZES", "256,512,768,1024").split(",")]
        extra = ["--dtype", "bf16"]
    else:
        ckpt = random_checkpoint(os.environ.get("SD15_CKPT", "/tmp/sd15_random.safetensors"), "tests/fixtures/sd15_keys.tsv")
        cases = [(256, 4), (512, 20)] if not args.quick else [(256, 2)]
        cases = [c for c in cases if str(c[0]) in os.environ.get("SIZES", "256,512,768,1024").split(",")]
        extra = []
    # STEPS="512:4" runs a size with other steps (peak memory does not depend on them)
    steps_for = dict(kv.split(":") for kv in os.environ.get("STEPS", "").split(",") if ":" in kv)
    cases = [(size, int(steps_for.get(str(size), steps))) for size, steps in cases]
    out = []
    for size, steps in cases:
        log(f"{kind} {size}x{size}, {steps} steps")
        contenders = [("diffuse", lambda r, s=size, n=steps: diffuse_generate(
            ckpt, s, n, f"{tmp}/{kind}_{s}_diffuse.png", f"{tmp}/{kind}_{s}_diffuse_{r}.log", extra))]
        if kind == "sd15":  # both compute dtypes, named (the README says which is the default)
            contenders = []
            for dt in os.environ.get("SD15_DTYPES", "fp32,bf16").split(","):
                contenders.append((f"diffuse --dtype {dt}", lambda r, s=size, n=steps, dt=dt: diffuse_generate(
                    ckpt, s, n, f"{tmp}/{kind}_{s}_{dt}.png", f"{tmp}/{kind}_{s}_{dt}_{r}.log", ["--dtype", dt])))
        if kind == "int8":
            contenders = [("diffuse fp16 weights", contenders[0][1]),
                          ("diffuse int8 weights", lambda r, s=size, n=steps: diffuse_generate(
                              ckpt, s, n, f"{tmp}/int8_{s}.png", f"{tmp}/int8_{s}_{r}.log", ["--weights", "int8"]))]
        if sd:
            sd_extra = ["--type", "q8_0"] if kind == "int8" else []
            contenders.append(("stable-diffusion.cpp" + (" q8_0" if kind == "int8" else ""),
                               lambda r, s=size, n=steps: sdcpp_generate(
                                   sd, ckpt, s, n, f"{tmp}/{kind}_{s}_sdcpp.png", f"{tmp}/{kind}_{s}_sdcpp_{r}.log",
                                   sd_extra)))
        repeats = 1 if args.quick or steps >= 20 or kind == "sdxl" else args.repeats
        res = side_by_side(contenders, repeats)
        base = "diffuse int8 weights" if kind == "int8" else "diffuse"
        ref = [n for n in res if n.startswith("stable-diffusion.cpp")]
        note = (f"{size}x{size}, {steps} steps, CFG 7, euler, {THREADS} threads, median of {repeats}; "
                f"load average {loadavg()} at the end.")
        if kind == "sdxl":
            note += " diffuse computes in bf16 with 16-bit-resident weights; stable-diffusion.cpp runs the file's f16."
        if kind == "int8":
            note += (f" PSNR of the int8-weight image against the fp16-weight one: "
                     f"{psnr(f'{tmp}/int8_{size}.png', f'{tmp}/int8_{size}_diffuse.png')} dB.")
        title = {"sd15": "Stable Diffusion 1.5, whole call", "int8": "Stable Diffusion 1.5, weights in 8 bits",
                 "sdxl": "SDXL base"}[kind]
        out += generation_table(f"{title}: {size}x{size}, {steps} steps", res, base, ref[0] if ref else "", note)
    return out


def section_train(args, tmp):
    out = ["### Training: diffuse train against its PyTorch twin", "",
           "`bench/run_train_bench.sh` (same config, batch, threads; see \"Training throughput\"). "
           f"Load average {loadavg()} at the start.", "",
           "| model | precision | diffuse train (img/s) | PyTorch twin (img/s) | ratio | rounds (diffuse / twin) |",
           "|---|---|---|---|---|---|"]
    cases = [("Fashion-MNIST small, batch 64", ["--preset", "small", "--batch", "64"]),
             ("DiT-S/2 on emoji latents, batch 8", ["--preset", "DiT-S/2", "--batch", "8", "--data", "emoji",
                                                    "--latent", os.path.join(ROOT, "models/emoji-vae"),
                                                    "--warmup", "2", "--steps", "8"])]
    repeats = 1 if args.quick else args.repeats
    out[2] = out[2].replace("threads; see", f"threads; medians of {repeats} alternating rounds; see")
    if args.quick:
        cases = [("tiny, batch 16 (quick)", ["--preset", "tiny", "--batch", "16", "--warmup", "2", "--steps", "3"])]
    for name, flags in cases:
        for precision, extra in (("fp32", []), ("bf16 autocast", ["--bf16"])):
            log(f"train: {name}, {precision}")
            txt = sh(" ".join([os.path.join(ROOT, "bench/run_train_bench.sh"), "--threads", str(THREADS),
                               "--twin-attention", "bmm", "--repeats", str(repeats)] + flags + extra) + " 2>&1")
            with open(os.path.join(tmp, re.sub(r"[^a-z0-9]+", "-", f"train {name} {precision}".lower()) + ".log"),
                      "w") as f:
                f.write(txt + "\n")
            d = re.search(r"^diffuse train: ([\d.]+) img/s", txt, re.M)
            p = re.search(r"^pytorch twin: +([\d.]+) img/s", txt, re.M)
            rounds = ", ".join(f"{a}/{b}" for a, b in re.findall(r"^round \d+/\d+: diffuse ([\d.]+), twin ([\d.]+)", txt, re.M))
            if d and p:
                ratio = float(d.group(1)) / float(p.group(1))
                out.append(f"| {name} | {precision} | {d.group(1)} | {p.group(1)} | {ratio:.2f} | {rounds} |")
            else:
                out.append(f"| {name} | {precision} | failed | | | |")
                log(txt[-2000:])
    return out + [""]


def write_png(path, width, height, pixel):
    """An 8-bit RGB PNG from pixel(x, y) -> (r, g, b), with the standard library alone."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    rows = b"".join(b"\0" + bytes(c for x in range(width) for c in pixel(x, y)) for y in range(height))
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)) +
                chunk(b"IDAT", zlib.compress(rows, 6)) + chunk(b"IEND", b""))


LORA_CAPTIONS = ["a red circle on a blue background", "green and yellow stripes", "a purple square in the middle",
                 "an orange gradient"]


def lora_data(folder, size):
    """A captioned folder in kohya's layout: a few synthetic size x size images, a short caption each (the
    pixel values do not change the cost of a step)."""
    os.makedirs(folder, exist_ok=True)
    c = size / 2
    shapes = [lambda x, y: (220, 40, 40) if (x - c) ** 2 + (y - c) ** 2 < (size / 3) ** 2 else (30, 60, 200),
              lambda x, y: (40, 180, 60) if (x // 32) % 2 else (230, 210, 40),
              lambda x, y: (140, 50, 170) if abs(x - c) < size / 4 and abs(y - c) < size / 4 else (245, 245, 245),
              lambda x, y: (255, (x * 200) // size, (y * 100) // size)]
    for i, (shape, caption) in enumerate(zip(shapes, LORA_CAPTIONS)):
        write_png(os.path.join(folder, f"{i}.png"), size, size, shape)
        with open(os.path.join(folder, f"{i}.txt"), "w") as f:
            f.write(caption + "\n")
    return folder


def diffuse_train_lora(ckpt, data, size, steps, out, log_path, extra=()):
    """One train-lora run. s/step: the median of the steps after the first, from the arrival times of the
    progress lines (one per step when there are at most 10 and stderr is not a terminal); first: from the
    run's first line (after loading and encoding the latents) to the end of step 1; train_rss: the largest
    RSS sampled from that line on (rss, the process's peak, also covers loading)."""
    cmd = [DIFFUSE, "train-lora", "--model", ckpt, "--data", data, "--out", out, "--rank", "16", "--alpha", "8",
           "--resolution", str(size), "--batch", "1", "--steps", str(steps), "--bf16", "--eval-images", "0",
           "--save-every", "0", "--seed", "0", "--threads", str(THREADS)] + list(extra)
    stamps, samples = [], []
    wall, rss, out_text, failed = timed(cmd, log_path, stamps, samples)
    done = {}
    start = nan
    for t, line in stamps:
        if line.startswith("diffuse train-lora: ") and start != start:
            start = t
        m = re.match(r"train-lora (\d+)/(\d+) ", line)
        if m:
            done.setdefault(int(m.group(1)), t)
    per_step = [done[k] - done[k - 1] for k in range(2, steps + 1) if k in done and k - 1 in done]
    if not failed and len(done) < min(steps, 10):
        failed = {"failed": f"train-lora printed {len(done)} of {steps} step lines; see {log_path}"}
    training = [gb for t, gb in samples if t >= start]
    return {"wall": wall, "rss": rss, "train_rss": max(training) if training else nan,
            "step": statistics.median(per_step) if per_step else nan, "first": done.get(1, nan) - start, **failed}


def section_lora(args, tmp):
    """diffuse train-lora on the SD 1.5 checkpoint, batch 1, bf16, with and without gradient checkpointing."""
    ckpt = random_checkpoint(os.environ.get("SD15_CKPT", "/tmp/sd15_random.safetensors"), "tests/fixtures/sd15_keys.tsv")
    size = 256 if args.quick else int(os.environ.get("LORA_SIZE", 512))
    steps = 2 if args.quick else int(os.environ.get("LORA_STEPS", 5))
    repeats = 1 if args.quick else args.repeats
    data = lora_data(os.path.join(tmp, f"lora_data_{size}"), size)
    modes = [("without checkpointing", []), ("--gradient-checkpointing", ["--gradient-checkpointing"])]
    runs = {name: [] for name, _ in modes}
    log(f"lora {size}x{size}, {steps} steps")
    for r in range(repeats):
        for i, (name, extra) in enumerate(modes):
            log(f"  train-lora {name}, run {r + 1}/{repeats} (load average {loadavg()})")
            res = diffuse_train_lora(ckpt, data, size, steps, f"{tmp}/lora_{i}_{r}.safetensors",
                                     f"{tmp}/lora_{i}_{r}.log", extra)
            if "failed" in res:
                log("  " + res["failed"])
            runs[name].append(res)
    lines = [f"### LoRA training of Stable Diffusion 1.5: {size}x{size}, batch 1, bf16", "",
             f"`diffuse train-lora` on the random SD 1.5 checkpoint, {len(LORA_CAPTIONS)} captioned {size}x{size} "
             f"images, rank 16, alpha 8, `--layers attention`, `--bf16`, {steps} steps, {THREADS} threads, "
             f"median of {repeats}; s/step is the median of the steps after the first; the peak RSS while training "
             "is the largest RSS sampled every 0.1 s after loading and encoding the latents. Load average "
             f"{loadavg()} at the end.", "",
             "| mode | peak RSS (GB) | peak RSS while training (GB) | s/step | first step (s) | wall (s) |",
             "|---|---|---|---|---|---|"]
    res = {}
    for name, rs in runs.items():
        ok = [x for x in rs if "failed" not in x]
        if not ok:  # every run failed: reported, no figures
            lines.append(f"| {name} | failed: {rs[0]['failed']} | | | |")
            continue
        res[name] = m = {k: statistics.median(x[k] for x in ok)
                         for k in ["wall", "rss", "train_rss", "step", "first"]}
        lines.append(f"| {name} | {fmt(m['rss'], 2)} | {fmt(m['train_rss'], 2)} | {fmt(m['step'], 2)} | "
                     f"{fmt(m['first'])} | {fmt(m['wall'])} |")
    if len(res) == 2:
        a, b = res[modes[1][0]], res[modes[0][0]]
        lines += ["", f"- `--gradient-checkpointing` / without: peak RSS while training "
                      f"**{a['train_rss'] / b['train_rss']:.2f}** ({a['train_rss'] - b['train_rss']:+.2f} GB), "
                      f"s/step **{a['step'] / b['step']:.2f}**; the process's peak {a['rss'] / b['rss']:.2f} "
                      f"({a['rss'] - b['rss']:+.2f} GB), which loading sets when it is the larger."]
    return lines + [""]


def section_blocks():
    binary = os.path.join(BUILD, "bench", "bench_blocks")
    if not os.path.exists(binary):
        return ["### Block micro-benchmarks", "", "bench_blocks not built (libbenchmark-dev); skipped.", ""]
    txt = sh(f"{binary} --benchmark_repetitions=3 --benchmark_report_aggregates_only=true 2>/dev/null")
    rows = [l for l in txt.splitlines() if "_median" in l]
    return ["### Block micro-benchmarks (bench_blocks, median of 3)", "", "```"] + rows + ["```", ""]


SECTIONS = ["sd15", "int8", "sdxl", "lora", "train", "blocks"]
SECTION = "<!-- bench/run_all.py section: {} -->"
PREAMBLE = ("Each section below names the run that wrote it; `--write` replaces the sections of the run and "
            "keeps the others.")
ENV = ["SIZES", "STEPS", "SD15_DTYPES", "REPEATS", "THREADS", "LORA_SIZE", "LORA_STEPS", "SD15_CKPT", "SDXL_CKPT"]


def merge_generated(cur, sections):
    """The generated block of docs/benchmarks.md with `sections` ({name: lines}) replacing those of the same
    name in `cur` (the file's text) and the others kept, in SECTIONS order."""
    kept = {}
    if BEGIN in cur and END in cur:
        block = cur[cur.index(BEGIN) + len(BEGIN):cur.index(END)]
        parts = re.split(r"<!-- bench/run_all\.py section: (\w+) -->\n", block)
        kept = {name: text.strip("\n") for name, text in zip(parts[1::2], parts[2::2])}
    kept.update({name: "\n".join(lines).strip("\n") for name, lines in sections.items()})
    out = [BEGIN, "", PREAMBLE, ""]
    for name in SECTIONS + sorted(set(kept) - set(SECTIONS)):
        if name in kept:
            out += [SECTION.format(name), kept[name], ""]
    return "\n".join(out + [END])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", default="sd15,int8,sdxl,lora,train,blocks")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--write", action="store_true",
                    help="rewrite the sections run in the generated part of docs/benchmarks.md (the others stay)")
    ap.add_argument("--repeats", type=int, default=int(os.environ.get("REPEATS", 3)))
    args = ap.parse_args()
    if not os.path.exists(DIFFUSE):
        sys.exit(f"{DIFFUSE}: not built (scripts/build.sh)")
    only = args.only.split(",")
    unknown = [k for k in only if k not in SECTIONS]
    if unknown:
        sys.exit(f"--only: unknown section {', '.join(unknown)} (sections: {', '.join(SECTIONS)})")
    tmp = tempfile.mkdtemp(prefix="diffuse-bench-")
    sd = sdcpp_binary(tmp) if any(k in only for k in ["sd15", "int8", "sdxl"]) else None
    env = "".join(f"{k}={os.environ[k]} " for k in ENV if k in os.environ)
    cmd = (f"{env}bench/run_all.py{' --quick' if args.quick else ''}"
           f"{f' --repeats {args.repeats}' if '--repeats' in ' '.join(sys.argv) else ''} --only {{}}")
    sections = {}
    for kind in SECTIONS:
        if kind not in only:
            continue
        if kind in ["sd15", "int8", "sdxl"]:
            lines = section_generation(kind, args, sd, tmp)
        elif kind == "lora":
            lines = section_lora(args, tmp)
        elif kind == "train":
            lines = section_train(args, tmp)
        else:
            lines = section_blocks()
        # Each section says where it comes from, under each of its headings.
        note = f"Generated by `{cmd.format(kind)}` on {time.strftime('%Y-%m-%d')}. Machine: {machine()}."
        if kind in ["sd15", "int8", "sdxl"]:
            note += f" stable-diffusion.cpp: {sd or 'not given (SDCPP or SDCPP_SRC); its rows are skipped'}."
        note += f" Logs: {tmp}."
        out = []
        for line in lines:
            out.append(line)
            if line.startswith("### "):
                out += ["", note]
        sections[kind] = out
    text = merge_generated("", sections) + "\n"
    print(text)
    if args.write:
        doc = os.path.join(ROOT, "docs", "benchmarks.md")
        cur = open(doc).read()
        block = merge_generated(cur, sections)
        if BEGIN in cur and END in cur:
            new = cur[:cur.index(BEGIN)] + block + cur[cur.index(END) + len(END):]
        else:
            new = cur.rstrip("\n") + "\n\n## The suite\n\n" + block + "\n"
        with open(doc + ".tmp", "w") as f:
            f.write(new)
        os.replace(doc + ".tmp", doc)
        log(f"rewrote the sections {', '.join(sections)} of the generated part of {doc}")


if __name__ == "__main__":
    main()
