#include "eval/evaluate.h"

#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <numeric>
#include <random>

#include "core/error.h"
#include "core/image.h"
#include "train/captioned.h"
#include "train/trainer.h"

namespace fs = std::filesystem;

namespace diffuse {

namespace {

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// m of n indices without replacement, sorted (deterministic for a seed).
torch::Tensor random_subset(int64_t n, int64_t m, uint64_t seed) {
  if (m >= n) return torch::arange(n, torch::kInt64);
  std::mt19937_64 rng(seed);
  std::vector<int64_t> p(n);
  std::iota(p.begin(), p.end(), 0);
  for (int64_t i = 0; i < m; ++i) std::swap(p[i], p[i + static_cast<int64_t>(rng() % static_cast<uint64_t>(n - i))]);
  p.resize(m);
  return std::get<0>(torch::tensor(p, torch::kInt64).sort());
}

torch::Tensor quantize(const torch::Tensor& x) {
  return x.detach().to(torch::kCPU, torch::kFloat32).clamp(-1, 1).add(1).mul(127.5).round().to(torch::kUInt8);
}

std::string fmt(const char* f, double v) {
  if (std::isnan(v)) return "n/a";
  char buf[64];
  std::snprintf(buf, sizeof buf, f, v);
  return buf;
}

nlohmann::json metrics_json(const QualityMetrics& m) {
  auto num = [](double v) -> nlohmann::json { return std::isnan(v) ? nlohmann::json(nullptr) : nlohmann::json(v); };
  return {{"n", m.n},
          {"fid", num(m.fid)},
          {"fid_mean_term", num(m.fid_mean)},
          {"kid", num(m.kid)},
          {"kid_std", num(m.kid_std)},
          {"precision", num(m.precision)},
          {"recall", num(m.recall)},
          {"class_agreement", num(m.class_agreement)}};
}

}  // namespace

QualityMetrics score_embedding(const Embedding& samples, const torch::Tensor& wanted, const ReferenceSet& ref,
                               const MetricOptions& opt) {
  QualityMetrics m;
  m.n = samples.features.defined() ? samples.features.size(0) : 0;
  if (m.n < 2) throw Error("evaluation needs at least 2 samples, got " + std::to_string(m.n));
  if (ref.size() < 2) throw Error("evaluation: the reference set has fewer than 2 images");
  const auto parts = frechet_parts(feature_stats(samples.features), ref.stats);
  m.fid = std::max(0.0, parts.total());
  m.fid_mean = parts.mean;
  if (opt.compute_kid) {
    KidOptions ko = opt.kid;
    ko.seed = opt.seed;
    auto k = kid(samples.features, ref.features, ko);
    m.kid = k.mean;
    m.kid_std = k.std;
  }
  if (opt.compute_precision_recall) {
    if (m.n <= opt.k) throw Error("precision/recall needs more than k = " + std::to_string(opt.k) + " samples");
    auto idx = random_subset(ref.size(), m.n, opt.seed + 1);
    auto pr = precision_recall(ref.features.index_select(0, idx), samples.features, opt.k);
    m.precision = pr.precision;
    m.recall = pr.recall;
  }
  if (wanted.defined() && wanted.numel() == m.n && wanted.ge(0).any().item<bool>())
    m.class_agreement = class_agreement(samples.logits, wanted);
  return m;
}

void check_compatible(const PixelPipeline& pipe, const FeatureNet& net) {
  const auto& cfg = net.config();
  const std::string what = "model " + (pipe.source.empty() ? std::string("(in memory)") : pipe.source);
  if (pipe.channels() != cfg.in_channels)
    throw Error(what + " generates " + std::to_string(pipe.channels()) + "-channel images but the feature network " +
                net.source() + " expects " + std::to_string(cfg.in_channels) + " channel(s)");
  if (!classifier_accepts_size(cfg, pipe.image_size()))
    throw Error(what + " generates " + std::to_string(pipe.image_size()) + "x" + std::to_string(pipe.image_size()) +
                " images but the feature network " + net.source() + " expects " + std::to_string(cfg.image_size) + "x" +
                std::to_string(cfg.image_size) + " (equal, or a border of at most " +
                std::to_string(cfg.image_size / 8) + " px per side that is centre-cropped)");
}

torch::Tensor generate_for_eval(const PixelPipeline& pipe, const GenerateOptions& opt, int n,
                                std::vector<int64_t>* classes, const EvalProgress& progress) {
  if (n < 1) throw Error("--n must be positive");
  std::vector<int64_t> cls;
  if (pipe.class_conditional()) {
    std::vector<int64_t> ids;
    for (int64_t k = 0; k < static_cast<int64_t>(pipe.class_names.size()); ++k)
      if (k != pipe.null_class) ids.push_back(k);
    if (ids.empty()) throw Error("model " + pipe.source + ": no classes to sample");
    for (int i = 0; i < n; ++i) cls.push_back(ids[static_cast<size_t>(i) % ids.size()]);
  }
  const int chunk = std::max(1, opt.batch_size);
  if (progress) progress("generate", 0, n);
  if (opt.shards < 1 || opt.shard < 0 || opt.shard >= opt.shards)
    throw Error("shard " + std::to_string(opt.shard) + " of " + std::to_string(opt.shards) + ": out of range");
  // zeros: the rows of other shards' chunks stay zero
  torch::Tensor out = torch::zeros({n, pipe.channels(), pipe.image_size(), pipe.image_size()}, torch::kUInt8);
  for (int start = 0, k = 0; start < n; start += chunk, ++k) {
    if (k % opt.shards != opt.shard) continue;
    int b = std::min(chunk, n - start);
    GenerateOptions g = opt;
    g.n = b;
    g.shard = 0;
    g.shards = 1;
    g.seed = opt.seed + static_cast<uint64_t>(start);  // image i keeps seed + i
    g.classes.clear();
    if (!cls.empty()) g.classes.assign(cls.begin() + start, cls.begin() + start + b);
    if (progress) {
      g.callback = [&, start, b](const StepInfo& s) {
        if (opt.callback) opt.callback(s);
        int64_t done = start + static_cast<int64_t>(b) * (s.step + 1) / std::max(1, s.total);
        progress("generate", done, n);
      };
    }
    auto res = generate(pipe, g);
    out.narrow(0, start, b).copy_(quantize(res.samples));
    if (progress) progress("generate", start + b, n);
  }
  if (classes) *classes = cls;
  return out;
}

QualityMetrics real_data_floor(const ReferenceSet& test, const ReferenceSet& ref, int64_t n, const MetricOptions& opt) {
  if (test.size() < 2) throw Error(test.data + ": the held-out split has fewer than 2 images");
  auto idx = random_subset(test.size(), std::min<int64_t>(n, test.size()), opt.seed + 2);
  Embedding e{test.features.index_select(0, idx), test.logits.index_select(0, idx)};
  return score_embedding(e, test.labels.index_select(0, idx), ref, opt);
}

std::vector<ClassMetrics> per_class_metrics(const Embedding& samples, const torch::Tensor& wanted,
                                            const ReferenceSet& ref, const std::vector<std::string>& class_names,
                                            const ReferenceSet* test, uint64_t seed) {
  if (!wanted.defined() || wanted.dim() != 1 || !samples.features.defined() ||
      wanted.size(0) != samples.features.size(0))
    throw Error("per-class metrics: need one wanted class per sample");
  auto labelled = [](const ReferenceSet& r) { return r.labels.defined() && r.labels.size(0) == r.size(); };
  if (!labelled(ref)) throw Error("per-class metrics: the reference set " + ref.data + " has no labels");
  if (test && !labelled(*test)) throw Error("per-class metrics: the held-out set " + test->data + " has no labels");
  // FID of rows `idx` of `e` against a class's statistics (NaN for fewer than 2), and their agreement with k.
  auto score = [](const Embedding& e, const torch::Tensor& idx, int64_t k, const FeatureStats* stats, double* fid,
                  double* agreement) {
    const int64_t n = idx.size(0);
    if (n == 0) return;
    if (e.logits.defined())
      *agreement = class_agreement(e.logits.index_select(0, idx), torch::full({n}, k, torch::kInt64));
    if (n >= 2 && stats) *fid = frechet_distance(feature_stats(e.features.index_select(0, idx)), *stats);
  };
  const auto want = wanted.to(torch::kCPU, torch::kInt64);
  std::vector<ClassMetrics> out;
  for (int64_t k = 0; k < static_cast<int64_t>(class_names.size()); ++k) {
    ClassMetrics c;
    c.name = class_names[static_cast<size_t>(k)].empty() ? std::to_string(k) : class_names[static_cast<size_t>(k)];
    auto ref_idx = ref.labels.eq(k).nonzero().flatten();
    FeatureStats stats;
    const bool has_ref = ref_idx.size(0) >= 2;
    if (has_ref) stats = feature_stats(ref.features.index_select(0, ref_idx));
    auto idx = want.eq(k).nonzero().flatten();
    c.n = idx.size(0);
    score(samples, idx, k, has_ref ? &stats : nullptr, &c.fid, &c.class_agreement);
    if (test && c.n > 0) {
      // As many random held-out images of the class as there are samples (all when fewer).
      auto of_k = test->labels.eq(k).nonzero().flatten();
      auto pick = of_k.index_select(0, random_subset(of_k.size(0), c.n, seed + 4 + static_cast<uint64_t>(k)));
      c.floor_n = pick.size(0);
      Embedding te{test->features, test->logits};
      score(te, pick, k, has_ref ? &stats : nullptr, &c.floor_fid, &c.floor_class_agreement);
    }
    out.push_back(c);
  }
  return out;
}

QualityMetrics real_data_floor(const FeatureNet& net, const std::string& data, const ReferenceSet& ref, int64_t n,
                               const std::string& cache_dir, const MetricOptions& opt, const EvalProgress& progress) {
  auto test = reference_set(net, data, "test", cache_dir, [&](int64_t d, int64_t t) {
    if (progress) progress("reference (test)", d, t);
  });
  return real_data_floor(test, ref, n, opt);
}

namespace {

EvalReport start_report(const FeatureNet& net, const EvalOptions& opt, const std::string& kind,
                        const std::string& subject) {
  EvalReport r;
  r.kind = kind;
  r.subject = subject;
  r.data = opt.data.empty() ? net.config().dataset : opt.data;
  if (r.data.empty()) throw Error("the feature network " + net.source() + " does not name its dataset: pass --data");
  r.classifier = net.source();
  r.classifier_fingerprint = net.fingerprint();
  return r;
}

void finish_report(EvalReport& r, const FeatureNet& net, const Embedding& e, const torch::Tensor& wanted,
                   const EvalOptions& opt, std::chrono::steady_clock::time_point t0) {
  auto ref = reference_set(net, r.data, "train", opt.cache_dir, [&](int64_t d, int64_t t) {
    if (opt.progress) opt.progress("reference (train)", d, t);
  });
  ReferenceSet test;
  if (opt.floor)
    test = reference_set(net, r.data, "test", opt.cache_dir, [&](int64_t d, int64_t t) {
      if (opt.progress) opt.progress("reference (test)", d, t);
    });
  r.reference_n = ref.size();
  r.reference_cache = ref.cache_file;
  const int sets = opt.floor ? 2 : 1;
  if (opt.progress) opt.progress("metrics", 0, sets);
  r.samples = score_embedding(e, wanted, ref, opt.metrics);
  if (opt.progress) opt.progress("metrics", 1, sets);
  if (opt.floor) {
    r.floor = real_data_floor(test, ref, r.samples.n, opt.metrics);
    if (opt.progress) opt.progress("metrics", 2, sets);
  }
  if (opt.per_class && wanted.defined()) {
    std::vector<std::string> names = net.config().class_names;
    names.resize(static_cast<size_t>(net.config().num_classes));
    r.per_class = per_class_metrics(e, wanted, ref, names, opt.floor ? &test : nullptr, opt.metrics.seed);
  }
  r.total_seconds = seconds_since(t0);
}

}  // namespace

namespace {

// Throws unless `dir` is absent or an empty folder.
void check_samples_dir(const std::string& dir) {
  std::error_code ec;
  if (dir.empty()) throw Error("--save-samples: empty folder name");
  if (!fs::exists(dir, ec)) return;
  if (!fs::is_directory(dir, ec)) throw Error("--save-samples " + dir + ": exists and is not a folder");
  if (!fs::is_empty(dir, ec)) throw Error("--save-samples " + dir + ": the folder is not empty");
}

}  // namespace

namespace {

// Writes uint8 images [N, C, H, W] as dir/<folders[i]>/<i>.png ("" = dir itself) with their
// parameters text, all or nothing (into a temporary sibling folder renamed to `dir`).
void write_samples(const std::string& dir, const torch::Tensor& images, const std::vector<std::string>& folders,
                   const std::function<std::string(int64_t)>& parameters) {
  check_samples_dir(dir);
  const int64_t n = images.size(0);
  fs::path target = fs::absolute(fs::path(dir)).lexically_normal();
  if (target.filename().empty()) target = target.parent_path();
  std::error_code ec;
  fs::create_directories(target.parent_path(), ec);
  if (ec) throw Error("--save-samples " + dir + ": cannot create " + target.parent_path().string());
  fs::path tmp = target.parent_path() / ("." + target.filename().string() + ".partial-" + std::to_string(::getpid()));
  fs::remove_all(tmp, ec);
  try {
    fs::create_directories(tmp);
    auto hwc = images.permute({0, 2, 3, 1}).contiguous();
    char name[32];
    for (int64_t i = 0; i < n; ++i) {
      fs::path sub = tmp;
      if (!folders.empty() && !folders[static_cast<size_t>(i)].empty()) {
        sub /= folders[static_cast<size_t>(i)];
        fs::create_directories(sub);
      }
      Image img;
      img.height = static_cast<int>(images.size(2));
      img.width = static_cast<int>(images.size(3));
      img.channels = static_cast<int>(images.size(1));
      const uint8_t* p = hwc[i].data_ptr<uint8_t>();
      img.data.assign(p, p + hwc[i].numel());
      std::snprintf(name, sizeof name, "%06lld.png", static_cast<long long>(i));
      write_png((sub / name).string(), img, {{"parameters", parameters(i)}});
    }
    if (fs::exists(target)) fs::remove(target);  // an empty folder (checked above)
    fs::rename(tmp, target);
  } catch (const fs::filesystem_error& e) {
    fs::remove_all(tmp, ec);
    throw Error("--save-samples " + dir + ": " + e.what());
  } catch (...) {
    fs::remove_all(tmp, ec);
    throw;
  }
}

}  // namespace

void save_eval_samples(const std::string& dir, const torch::Tensor& images, const PixelPipeline& pipe,
                       const GenerateOptions& opt, const std::vector<int64_t>& classes) {
  check_samples_dir(dir);
  if (!images.defined() || images.dim() != 4 || images.scalar_type() != torch::kUInt8)
    throw Error("save_eval_samples: expected uint8 images [N, C, H, W]");
  const int64_t n = images.size(0);
  if (!classes.empty() && static_cast<int64_t>(classes.size()) != n)
    throw Error("save_eval_samples: " + std::to_string(classes.size()) + " classes for " + std::to_string(n) +
                " images");
  std::vector<std::string> folders;
  for (int64_t k : classes)
    folders.push_back(class_folder_name(k >= 0 && k < static_cast<int64_t>(pipe.class_names.size())
                                            ? pipe.class_names[static_cast<size_t>(k)]
                                            : std::to_string(k)));
  GenerateOptions g = opt;
  g.classes = classes;
  write_samples(dir, images, folders, [&](int64_t i) { return generation_parameters(pipe, g, static_cast<int>(i)); });
}

EvalReport evaluate_pipeline(const PixelPipeline& pipe, const FeatureNet& net, const EvalOptions& opt) {
  auto t0 = std::chrono::steady_clock::now();
  if (opt.n < 2) throw Error("--n must be at least 2 (got " + std::to_string(opt.n) + ")");
  check_compatible(pipe, net);
  if (!opt.save_samples.empty()) check_samples_dir(opt.save_samples);  // before any generation
  EvalReport r = start_report(net, opt, "model", pipe.source);
  r.conditional = pipe.class_conditional();
  r.generate = opt.generate;
  r.generate.n = opt.n;
  r.generate.callback = nullptr;
  std::vector<int64_t> cls;
  auto images = generate_for_eval(pipe, opt.generate, opt.n, &cls, opt.progress);
  if (opt.gather) {
    images = opt.gather(images);
    if (!images.defined()) return r;  // a process that only generates
  }
  r.generate.shard = 0;
  r.generate.shards = 1;
  r.generate_seconds = seconds_since(t0);
  if (!opt.save_samples.empty()) {
    GenerateOptions g = r.generate;
    save_eval_samples(opt.save_samples, images, pipe, g, cls);
    r.samples_dir = opt.save_samples;
  }
  torch::Tensor wanted;
  if (!cls.empty()) {
    auto map = net.map_classes(pipe.class_names);
    std::vector<int64_t> w;
    for (int64_t c : cls) w.push_back(map[static_cast<size_t>(c)]);
    wanted = torch::tensor(w, torch::kInt64);
    if (!wanted.ge(0).any().item<bool>()) {
      r.class_note = "the model's class names match none of the feature network's";
      wanted = torch::Tensor();
    }
  } else {
    r.class_note = "unconditional model";
  }
  auto e = net.embed(images, false, 500, [&](int64_t d, int64_t t) {
    if (opt.progress) opt.progress("embed", d, t);
  });
  finish_report(r, net, e, wanted, opt, t0);
  return r;
}

EvalReport evaluate_images(const std::string& dir, const FeatureNet& net, const EvalOptions& opt) {
  auto t0 = std::chrono::steady_clock::now();
  if (!fs::is_directory(dir)) throw Error("--images " + dir + ": not a folder");
  if (opt.n != 0 && opt.n < 2) throw Error("--n must be at least 2 (got " + std::to_string(opt.n) + ")");
  EvalReport r = start_report(net, opt, "images", dir);
  Dataset d = load_dataset(dir, "train", 0, net.config().in_channels);
  if (d.size() < 2) throw Error(dir + ": needs at least 2 images, found " + std::to_string(d.size()));
  torch::Tensor idx = random_subset(d.size(), opt.n > 0 ? opt.n : d.size(), opt.metrics.seed + 3);
  auto images = d.images.index_select(0, idx);
  torch::Tensor wanted;
  if (d.labelled()) {
    r.conditional = true;
    auto map = torch::tensor(net.map_classes(d.class_names), torch::kInt64);
    wanted = map.index_select(0, d.labels.index_select(0, idx));
    if (!wanted.ge(0).any().item<bool>()) {
      r.class_note = "subfolder names match none of the feature network's classes";
      wanted = torch::Tensor();
    }
  } else {
    r.class_note = "no class subfolders";
  }
  auto e = net.embed(images, /*allow_resize=*/true, 500, [&](int64_t dn, int64_t t) {
    if (opt.progress) opt.progress("embed", dn, t);
  });
  finish_report(r, net, e, wanted, opt, t0);
  return r;
}

std::string EvalReport::to_json() const {
  nlohmann::json j;
  j["kind"] = kind;
  j[kind == "model" ? "model" : "images"] = subject;
  j["data"] = data;
  j["classifier"] = classifier;
  j["classifier_fingerprint"] = classifier_fingerprint;
  j["n"] = samples.n;
  if (kind == "model") {
    j["sampler"] = generate.sampler;
    j["steps"] = generate.steps;
    j["guidance"] = generate.guidance;
    j["seed"] = generate.seed;
    j["dtype"] = generate.dtype == torch::kBFloat16 ? "bf16" : "fp32";
    if (!generate.schedule.empty()) j["schedule"] = generate.schedule;
    if (!generate.sigmas.empty()) j["sigmas"] = generate.sigmas;
    if (generate.guidance_sigma_lo > 0 || std::isfinite(generate.guidance_sigma_hi))
      j["guidance_interval"] = {generate.guidance_sigma_lo, std::isfinite(generate.guidance_sigma_hi)
                                                                ? nlohmann::json(generate.guidance_sigma_hi)
                                                                : nlohmann::json(nullptr)};
    if (generate.guide) {
      j["guide_model"] = generate.guide->source;
      j["guide_unconditional"] = generate.guide_unconditional;
    }
  }
  j["conditional"] = conditional;
  if (!class_note.empty()) j["class_note"] = class_note;
  j["reference"] = {{"split", "train"}, {"n", reference_n}, {"cache", reference_cache}};
  j["samples"] = metrics_json(samples);
  j["real_floor"] = floor.n > 0 ? metrics_json(floor) : nlohmann::json(nullptr);
  double ratio = fid_ratio();
  j["fid_ratio"] = std::isnan(ratio) ? nlohmann::json(nullptr) : nlohmann::json(ratio);
  if (!per_class.empty()) {
    auto num = [](double v) -> nlohmann::json { return std::isnan(v) ? nlohmann::json(nullptr) : nlohmann::json(v); };
    auto& pc = j["per_class"] = nlohmann::json::array();
    for (const auto& c : per_class) {
      nlohmann::json e = {
          {"class", c.name}, {"n", c.n}, {"fid", num(c.fid)}, {"class_agreement", num(c.class_agreement)}};
      if (floor.n > 0)
        e["real_floor"] = {
            {"n", c.floor_n}, {"fid", num(c.floor_fid)}, {"class_agreement", num(c.floor_class_agreement)}};
      e["fid_ratio"] = num(c.fid_ratio());
      pc.push_back(e);
    }
  }
  if (!samples_dir.empty()) j["samples_dir"] = samples_dir;
  j["precision_recall_k"] = 3;
  j["seconds"] = {{"generate", generate_seconds}, {"total", total_seconds}};
  return j.dump(2) + "\n";
}

std::string EvalReport::table() const {
  std::string s;
  char line[256];
  s += (kind == "model" ? "model:      " : "images:     ") + subject + "\n";
  if (kind == "model") {
    std::snprintf(line, sizeof line, "sampling:   %s, %d steps, guidance %g, seed %llu, n = %lld%s\n",
                  generate.sampler.c_str(), generate.steps, generate.guidance,
                  static_cast<unsigned long long>(generate.seed), static_cast<long long>(samples.n),
                  generate.dtype == torch::kBFloat16 ? ", bf16" : "");
    s += line;
    if (!generate.sigmas.empty())
      s += "sigmas:     " + generate.sigmas + "\n";
    else if (!generate.schedule.empty())
      s += "schedule:   " + generate.schedule + "\n";
    if (generate.guidance_sigma_lo > 0 || std::isfinite(generate.guidance_sigma_hi)) {
      std::snprintf(line, sizeof line, "guidance:   only for sigma in (%g, %g]\n", generate.guidance_sigma_lo,
                    generate.guidance_sigma_hi);
      s += line;
    }
    if (generate.guide)
      s += "guided by:  " + generate.guide->source +
           (generate.guide_unconditional ? " (autoguidance, unconditional)\n" : " (autoguidance)\n");
  } else {
    s += "n:          " + std::to_string(samples.n) + "\n";
  }
  s += "reference:  " + data + " train split (" + std::to_string(reference_n) + " images), features of " + classifier +
       "\n";
  bool has_floor = floor.n > 0;
  std::snprintf(line, sizeof line, "\n%-22s %14s %18s\n", "metric", "samples",
                has_floor ? ("real floor (" + std::to_string(floor.n) + ")").c_str() : "");
  s += line;
  auto row = [&](const char* name, const std::string& a, const std::string& b) {
    std::snprintf(line, sizeof line, "%-22s %14s %18s\n", name, a.c_str(), has_floor ? b.c_str() : "");
    s += line;
  };
  row("FID", fmt("%.3f", samples.fid), fmt("%.3f", floor.fid));
  row("  (mean term)", fmt("%.3f", samples.fid_mean), fmt("%.3f", floor.fid_mean));
  row("KID", fmt("%.5f", samples.kid), fmt("%.5f", floor.kid));
  row("  (std over subsets)", fmt("%.5f", samples.kid_std), fmt("%.5f", floor.kid_std));
  row("precision (k=3)", fmt("%.3f", samples.precision), fmt("%.3f", floor.precision));
  row("recall (k=3)", fmt("%.3f", samples.recall), fmt("%.3f", floor.recall));
  row("class agreement", fmt("%.1f %%", samples.class_agreement * 100), fmt("%.1f %%", floor.class_agreement * 100));
  if (has_floor && !std::isnan(fid_ratio())) {
    std::snprintf(line, sizeof line, "\nFID / floor: %.2f\n", fid_ratio());
    s += line;
  }
  if (std::isnan(samples.class_agreement) && !class_note.empty()) s += "class agreement: n/a (" + class_note + ")\n";
  if (!per_class.empty()) {
    s += "\nper class (FID against the training images of the class)\n";
    std::snprintf(line, sizeof line, "%-16s %6s %8s %8s %7s %10s %10s\n", "class", "n", "FID", "floor", "ratio",
                  "agreement", "floor");
    s += line;
    for (const auto& c : per_class) {
      std::snprintf(line, sizeof line, "%-16s %6lld %8s %8s %7s %10s %10s\n", c.name.substr(0, 16).c_str(),
                    static_cast<long long>(c.n), fmt("%.3f", c.fid).c_str(), fmt("%.3f", c.floor_fid).c_str(),
                    fmt("%.2f", c.fid_ratio()).c_str(), fmt("%.1f %%", c.class_agreement * 100).c_str(),
                    fmt("%.1f %%", c.floor_class_agreement * 100).c_str());
      s += line;
    }
  }
  if (!samples_dir.empty()) s += "\nsamples saved to " + samples_dir + "\n";
  return s;
}

double quick_fid(const PixelPipeline& pipe, const FeatureNet& net, const FeatureStats& ref, int n,
                 const GenerateOptions& opt) {
  if (n < 2) throw Error("quick_fid: n must be at least 2 (got " + std::to_string(n) + ")");
  check_compatible(pipe, net);
  auto images = generate_for_eval(pipe, opt, n);
  return frechet_distance(feature_stats(net.embed(images).features), ref);
}

std::string find_classifier(const std::string& data) {
  const std::string name = data + "-classifier";
  std::vector<std::string> tried;
  auto ok = [&](const fs::path& p) {
    tried.push_back(p.string());
    std::error_code ec;
    return fs::exists(p / "config.json", ec) && fs::exists(p / "model.safetensors", ec);
  };
  if (const char* e = std::getenv("DIFFUSE_CLASSIFIER_DIR"); e && *e) {
    if (ok(e)) return e;
  }
  std::error_code ec;
  if (ok(fs::current_path(ec) / "models" / name)) return (fs::current_path(ec) / "models" / name).string();
  char buf[4096];
  ssize_t len = ::readlink("/proc/self/exe", buf, sizeof buf - 1);
  if (len > 0) {
    buf[len] = 0;
    for (fs::path p = fs::path(buf).parent_path(); !p.empty(); p = p.parent_path()) {
      for (auto cand : {p / "models" / name, p / "share" / "diffuse" / "models" / name})
        if (ok(cand)) return cand.string();
      if (p == p.root_path()) break;
    }
  }
  std::string msg = "no feature network for '" + data +
                    "' found (pass --classifier DIR, or train one with "
                    "`diffuse train-classifier`); looked in:";
  for (size_t i = 0; i < tried.size() && i < 8; ++i) msg += "\n  " + tried[i];
  throw Error(msg);
}

std::function<double(const std::string& pipeline_dir)> train_fid_evaluator(const std::string& classifier_dir, int n) {
  struct Cached {
    FeatureNet net;
    FeatureStats ref;
  };
  auto cache = std::make_shared<std::shared_ptr<Cached>>();
  return [cache, classifier_dir, n](const std::string& pipeline_dir) {
    auto& c = *cache;
    if (!c) {
      const std::string dir = classifier_dir.empty() ? find_classifier() : classifier_dir;
      auto net = FeatureNet::load(dir);
      if (net.config().dataset.empty()) throw Error(dir + ": the feature network does not name its dataset");
      c = std::make_shared<Cached>(Cached{net, reference_stats(net, net.config().dataset, "train")});
    }
    auto pipe = PixelPipeline::load(pipeline_dir, torch::kCPU);
    GenerateOptions g;
    g.seed = 0;
    return quick_fid(pipe, c->net, c->ref, n, g);
  };
}

EvalReport evaluate_text_to_image(const SDPipeline& pipe, const FeatureNet& net, const EvalOptions& opt) {
  auto t0 = std::chrono::steady_clock::now();
  const std::string real_data = captioned_images_dataset(opt.data);
  if (real_data.empty())
    throw Error("--data " + opt.data +
                ": a text-to-image model is scored on the held-out captions of a captioned "
                "dataset with classes (emoji-captions)");
  const int size = net.config().image_size;  // generated at the feature network's size
  CaptionedOptions co;
  co.split = "test";
  co.resolution = size;
  const CaptionedDataset held_out = load_captioned(opt.data, co);
  if (held_out.class_names.empty()) throw Error("--data " + opt.data + ": its captions have no classes");
  const int64_t n = std::min<int64_t>(opt.n, static_cast<int64_t>(held_out.captions.size()));
  if (n < 2) throw Error("--n must be at least 2 (got " + std::to_string(opt.n) + ")");
  if (!opt.save_samples.empty()) check_samples_dir(opt.save_samples);  // before any generation
  EvalOptions o = opt;
  o.data = real_data;  // the real images, with classes
  EvalReport r = start_report(net, o, "model", pipe.source);
  r.conditional = true;
  r.generate = opt.generate;
  r.generate.n = static_cast<int>(n);
  r.generate.callback = nullptr;
  // one caption per image, batched through per-row prompt embeddings
  torch::NoGradGuard ng;
  SDOptions so;
  so.sampler = opt.generate.sampler;
  so.schedule = opt.generate.schedule;
  so.sigmas = opt.generate.sigmas;
  so.steps = opt.generate.steps;
  so.guidance = opt.generate.guidance;
  so.eta = opt.generate.eta;
  so.width = so.height = size;
  const int bs = std::max(1, opt.generate.batch_size);
  std::vector<torch::Tensor> images;
  const torch::Tensor uncond = encode_prompt(pipe, "").embeds;
  for (int64_t start = 0; start < n; start += bs) {
    const int64_t end = std::min(n, start + bs);
    std::vector<torch::Tensor> cond;
    for (int64_t i = start; i < end; ++i)
      cond.push_back(encode_prompt(pipe, held_out.captions[static_cast<size_t>(i)]).embeds);
    SDOptions b = so;
    b.n = b.batch_size = static_cast<int>(end - start);
    b.seed = opt.generate.seed + static_cast<uint64_t>(start);
    b.prompt_embeds = torch::cat(cond);
    b.negative_prompt_embeds = uncond;
    images.push_back(((generate(pipe, b).samples.clamp(-1, 1) + 1) * 127.5).round().to(torch::kUInt8));
    if (opt.progress) opt.progress("generate", end, n);
  }
  r.generate_seconds = seconds_since(t0);
  const torch::Tensor all = torch::cat(images);
  if (!opt.save_samples.empty()) {
    // dir/<subgroup>/<i>.png, each with its caption and settings
    std::vector<std::string> folders;
    for (int64_t i = 0; i < n; ++i)
      folders.push_back(
          class_folder_name(held_out.class_names[static_cast<size_t>(held_out.labels[i].item<int64_t>())]));
    write_samples(opt.save_samples, all, folders, [&](int64_t i) {
      SDOptions p = so;
      p.prompt = held_out.captions[static_cast<size_t>(i)];
      p.seed = opt.generate.seed;
      return sd_generation_parameters(pipe, p, static_cast<int>(i));
    });
    r.samples_dir = opt.save_samples;
  }
  auto map = net.map_classes(held_out.class_names);
  std::vector<int64_t> w;
  for (int64_t i = 0; i < n; ++i) w.push_back(map[static_cast<size_t>(held_out.labels[i].item<int64_t>())]);
  const torch::Tensor wanted = torch::tensor(w, torch::kInt64);
  auto e = net.embed(all, false, 500, [&](int64_t d, int64_t t) {
    if (opt.progress) opt.progress("embed", d, t);
  });
  finish_report(r, net, e, wanted.ge(0).any().item<bool>() ? wanted : torch::Tensor(), o, t0);
  return r;
}

}  // namespace diffuse
