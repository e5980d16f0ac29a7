// Parity with diffusers 0.28.2 schedulers on the recorded fixture loops
// (tests/fixtures/schedulers, README "Scheduler fixtures").
//
// The fixture loop runs a fake model eps = 0.1 x_in + 0.05 sin(float32(t) / 100) through
// scheduler.step(). We run our sigma-space samplers on a Denoiser built from the same fake
// model and compare every per-step sample, |ours - ref| <= 1e-4 max|ref| per step.
// Coordinates: Euler-type schedulers keep x in VE scale (= ours); DDIM/DDPM/PNDM/DPM-Solver/
// UniPC keep x_vp = x_ve / sqrt(1 + sigma^2), so our samples are converted before comparing.
// Where diffusers itself fails (errors, NaN) we check ours against the same loop in float64.
// The largest differences (ddim_eta1, cosine, ~6e-5) come from diffusers' float32 step
// coefficients: at t = 999 -> 749, 1 - alpha_prev - std^2 rounds to 0 in float32 (exact:
// 1.2e-8), so its noise-direction coefficient is 0 instead of 1.1e-4; ours is computed in double.
// DDIM/DDPM run through a per-step adapter (one sampler call per diffusers step, from the
// step's timestep to t - T/N), which reproduces diffusers' linspace quirk where the step
// lands on t - T/N but the next model call uses the next linspace timestep.
#include <gtest/gtest.h>

#include <iostream>

#include "diffusion/denoiser.h"
#include "diffusion/noise.h"
#include "diffusion/sampler.h"
#include "diffusion/sigmas.h"
#include "sched_fixtures.h"

