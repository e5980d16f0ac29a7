// The sampler table and name lookup (canonical names, A1111 / ComfyUI / diffusers aliases).
#include <algorithm>
#include <cctype>

#include "core/error.h"
#include "diffusion/sampler.h"

namespace diffuse {

namespace {

torch::Tensor pndm_default(const Denoiser& D, torch::Tensor x, const torch::Tensor& sigmas, const SamplerOptions& opt) {
  return sample_pndm(D, std::move(x), sigmas, opt);
}

std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return std::tolower(c); });
  return s;
}

// Lower case without spaces, '_' and '-' ("DPM++ 2M" == "dpm++2m", "Euler a" == "euler_a").
std::string normalize(const std::string& s) {
  std::string out;
  for (unsigned char c : s)
    if (c != ' ' && c != '_' && c != '-' && c != '\t') out.push_back(static_cast<char>(std::tolower(c)));
  return out;
}

std::string trim(const std::string& s) {
  auto b = s.find_first_not_of(" \t"), e = s.find_last_not_of(" \t");
  return b == std::string::npos ? "" : s.substr(b, e - b + 1);
}

struct Alias {
  const char* alias;
  const char* name;
};

// Names that must match exactly (case-sensitive) because normalising would merge them with
// another sampler: ComfyUI's "uni_pc" is the bh1 variant.
const Alias kExact[] = {{"uni_pc", "unipc_bh1"}, {"uni_pc_bh2", "unipc"}};

// Matched after normalize().
const Alias kAliases[] = {
    // ComfyUI / k-diffusion function names
    {"euler_ancestral", "euler_a"},
    {"dpm_2", "dpm2"},
    {"dpm_2_ancestral", "dpm2_a"},
    {"lms", "lms"},
    {"dpmpp_2s_ancestral", "dpm++2s_a"},
    {"dpmpp_sde", "dpm++sde"},
    {"dpmpp_2m", "dpm++2m"},
    {"dpmpp_2m_sde", "dpm++2m_sde"},
    {"dpmpp_2m_sde_heun", "dpm++2m_sde_heun"},
    {"dpmpp_3m_sde", "dpm++3m_sde"},
    {"ipndm", "ipndm"},
    {"deis", "deis"},
    {"ddpm", "ddpm"},
    {"lcm", "lcm"},
    {"unipc_bh2", "unipc"},
    // diffusers scheduler classes
    {"EulerDiscreteScheduler", "euler"},
    {"EulerAncestralDiscreteScheduler", "euler_a"},
    {"HeunDiscreteScheduler", "heun"},
    {"KDPM2DiscreteScheduler", "dpm2"},
    {"KDPM2AncestralDiscreteScheduler", "dpm2_a"},
    {"LMSDiscreteScheduler", "lms"},
    {"DPMSolverMultistepScheduler", "dpm++2m"},
    {"DPMSolverSDEScheduler", "dpm++sde"},
    {"DDIMScheduler", "ddim"},
    {"DDPMScheduler", "ddpm"},
    {"PNDMScheduler", "plms"},  // SD configs use skip_prk_steps = true, i.e. PLMS
    {"IPNDMScheduler", "ipndm"},
    {"DEISMultistepScheduler", "deis"},
    {"UniPCMultistepScheduler", "unipc"},
    {"LCMScheduler", "lcm"},
};

const SamplerDesc* find_canonical(const std::string& norm) {
  for (const auto& d : samplers())
    if (normalize(d.name) == norm || (!d.a1111.empty() && normalize(d.a1111) == norm)) return &d;
  for (const auto& a : kAliases)
    if (normalize(a.alias) == norm)
      for (const auto& d : samplers())
        if (d.name == a.name) return &d;
  return nullptr;
}

}  // namespace

