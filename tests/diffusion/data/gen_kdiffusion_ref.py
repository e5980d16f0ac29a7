"""Reference outputs of k-diffusion's samplers for tests/diffusion/kdiffusion_test.cpp.

Usage: python3 gen_kdiffusion_ref.py /path/to/k_diffusion/sampling.py out.safetensors
Generated from crowsonkb/k-diffusion 4601bf085320592473f681a62808ed873d17fad5 with torch 1.13 (CPU).
k-diffusion's imports that are unused by these samplers (scipy, torchdiffeq, torchsde, tqdm)
are stubbed. All noise is injected: the samplers' noise_sampler pops pre-drawn tensors in
call order (dpm++sde: Brownian increments, see below); torch.randn_like (churn) likewise.
"""
import importlib.util
import json
import struct
import sys
import types

import torch

for name in ["scipy", "scipy.integrate", "torchdiffeq", "torchsde", "tqdm", "tqdm.auto"]:
    sys.modules[name] = types.ModuleType(name)
sys.modules["scipy"].integrate = sys.modules["scipy.integrate"]
sys.modules["torchdiffeq"].odeint = None
sys.modules["tqdm.auto"].trange = lambda n, disable=None: range(n)
sys.modules["tqdm.auto"].tqdm = None
pkg = types.ModuleType("kd")
pkg.__path__ = []
utils = types.ModuleType("kd.utils")
utils.append_dims = lambda x, n: x[(...,) + (None,) * (n - x.ndim)]
sys.modules["kd"], sys.modules["kd.utils"] = pkg, utils
pkg.utils = utils
spec = importlib.util.spec_from_file_location("kd.sampling", sys.argv[1])
K = importlib.util.module_from_spec(spec)
spec.loader.exec_module(K)

torch.set_default_dtype(torch.float64)
g = torch.Generator().manual_seed(20240501)
B, C = 2, 6
mu = torch.randn(C, generator=g) * 0.5
var = torch.rand(C, generator=g) * 1.5 + 0.2
steps = 10
sigmas = K.get_sigmas_karras(steps, 0.05, 12.0, rho=7.0).to(torch.float64)
x0 = torch.randn(B, C, generator=g) * sigmas[0]
pool = torch.randn(64, B, C, generator=g)


def model(x, s):
    s2 = (s * s)[:, None]
    return mu + var / (var + s2) * (x - mu)


class Pop:
    def __init__(self):
        self.k = 0

    def __call__(self, *args, **kwargs):
        t = pool[self.k].clone()
        self.k += 1
        return t


def brownian():
    # dpm++sde draws on [s, s_mid] then on [s, s_next]; the second must contain the first
    # increment. Our sampler draws z_a, z_b: n1 = z_a, n2 = (z_a sqrt(s - s_mid) + z_b sqrt(s_mid - s_next)) / sqrt(s - s_next).
    pop = Pop()
    state = {}

    def ns(sigma, sigma_next):
        sigma, sigma_next = float(sigma), float(sigma_next)
        if "za" not in state:
            state["za"], state["zb"], state["mid"] = pop(), pop(), sigma_next
            return state["za"]
        za, zb, mid = state.pop("za"), state.pop("zb"), state.pop("mid")
        return (za * (sigma - mid) ** 0.5 + zb * (mid - sigma_next) ** 0.5) / (sigma - sigma_next) ** 0.5

    return ns


out = {"sigmas": sigmas, "x": x0, "noise": pool, "mu": mu, "var": var}
runs = {
    "euler_churn": lambda: K.sample_euler(model, x0, sigmas, s_churn=1.0),
    "heun_churn": lambda: K.sample_heun(model, x0, sigmas, s_churn=1.0),
    "dpm2_churn": lambda: K.sample_dpm_2(model, x0, sigmas, s_churn=1.0),
    "heun": lambda: K.sample_heun(model, x0, sigmas),
    "dpm2": lambda: K.sample_dpm_2(model, x0, sigmas),
    "euler_a": lambda: K.sample_euler_ancestral(model, x0, sigmas, noise_sampler=Pop()),
    "dpm2_a": lambda: K.sample_dpm_2_ancestral(model, x0, sigmas, noise_sampler=Pop()),
    "dpm++2s_a": lambda: K.sample_dpmpp_2s_ancestral(model, x0, sigmas, noise_sampler=Pop()),
    "dpm++sde": lambda: K.sample_dpmpp_sde(model, x0, sigmas, noise_sampler=brownian()),
    "dpm++2m": lambda: K.sample_dpmpp_2m(model, x0, sigmas),
    "dpm++2m_sde": lambda: K.sample_dpmpp_2m_sde(model, x0, sigmas, noise_sampler=Pop()),
    "dpm++2m_sde_heun": lambda: K.sample_dpmpp_2m_sde(model, x0, sigmas, noise_sampler=Pop(), solver_type="heun"),
    "dpm++3m_sde": lambda: K.sample_dpmpp_3m_sde(model, x0, sigmas, noise_sampler=Pop()),
    "dpm++2m_sde_eta05": lambda: K.sample_dpmpp_2m_sde(model, x0, sigmas, noise_sampler=Pop(), eta=0.5),
}
for name, fn in runs.items():
    pop = Pop()
    torch.randn_like = lambda x, *a, **k: pop()  # churn noise
    K.torch.randn_like = torch.randn_like
    out["out." + name] = fn()

header, blobs, off = {"__metadata__": {"k_diffusion": "4601bf085320592473f681a62808ed873d17fad5"}}, [], 0
for k in sorted(out):
    b = out[k].contiguous().to(torch.float64).numpy().tobytes()
    header[k] = {"dtype": "F64", "shape": list(out[k].shape), "data_offsets": [off, off + len(b)]}
    blobs.append(b)
    off += len(b)
h = json.dumps(header).encode()
h += b" " * ((8 - len(h) % 8) % 8)
with open(sys.argv[2], "wb") as f:
    f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))
print("wrote", sys.argv[2], len(out), "tensors")
