#!/usr/bin/env python3
"""diffuse serve on this machine (docs/benchmarks.md, "Serving").

1. Time to first image: `diffuse generate` (a new process: start, load, generate, write) against
   the second request to a warm server for the same model and settings (POST /sdapi/v1/txt2img),
   for each --model given.
2. A bounded loopback load run against one model: --requests requests at --concurrency, a share
   of them malformed (bad JSON, unknown fields, wrong types, absurd sizes, unknown models and
   samplers); prints the status counts, p50 / p95 latency per kind, the server's RSS before and
   after, and whether it is still serving.

Usage: bench/serve_bench.py [--model DIR_OR_FILE[:json-overrides]] ... [--requests 300]
       [--concurrency 8] [--malformed 0.3] [--diffuse build/diffuse]
Standard library only; talks to 127.0.0.1 only.
"""
import argparse
import http.client
import json
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor


def cpu_name():
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "unknown"


def rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def request(port, method, path, body=None, timeout=600):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    t0 = time.perf_counter()
    headers = {"Content-Type": "application/json"} if body is not None else {}
    c.request(method, path, body=body, headers=headers)
    r = c.getresponse()
    data = r.read()
    c.close()
    return r.status, data, time.perf_counter() - t0


def start_server(diffuse, models, threads):
    args = [diffuse, "serve", "--port", "0", "--threads", str(threads), "--max-queue", "64"]
    for m in models:
        args += ["--model", m]
    p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = p.stdout.readline()
    m = re.search(r":(\d+) ", line)
    if not m:
        p.kill()
        sys.exit(f"diffuse serve did not start: {line!r}")
    return p, int(m.group(1))


def first_image(diffuse, model, extra, threads, tmp):
    """(CLI seconds, warm server seconds) for one image with the same settings."""
    payload = {"steps": 20, "seed": 1, "batch_size": 1, "n_iter": 1}
    payload.update(extra)
    flags = ["--steps", str(payload["steps"]), "--seed", str(payload["seed"]), "-n", "1"]
    if "prompt" in payload:
        flags += ["--prompt", payload["prompt"]]
    for k, f in (("width", "--width"), ("height", "--height"), ("cfg_scale", "--guidance")):
        if k in payload:
            flags += [f, str(payload[k])]
    t0 = time.perf_counter()
    subprocess.run([diffuse, "generate", "--model", model, "--threads", str(threads), "--out",
                    os.path.join(tmp, "cli.png")] + flags, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    cli_s = time.perf_counter() - t0
    p, port = start_server(diffuse, [model], threads)
    try:
        body = json.dumps(payload)
        s1, _, first_s = request(port, "POST", "/sdapi/v1/txt2img", body)
        s2, _, warm_s = request(port, "POST", "/sdapi/v1/txt2img", body)
        assert s1 == 200 and s2 == 200, (s1, s2)
    finally:
        p.terminate()
        p.wait()
    return cli_s, first_s, warm_s


MALFORMED = [
    ("/api/v1/jobs", "{not json"),
    ("/api/v1/jobs", json.dumps({"stepz": 3})),
    ("/api/v1/jobs", json.dumps({"steps": "many"})),
    ("/api/v1/jobs", json.dumps({"width": 100000, "height": 100000})),
    ("/api/v1/jobs", json.dumps({"model": "../../etc/passwd"})),
    ("/api/v1/jobs", json.dumps({"sampler": "warp-drive"})),
    ("/sdapi/v1/txt2img", json.dumps({"steps": [1]})),
    ("/sdapi/v1/txt2img", "[]"),
    ("/v1/images/generations", json.dumps({"prompt": 3})),
    ("/sdapi/v1/img2img", json.dumps({"init_images": ["not base64!"]})),
]


def load_run(diffuse, model, extra, n, concurrency, malformed, threads):
    p, port = start_server(diffuse, [model], threads)
    rng = random.Random(0)
    valid = {"steps": 4, "seed": 1, "batch_size": 1, "n_iter": 1}
    valid.update(extra)
    jobs = []
    for i in range(n):
        if rng.random() < malformed:
            jobs.append(("malformed",) + MALFORMED[i % len(MALFORMED)])
        else:
            jobs.append(("valid", "/sdapi/v1/txt2img", json.dumps(dict(valid, seed=i))))
    request(port, "POST", "/sdapi/v1/txt2img", json.dumps(valid))  # load the model
    rss_before = rss_mb(p.pid)

    def one(job):
        kind, path, body = job
        try:
            status, _, s = request(port, "POST", path, body)
        except Exception as e:  # a dropped connection counts as an error, not a status
            return kind, f"error {type(e).__name__}", 0.0
        return kind, status, s

    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as ex:
        results = list(ex.map(one, jobs))
    wall = time.perf_counter() - t0
    alive = p.poll() is None
    health = request(port, "GET", "/health")[0] if alive else None
    rss_after = rss_mb(p.pid) if alive else float("nan")
    p.terminate()
    code = p.wait()
    return results, wall, rss_before, rss_after, alive, health, code


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))] if xs else float("nan")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", action="append", default=[])
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--malformed", type=float, default=0.3)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--diffuse", default="build/diffuse")
    a = ap.parse_args()
    models = a.model or ["models/fashion-mnist:{\"prompt\": \"sneaker\", \"cfg_scale\": 1.5}"]
    print(f"CPU: {cpu_name()}, {os.cpu_count()} cores, {a.threads} threads")
    print()
    print("| model | CLI: new process to PNG (s) | server: first request, with load (s) | server: warm request (s) | CLI / warm |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for spec in models:
            path, _, extra = spec.partition(":{")
            extra = json.loads("{" + extra) if extra else {}
            cli_s, first_s, warm_s = first_image(a.diffuse, path, extra, a.threads, tmp)
            print(f"| {os.path.basename(path.rstrip('/'))} | {cli_s:.2f} | {first_s:.2f} | {warm_s:.2f} | "
                  f"{cli_s / warm_s:.1f}x |")
    path, _, extra = models[0].partition(":{")
    extra = json.loads("{" + extra) if extra else {}
    res, wall, before, after, alive, health, code = load_run(a.diffuse, path, extra, a.requests, a.concurrency,
                                                            a.malformed, a.threads)
    print()
    print(f"Load run: {a.requests} requests to {os.path.basename(path)} at concurrency {a.concurrency}, "
          f"{a.malformed:.0%} malformed, {wall:.1f} s wall")
    print()
    print("| requests | count | statuses | p50 latency (s) | p95 latency (s) |")
    print("|---|---|---|---|---|")
    for kind in ("valid", "malformed"):
        rows = [r for r in res if r[0] == kind]
        statuses = {}
        for _, s, _ in rows:
            statuses[s] = statuses.get(s, 0) + 1
        lat = [s for _, st, s in rows if isinstance(st, int)]
        st = ", ".join(f"{k}: {v}" for k, v in sorted(statuses.items(), key=lambda kv: str(kv[0])))
        print(f"| {kind} | {len(rows)} | {st} | {pct(lat, 0.5):.3f} | {pct(lat, 0.95):.3f} |")
    print()
    print(f"Server RSS: {before:.0f} MB before, {after:.0f} MB after; alive at the end: {alive}, "
          f"/health {health}; exit code after SIGTERM: {code}")


if __name__ == "__main__":
    main()