namespace diffuse {
namespace {

using nlohmann::json;

torch::Tensor initial_noise() {
  static torch::Tensor n = safetensors::load(test::fixture("schedulers/common.safetensors")).at("noise");
  return n;
}

// The fixture's fake model (float32 time term).
ModelFn fake_model() {
  return [](const torch::Tensor& x_in, const torch::Tensor& t, const Cond&) {
    auto tt = t.to(torch::kFloat32).reshape({-1, 1, 1, 1});
    return 0.1 * x_in + (0.05 * torch::sin(tt / 100)).to(x_in.scalar_type());
  };
}

// Denoiser feeding the model the exact timestep diffusers used for a sigma (looked up in
// the case's own sigma/timestep table); used where diffusers feeds fractional timesteps.
Denoiser lookup_denoiser(std::vector<std::pair<double, double>> table, Prediction pred) {
  auto model = fake_model();
  return [table, pred, model](const torch::Tensor& x, const torch::Tensor& sigma) {
    const double s = sigma[0].item<double>();
    double best = 1e300, t = 0;
    for (const auto& [ts, tt] : table)
      if (std::fabs(ts - s) < best) best = std::fabs(ts - s), t = tt;
    if (best > 1e-6 * std::max(1.0, s)) throw std::runtime_error("no timestep for sigma " + std::to_string(s));
    auto sb = sigma.reshape({-1, 1, 1, 1}).to(x.scalar_type());
    auto x_in = x / (sb * sb + 1).sqrt();
    auto out = model(x_in, torch::full({x.size(0)}, t, torch::kFloat32), {});
    return output_to_x0(pred, x, sigma, out);
  };
}

// Our discrete_denoiser around the fake model (quantize: integer timesteps as diffusers feeds).
Denoiser discrete_fake(const DiscreteSchedule& ds, Prediction pred, bool quantize) {
  DiscreteDenoiserOptions o;
  o.quantize = quantize;
  return bind(discrete_denoiser(fake_model(), ds, pred, o), {});
}

double rel_err(const torch::Tensor& ours, const torch::Tensor& ref) {
  double m = ref.abs().max().item<double>();
  return (ours.to(torch::kFloat64) - ref.to(torch::kFloat64)).abs().max().item<double>() / std::max(m, 1e-30);
}

std::vector<torch::Tensor> case_noise(const test::SchedVariant& v, const std::string& key, std::vector<int>* steps) {
  std::vector<torch::Tensor> out;
  auto it = v.tensors.find(key + "/noise");
  if (it == v.tensors.end()) return out;
  auto idx = v.tensors.at(key + "/noise_step_index");
  for (int64_t k = 0; k < it->second.size(0); ++k) {
    out.push_back(it->second[k]);
    if (steps) steps->push_back(static_cast<int>(idx[k].item<int64_t>()));
  }
  return out;
}

bool all_integer(const std::vector<double>& t) {
  for (double v : t)
    if (v != std::floor(v)) return false;
  return true;
}

struct Summary {
  double worst = 0;
  int cases = 0, steps = 0;
  void print(const std::string& name) const {
    std::cout << "[parity] " << name << ": " << cases << " cases, " << steps << " steps, max rel err " << worst << "\n";
  }
};

// Runs `fn` on (x0, sigmas) collecting the sample after every step.
std::vector<torch::Tensor> run_collect(const SamplerFn& fn, const Denoiser& D, torch::Tensor x,
                                       const torch::Tensor& sigmas, SamplerOptions opt) {
  std::vector<torch::Tensor> xs;
  opt.callback = [&](const StepInfo& i) { xs.push_back(i.x.clone()); };
  fn(D, std::move(x), sigmas, opt);
  return xs;
}

// ---- Euler-type schedulers: x in VE scale, sigmas are the schedule ------------------------

void euler_family(const std::string& variant, const SamplerFn& fn) {
  auto v = test::load_variant(variant);
  Summary sum;
  int nan_cases = 0;
  for (const auto& c : v.doc["cases"]) {
    const std::string key = c["key"];
    auto cfg = test::config_from(c["config"]);
    DiscreteSchedule ds(cfg);
    const int n = c["num_inference_steps"];
    auto pred = parse_prediction(cfg.prediction_type);
    auto sigmas = make_sigmas("discrete", n, ds, cfg);
    auto t = spaced_timesteps(cfg, n, TimestepStyle::Euler);
    std::vector<std::pair<double, double>> table;
    for (int k = 0; k < n; ++k) table.push_back({sigmas[k].item<double>(), t[k]});
    Denoiser D = all_integer(t) ? discrete_fake(ds, pred, false) : lookup_denoiser(table, pred);
    auto x = initial_noise() * test::jnum(c["init_noise_sigma"]);
    ReplayNoise noise(case_noise(v, key, nullptr));
    SamplerOptions opt;
    opt.noise = &noise;
    auto xs = run_collect(fn, D, x, sigmas, opt);
    ASSERT_EQ(static_cast<int>(xs.size()), n);
    if (c["final_sample_has_nan"].get<bool>()) {
      // diffusers' float32 sigma_down = sqrt(sigma_to^2 - sigma_up^2) is NaN here (sigma_up
      // rounds above sigma_to at sigma_from = 20291); ours clamps and stays finite.
      // Check it against the same loop (same replayed noise) in float64 instead.
      ReplayNoise noise64(case_noise(v, key, nullptr));
      opt.noise = &noise64;
      auto xs64 = run_collect(fn, D, x.to(torch::kFloat64), sigmas, opt);
      for (int i = 0; i < n; ++i) {
        EXPECT_TRUE(torch::isfinite(xs[i]).all().item<bool>()) << key;
        EXPECT_LE(rel_err(xs[i], xs64[i]), test::kParityTol) << key << " step " << i;
      }
      ++nan_cases;
      continue;
    }
    auto ref = v.tensors.at(key + "/samples");
    const bool heun = variant == "heun";
    ASSERT_EQ(ref.size(0), heun ? 2 * n - 1 : n) << key;
    for (int i = 0; i < n; ++i) {
      int j = heun ? (i + 1 < n ? 2 * i + 1 : 2 * n - 2) : i;
      double e = rel_err(xs[i], ref[j][0].unsqueeze(0));
      sum.worst = std::max(sum.worst, e);
      EXPECT_LE(e, test::kParityTol) << variant << " " << key << " step " << i;
      ++sum.steps;
    }
    ++sum.cases;
  }
  EXPECT_EQ(nan_cases, variant == "euler_ancestral" ? 1 : 0);
  sum.print(variant);
}

TEST(Parity, Euler) { euler_family("euler", sample_euler); }
TEST(Parity, EulerVPrediction) { euler_family("euler_vpred", sample_euler); }
TEST(Parity, EulerAncestral) { euler_family("euler_ancestral", sample_euler_ancestral); }
TEST(Parity, Heun) { euler_family("heun", sample_heun); }
TEST(Parity, Lms) { euler_family("lms", sample_lms); }

// ---- DPM-Solver++ / UniPC: VP samples on a consistent sigma schedule ----------------------

void vp_multistep(const std::string& variant, const SamplerFn& fn) {
  auto v = test::load_variant(variant);
  Summary sum;
  int failed_in_diffusers = 0;
  for (const auto& c : v.doc["cases"]) {
    const std::string key = c["key"];
    auto cfg = test::config_from(c["config"]);
    DiscreteSchedule ds(cfg);
    const int n = c["num_inference_steps"];
    auto sig = test::jvec(c["sigmas"]);
    auto sigmas = torch::tensor(sig, torch::kFloat64).to(torch::kFloat32);
    auto pred = parse_prediction(cfg.prediction_type);
    Denoiser D = discrete_fake(ds, pred, /*quantize=*/true);
    auto x = initial_noise() * std::sqrt(1 + sig[0] * sig[0]);
    SamplerOptions opt;
    auto xs = run_collect(fn, D, x, sigmas, opt);
    ASSERT_EQ(static_cast<int>(xs.size()), n);
    if (c.contains("error")) {
      // diffusers 0.28.2 raises here (duplicated Karras timesteps make index_for_timestep start
      // at step 1); our sampler is indexed by sigma and runs the schedule as given: check it
      // against the same loop in float64.
      ++failed_in_diffusers;
      auto xs64 = run_collect(fn, discrete_fake(ds, pred, true), x.to(torch::kFloat64), sigmas, opt);
      for (int i = 0; i < n; ++i) {
        EXPECT_TRUE(torch::isfinite(xs[i]).all().item<bool>()) << key;
        EXPECT_LE(rel_err(xs[i], xs64[i]), test::kParityTol) << key << " step " << i;
      }
      continue;
    }
    auto ref = v.tensors.at(key + "/samples");
    ASSERT_EQ(ref.size(0), n);
    for (int i = 0; i < n; ++i) {
      auto vp = xs[i] / std::sqrt(1 + sig[i + 1] * sig[i + 1]);
      double e = rel_err(vp, ref[i][0].unsqueeze(0));
      sum.worst = std::max(sum.worst, e);
      EXPECT_LE(e, test::kParityTol) << variant << " " << key << " step " << i;
      ++sum.steps;
    }
    ++sum.cases;
  }
  EXPECT_EQ(failed_in_diffusers, variant == "dpmpp_2m_karras" ? 6 : 0);
  sum.print(variant);
}

TEST(Parity, DpmSolverPP2M) { vp_multistep("dpmpp_2m", sample_dpmpp_2m); }
TEST(Parity, DpmSolverPP2MKarras) { vp_multistep("dpmpp_2m_karras", sample_dpmpp_2m); }
TEST(Parity, UniPC) { vp_multistep("unipc", sample_unipc); }

// ---- DDIM / DDPM: per-step adapter -------------------------------------------------------

void ddim_family(const std::string& variant, bool ddpm) {
  auto v = test::load_variant(variant);
  Summary sum;
  const double eta = v.doc["step_kwargs"].value("eta", 1.0);
  for (const auto& c : v.doc["cases"]) {
    const std::string key = c["key"];
    auto cfg = test::config_from(c["config"]);
    DiscreteSchedule ds(cfg);
    const int n = c["num_inference_steps"];
    const int T = cfg.num_train_timesteps;
    auto t = test::jvec(c["timesteps"]);
    ASSERT_EQ(t, spaced_timesteps(cfg, n, TimestepStyle::Ddim));
    auto pred = parse_prediction(cfg.prediction_type);
    Denoiser D = discrete_fake(ds, pred, /*quantize=*/true);
    auto table = ds.sigmas();
    std::vector<int> noise_steps;
    auto noise = case_noise(v, key, &noise_steps);
    auto ref = v.tensors.at(key + "/samples");
    ASSERT_EQ(ref.size(0), n);
    auto x_vp = initial_noise() * test::jnum(c["init_noise_sigma"]);
    for (int k = 0; k < n; ++k) {
      const int tk = static_cast<int>(t[k]), prev = tk - T / n;
      // final alpha: DDPM always 1; DDIM 1 with set_alpha_to_one, else alphas_cumprod[0]
      const bool final_one = ddpm || cfg.set_alpha_to_one;
      const double s = table[tk].item<double>();
      const double sn = prev >= 0 ? table[prev].item<double>() : (final_one ? 0.0 : table[0].item<double>());
      auto sigmas = torch::tensor({s, sn}, torch::kFloat64).to(torch::kFloat32);
      std::vector<torch::Tensor> step_noise;
      for (size_t q = 0; q < noise_steps.size(); ++q)
        if (noise_steps[q] == k) step_noise.push_back(noise[q]);
      ReplayNoise rn(step_noise);
      SamplerOptions opt;
      opt.noise = &rn;
      opt.eta = eta;
      if (cfg.clip_sample) opt.x0_clamp = cfg.clip_sample_range;
      auto x_ve = x_vp * std::sqrt(1 + s * s);
      x_ve = ddpm ? sample_ddpm(D, x_ve, sigmas, opt) : sample_ddim(D, x_ve, sigmas, opt);
      x_vp = x_ve / std::sqrt(1 + sn * sn);
      double e = rel_err(x_vp, ref[k][0].unsqueeze(0));
      sum.worst = std::max(sum.worst, e);
      EXPECT_LE(e, test::kParityTol) << variant << " " << key << " step " << k;
      ++sum.steps;
    }
    ++sum.cases;
  }
  sum.print(variant);
}

TEST(Parity, DdimEta0) { ddim_family("ddim_eta0", false); }
TEST(Parity, DdimEta1) { ddim_family("ddim_eta1", false); }
TEST(Parity, DdimVPrediction) { ddim_family("ddim_eta0_vpred", false); }
TEST(Parity, Ddpm) { ddim_family("ddpm", true); }

// ---- PNDM: plms (skip_prk_steps, SD configs) and pndm (PRK warm-up, class defaults) -------

TEST(Parity, Pndm) {
  auto v = test::load_variant("pndm");
  Summary plms, pndm;
  int skipped_linspace = 0, diffusers_errors = 0;
  for (const auto& c : v.doc["cases"]) {
    const std::string key = c["key"];
    if (c.contains("error")) {  // N = 1 with PRK warm-up: unsupported by diffusers
      ++diffusers_errors;
      continue;
    }
    auto cfg = test::config_from(c["config"]);
    const bool skip_prk = c["config"].value("skip_prk_steps", false);
    const int n = c["num_inference_steps"];
    const int T = cfg.num_train_timesteps;
    if (cfg.timestep_spacing == "linspace" && n > 1) {
      // diffusers steps each linspace timestep to t - T/N while the next model call uses the
      // next linspace timestep: not a sigma schedule; our plms/pndm integrate consistently.
      ++skipped_linspace;
      continue;
    }
    DiscreteSchedule ds(cfg);
    auto table = ds.sigmas();
    // the schedule's distinct evaluation timesteps, descending, then the final alpha
    std::vector<double> ts;
    for (const auto& e : c["timesteps"]) {
      double t = test::jnum(e);
      if (ts.empty() || ts.back() != t) ts.push_back(t);
    }
    const int delta = T / n;
    if (!skip_prk) {  // drop the Runge-Kutta midpoints
      std::vector<double> u;
      for (double t : ts)
        if (static_cast<int>(t) % delta == static_cast<int>(ts[0]) % delta) u.push_back(t);
      ts = u;
    }
    ASSERT_EQ(static_cast<int>(ts.size()), n) << key;
    std::vector<double> sig;
    for (double t : ts) sig.push_back(table[static_cast<int64_t>(t)].item<double>());
    sig.push_back(cfg.set_alpha_to_one ? 0.0 : table[0].item<double>());
    auto sigmas = torch::tensor(sig, torch::kFloat64).to(torch::kFloat32);
    auto pred = parse_prediction(cfg.prediction_type);
    Denoiser D = discrete_fake(ds, pred, /*quantize=*/true);
    // diffusers' Runge-Kutta midpoint: the sigma of the timestep t - T/N/2
    MidpointFn mid = [&](double s, double) {
      auto t = ds.sigma_to_t(torch::tensor({s}, torch::kFloat64)).round().item<double>();
      return table[static_cast<int64_t>(t) - delta / 2].item<double>();
    };
    auto x = initial_noise() * std::sqrt(1 + sig[0] * sig[0]);
    SamplerFn fn = skip_prk ? SamplerFn(sample_plms)
                            : SamplerFn([&](const Denoiser& d, torch::Tensor xx, const torch::Tensor& ss,
                                            const SamplerOptions& o) { return sample_pndm(d, xx, ss, o, mid); });
    auto xs = run_collect(fn, D, x, sigmas, {});
    auto ref = v.tensors.at(key + "/samples");
    Summary& sum = skip_prk ? plms : pndm;
    for (int i = 0; i < n; ++i) {
      int j = skip_prk ? (n > 1 ? i + 1 : 0) : (i < 3 ? 4 * i + 3 : 12 + (i - 3));
      ASSERT_LT(j, ref.size(0)) << key;
      auto vp = xs[i] / std::sqrt(1 + sig[i + 1] * sig[i + 1]);
      double e = rel_err(vp, ref[j][0].unsqueeze(0));
      sum.worst = std::max(sum.worst, e);
      EXPECT_LE(e, test::kParityTol) << key << " step " << i;
      ++sum.steps;
    }
    ++sum.cases;
  }
  EXPECT_EQ(diffusers_errors, 6);
  EXPECT_EQ(skipped_linspace, 9);
  plms.print("pndm (skip_prk_steps: plms)");
  pndm.print("pndm (PRK warm-up: pndm)");
}

// The tiny StableDiffusionPipeline fixture (DDIM, SD config, guidance 7.5): replaying the
// recorded UNet outputs through cfg_denoiser + discrete_denoiser + sample_ddim reproduces the
// UNet inputs ([uncond; cond] in one batch), timesteps and latents of every step.
TEST(Parity, SdPipelineDdimWithGuidance) {
  auto io = safetensors::load(test::fixture("sd_pipeline_tiny/io.safetensors"));
  auto sched = test::load_json(test::fixture("sd_pipeline_tiny/scheduler/scheduler_config.json"));
  auto cfg = test::config_from(sched);
  DiscreteSchedule ds(cfg);
  const int n = 5;
  auto t = spaced_timesteps(cfg, n, TimestepStyle::Ddim);
  ASSERT_EQ(t, std::vector<double>({801, 601, 401, 201, 1}));
  std::vector<double> sig;
  for (double v : t) sig.push_back(ds.sigmas()[static_cast<int64_t>(v)].item<double>());
  sig.push_back(ds.sigma_min());  // set_alpha_to_one = false: the last step lands on alphas_cumprod[0]
  auto sigmas = torch::tensor(sig, torch::kFloat64).to(torch::kFloat32);
  int call = 0;
  ModelFn replay = [&](const torch::Tensor& x_in, const torch::Tensor& ts, const Cond& c) {
    EXPECT_LT(rel_err(x_in, io.at("step_unet_input")[call]), 1e-5) << "step " << call;
    EXPECT_EQ(ts[0].item<float>(), io.at("step_unet_timestep")[call].item<int64_t>());
    EXPECT_TRUE(torch::equal(c.get("encoder_hidden_states"),
                             torch::cat({io.at("negative_prompt_embeds"), io.at("prompt_embeds")})));
    return io.at("step_unet_output")[call++];
  };
  DiscreteDenoiserOptions o;
  o.quantize = true;
  Cond cond, uncond;
  cond.tensors["encoder_hidden_states"] = io.at("prompt_embeds");
  uncond.tensors["encoder_hidden_states"] = io.at("negative_prompt_embeds");
  auto D = cfg_denoiser(discrete_denoiser(replay, ds, Prediction::Epsilon, o), cond, uncond, 7.5);
  SamplerOptions opt;
  opt.eta = 0;
  auto x = io.at("latents") * std::sqrt(1 + sig[0] * sig[0]);
  auto xs = run_collect(sample_ddim, D, x, sigmas, opt);
  ASSERT_EQ(call, n);
  double worst = 0;
  for (int i = 0; i < n; ++i) {
    auto vp = xs[i] / std::sqrt(1 + sig[i + 1] * sig[i + 1]);
    double e = rel_err(vp, io.at("step_latents")[i]);
    worst = std::max(worst, e);
    EXPECT_LE(e, test::kParityTol) << "step " << i;
  }
  std::cout << "[parity] sd_pipeline_tiny DDIM + CFG 7.5: 5 steps, max rel err " << worst << "\n";
}

}  // namespace
}  // namespace diffuse