const std::vector<SamplerDesc>& samplers() {
  static const std::vector<SamplerDesc> list = {
      {"euler", "Euler (Karras et al. 2022 Alg. 2 with optional churn)", 1, false, sample_euler, "Euler",
       TimestepStyle::Euler},
      {"euler_a", "Euler ancestral", 1, true, sample_euler_ancestral, "Euler a", TimestepStyle::Euler},
      {"heun", "Heun's 2nd-order method (Karras et al. 2022)", 2, false, sample_heun, "Heun", TimestepStyle::Euler},
      {"dpm2", "DPM-Solver-2 (k-diffusion)", 2, false, sample_dpm2, "DPM2", TimestepStyle::Euler},
      {"dpm2_a", "DPM-Solver-2 ancestral", 2, true, sample_dpm2_ancestral, "DPM2 a", TimestepStyle::Euler},
      {"lms", "linear multistep, order 4 (Lagrange over sigmas)", 4, false, sample_lms, "LMS", TimestepStyle::Euler},
      {"dpm++2s_a", "DPM-Solver++(2S) ancestral", 2, true, sample_dpmpp_2s_ancestral, "DPM++ 2S a",
       TimestepStyle::Euler},
      {"dpm++sde", "DPM-Solver++ SDE (Brownian-consistent noise, r = 1/2)", 2, true, sample_dpmpp_sde, "DPM++ SDE",
       TimestepStyle::Euler},
      {"dpm++2m", "DPM-Solver++(2M)", 2, false, sample_dpmpp_2m, "DPM++ 2M", TimestepStyle::DpmSolver},
      {"dpm++2m_sde", "DPM-Solver++(2M) SDE, midpoint", 2, true, sample_dpmpp_2m_sde, "DPM++ 2M SDE",
       TimestepStyle::DpmSolver},
      {"dpm++2m_sde_heun", "DPM-Solver++(2M) SDE, Heun", 2, true, sample_dpmpp_2m_sde_heun, "DPM++ 2M SDE Heun",
       TimestepStyle::Euler},
      {"dpm++3m_sde", "DPM-Solver++(3M) SDE", 3, true, sample_dpmpp_3m_sde, "DPM++ 3M SDE", TimestepStyle::DpmSolver},
      {"ipndm", "improved PNDM: Adams-Bashforth 4 with constant coefficients", 4, false, sample_ipndm, "",
       TimestepStyle::DpmSolver},
      {"deis", "DEIS t-AB, order 3, exponential integrator in log-sigma", 3, false, sample_deis, "",
       TimestepStyle::DpmSolver},
      {"unipc", "UniPC bh2, order 2 predictor + corrector (diffusers default)", 3, false, sample_unipc, "UniPC",
       TimestepStyle::DpmSolver},
      {"unipc_bh1", "UniPC bh1, order 2 predictor + corrector", 3, false, sample_unipc_bh1, "",
       TimestepStyle::DpmSolver},
      {"ddim", "DDIM (eta, default 0: deterministic)", 1, false, sample_ddim, "DDIM", TimestepStyle::Ddim},
      {"ddpm", "DDPM ancestral posterior sampling", 1, true, sample_ddpm, "DDPM", TimestepStyle::Ddim},
      {"plms", "PLMS (PNDM with skip_prk_steps): Heun start, then Adams-Bashforth 2-4", 4, false, sample_plms, "PLMS",
       TimestepStyle::Ddim},
      {"pndm", "PNDM: 3 pseudo Runge-Kutta steps, then Adams-Bashforth 4", 4, false, pndm_default, "",
       TimestepStyle::Ddim},
      {"lcm", "latent consistency sampling (denoise, re-noise)", 1, true, sample_lcm, "LCM", TimestepStyle::DpmSolver},
  };
  return list;
}

const SamplerDesc& find_sampler(const std::string& name, std::string* schedule_hint) {
  const std::string t = trim(name);
  for (const auto& a : kExact)
    if (t == a.alias)
      for (const auto& d : samplers())
        if (d.name == a.name) return d;
  if (const auto* d = find_canonical(normalize(t))) return *d;
  // A1111's legacy "k_" names (k_lms, k_euler_a, k_dpm_2_a, ...)
  if (lower(t).rfind("k_", 0) == 0)
    if (const auto* d = find_canonical(normalize(t.substr(2)))) return *d;
  // A1111-style schedule suffix: "DPM++ 2M Karras", "DPM++ 2M SDE Exponential", "euler_karras"
  const std::string lt = lower(t);
  for (const char* suffix : {"karras", "exponential"}) {
    const std::string sfx = suffix;
    if (lt.size() > sfx.size() + 1 && lt.compare(lt.size() - sfx.size(), sfx.size(), sfx) == 0) {
      char sep = lt[lt.size() - sfx.size() - 1];
      if (sep != ' ' && sep != '_' && sep != '-') continue;
      if (const auto* d = find_canonical(normalize(t.substr(0, t.size() - sfx.size() - 1)))) {
        if (schedule_hint) *schedule_hint = sfx;
        return *d;
      }
    }
  }
  std::string names;
  for (const auto& d : samplers()) names += (names.empty() ? "" : ", ") + d.name;
  throw Error("unknown sampler '" + name + "' (valid: " + names +
              "; A1111 names such as 'DPM++ 2M Karras' and diffusers class names are accepted)");
}

}  // namespace diffuse
