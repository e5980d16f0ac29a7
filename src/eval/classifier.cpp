#include "eval/classifier.h"

#include <time.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <numeric>
#include <random>

#include "core/atomic_file.h"
#include "core/error.h"
#include "core/safetensors.h"
#include "nn/state_dict.h"

namespace fs = std::filesystem;
namespace F = torch::nn::functional;

namespace diffuse {

// ---------------------------------------------------------------------------------------------
// Configuration

std::string ClassifierConfig::to_json() const {
  nlohmann::json j;
  j["_class_name"] = "DiffuseClassifier";
  j["in_channels"] = in_channels;
  j["image_size"] = image_size;
  j["num_classes"] = num_classes;
  j["widths"] = widths;
  j["convs_per_stage"] = convs_per_stage;
  j["head_pool"] = head_pool;
  j["feature_dim"] = feature_dim;
  j["dropout"] = dropout;
  j["class_names"] = class_names;
  j["dataset"] = dataset;
  return j.dump(2) + "\n";
}

ClassifierConfig ClassifierConfig::from_json(const std::string& text, const std::string& source) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
  } catch (const std::exception& e) {
    throw Error(source + ": invalid JSON: " + e.what());
  }
  if (!j.is_object()) throw Error(source + ": expected a JSON object");
  ClassifierConfig c;
  auto get_int = [&](const char* key, int& out, int lo, int hi) {
    if (!j.contains(key)) return;
    if (!j[key].is_number_integer()) throw Error(source + ": '" + key + "' must be an integer");
    int64_t v = j[key].get<int64_t>();
    if (v < lo || v > hi)
      throw Error(source + ": '" + key + "' = " + std::to_string(v) + " out of range [" + std::to_string(lo) + ", " +
                  std::to_string(hi) + "]");
    out = static_cast<int>(v);
  };
  get_int("in_channels", c.in_channels, 1, 4);
  get_int("image_size", c.image_size, 4, 4096);
  get_int("num_classes", c.num_classes, 2, 100000);
  get_int("convs_per_stage", c.convs_per_stage, 1, 16);
  get_int("feature_dim", c.feature_dim, 2, 65536);
  get_int("head_pool", c.head_pool, 1, 64);
  if (j.contains("widths")) {
    if (!j["widths"].is_array() || j["widths"].empty()) throw Error(source + ": 'widths' must be a non-empty array");
    c.widths.clear();
    for (const auto& w : j["widths"]) {
      if (!w.is_number_integer() || w.get<int64_t>() < 1 || w.get<int64_t>() > 65536)
        throw Error(source + ": 'widths' must hold positive integers");
      c.widths.push_back(w.get<int>());
    }
  }
  if (j.contains("dropout")) {
    if (!j["dropout"].is_number() || j["dropout"].get<double>() < 0 || j["dropout"].get<double>() >= 1)
      throw Error(source + ": 'dropout' must be a number in [0, 1)");
    c.dropout = j["dropout"].get<double>();
  }
  if (j.contains("class_names")) {
    if (!j["class_names"].is_array()) throw Error(source + ": 'class_names' must be an array of strings");
    for (const auto& n : j["class_names"]) {
      if (!n.is_string()) throw Error(source + ": 'class_names' must be an array of strings");
      c.class_names.push_back(n.get<std::string>());
    }
    if (!c.class_names.empty() && static_cast<int>(c.class_names.size()) != c.num_classes)
      throw Error(source + ": 'class_names' has " + std::to_string(c.class_names.size()) +
                  " entries but num_classes is " + std::to_string(c.num_classes));
  }
  if (j.contains("dataset") && j["dataset"].is_string()) c.dataset = j["dataset"].get<std::string>();
  int pools = static_cast<int>(c.widths.size()) - 1;
  if ((c.image_size >> pools) < 1)
    throw Error(source + ": image_size " + std::to_string(c.image_size) + " is too small for " +
                std::to_string(c.widths.size()) + " stages");
  return c;
}

// ---------------------------------------------------------------------------------------------
// Network

ClassifierImpl::ClassifierImpl(ClassifierConfig cfg) : cfg_(std::move(cfg)) {
  if (cfg_.widths.empty()) throw Error("classifier: 'widths' must not be empty");
  int in = cfg_.in_channels;
  for (size_t s = 0; s < cfg_.widths.size(); ++s) {
    for (int i = 0; i < cfg_.convs_per_stage; ++i) {
      int out = cfg_.widths[s];
      std::string name = std::to_string(s) + "_" + std::to_string(i);
      convs_.push_back(register_module("conv" + name,
                                       torch::nn::Conv2d(torch::nn::Conv2dOptions(in, out, 3).padding(1).bias(false))));
      norms_.push_back(register_module("norm" + name, torch::nn::BatchNorm2d(out)));
      in = out;
    }
  }
  fc_ = register_module(
      "fc", nn::Linear(torch::nn::LinearOptions(in * cfg_.head_pool * cfg_.head_pool, cfg_.feature_dim).bias(false)));
  fc_norm_ = register_module("fc_norm", torch::nn::BatchNorm1d(cfg_.feature_dim));
  out_ = register_module("out", nn::Linear(cfg_.feature_dim, cfg_.num_classes));
}

std::vector<torch::Tensor> ClassifierImpl::stage_outputs(const torch::Tensor& x) {
  if (x.dim() != 4 || x.size(1) != cfg_.in_channels)
    throw Error("classifier: expected input [N, " + std::to_string(cfg_.in_channels) + ", H, W]");
  std::vector<torch::Tensor> outs;
  auto h = x;
  size_t k = 0;
  for (size_t s = 0; s < cfg_.widths.size(); ++s) {
    if (s > 0) h = F::max_pool2d(h, F::MaxPool2dFuncOptions(2));
    for (int i = 0; i < cfg_.convs_per_stage; ++i, ++k) h = torch::relu(norms_[k]->forward(convs_[k]->forward(h)));
    outs.push_back(h);
  }
  return outs;
}

torch::Tensor ClassifierImpl::features(const torch::Tensor& x) {
  auto h = stage_outputs(x).back();
  h = cfg_.head_pool == 1 ? h.mean({2, 3})
                          : F::adaptive_avg_pool2d(h, F::AdaptiveAvgPool2dFuncOptions(cfg_.head_pool)).flatten(1);
  if (cfg_.dropout > 0) h = F::dropout(h, F::DropoutFuncOptions().p(cfg_.dropout).training(is_training()));
  return torch::relu(fc_norm_->forward(fc_->forward(h)));
}

torch::Tensor ClassifierImpl::head(const torch::Tensor& f) {
  auto h = f;
  if (cfg_.dropout > 0) h = F::dropout(h, F::DropoutFuncOptions().p(cfg_.dropout).training(is_training()));
  return out_->forward(h);
}

int64_t ClassifierImpl::num_parameters() const {
  int64_t n = 0;
  for (const auto& p : parameters()) n += p.numel();
  return n;
}

void save_classifier(const Classifier& net, const std::string& dir) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) throw Error(dir + ": cannot create directory: " + ec.message());
  auto sd = nn::state_dict(*net);
  std::map<std::string, torch::Tensor> cpu;
  for (auto& [k, v] : sd) cpu[k] = v.detach().to(torch::kCPU);
  safetensors::save(dir + "/model.safetensors", cpu, {{"format", "pt"}, {"kind", "diffuse-classifier"}});
  write_file_atomically(dir + "/config.json", net->config().to_json());
}

Classifier load_classifier(const std::string& dir, torch::Device device) {
  if (!fs::is_directory(dir)) throw Error(dir + ": classifier folder not found");
  std::string cfg_path = dir + "/config.json";
  std::string w_path = dir + "/model.safetensors";
  if (!fs::exists(cfg_path)) throw Error(dir + ": no config.json (not a classifier folder)");
  if (!fs::exists(w_path)) throw Error(dir + ": no model.safetensors");
  auto cfg = ClassifierConfig::from_json(read_file(cfg_path), cfg_path);
  Classifier net(cfg);
  nn::load_state_dict(*net, safetensors::load(w_path), w_path);
  net->to(device);
  net->eval();
  return net;
}

// ---------------------------------------------------------------------------------------------
// Input preparation

namespace {

bool croppable(int64_t have, int64_t want) {
  int64_t d = have - want;
  return d >= 0 && d % 2 == 0 && d <= want / 4;
}

std::string size_str(int64_t h, int64_t w) { return std::to_string(h) + "x" + std::to_string(w); }

}  // namespace

bool classifier_accepts_size(const ClassifierConfig& cfg, int size) { return croppable(size, cfg.image_size); }

torch::Tensor prepare_classifier_input(const torch::Tensor& images, const ClassifierConfig& cfg, bool allow_resize,
                                       const std::string& what) {
  if (!images.defined() || images.dim() != 4) throw Error(what + ": expected a batch of images [N, C, H, W]");
  if (images.size(1) != cfg.in_channels)
    throw Error(what + " have " + std::to_string(images.size(1)) + " channel(s) but the feature network expects " +
                std::to_string(cfg.in_channels) + " (it was trained on " +
                (cfg.dataset.empty() ? std::string("other data") : cfg.dataset) + ")");
  torch::Tensor x = images.scalar_type() == torch::kUInt8 ? images.to(torch::kFloat32).div(127.5).sub(1.0)
                                                          : images.to(torch::kFloat32);
  const int64_t S = cfg.image_size, H = x.size(2), W = x.size(3);
  if (H == S && W == S) return x;
  if (croppable(H, S) && croppable(W, S)) return x.narrow(2, (H - S) / 2, S).narrow(3, (W - S) / 2, S);
  if (!allow_resize)
    throw Error(what + " are " + size_str(H, W) + " but the feature network expects " + size_str(S, S) +
                " (equal sizes, or a border of at most " + std::to_string(S / 8) +
                " px per side that is centre-cropped, are accepted)");
  int64_t m = std::min(H, W);
  x = x.narrow(2, (H - m) / 2, m).narrow(3, (W - m) / 2, m);
  return F::interpolate(x, F::InterpolateFuncOptions()
                               .size(std::vector<int64_t>{S, S})
                               .mode(torch::kBilinear)
                               .align_corners(false)
                               .antialias(m > S));
}

// ---------------------------------------------------------------------------------------------
// FeatureNet

namespace {

uint64_t fnv1a(const void* data, size_t n, uint64_t h) {
  const auto* p = static_cast<const unsigned char*>(data);
  for (size_t i = 0; i < n; ++i) {
    h ^= p[i];
    h *= 1099511628211ull;
  }
  return h;
}

std::string fingerprint_of(const Classifier& net) {
  uint64_t h = 1469598103934665603ull;
  std::string cfg = net->config().to_json();
  h = fnv1a(cfg.data(), cfg.size(), h);
  for (const auto& [k, v] : nn::state_dict(*net)) {
    h = fnv1a(k.data(), k.size(), h);
    auto c = v.detach().to(torch::kCPU).contiguous();
    h = fnv1a(c.data_ptr(), c.numel() * c.element_size(), h);
  }
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(h));
  return buf;
}

}  // namespace

FeatureNet::FeatureNet(Classifier net, std::string source) : net_(std::move(net)), source_(std::move(source)) {
  if (!net_) throw Error("FeatureNet: undefined network");
  fingerprint_ = fingerprint_of(net_);
}

FeatureNet FeatureNet::load(const std::string& dir, torch::Device device) {
  return FeatureNet(load_classifier(dir, device), dir);
}

const ClassifierConfig& FeatureNet::config() const {
  if (!net_) throw Error("FeatureNet: not loaded");
  return net_->config();
}

torch::Device FeatureNet::device() const {
  if (!net_) throw Error("FeatureNet: not loaded");
  return net_->parameters().front().device();
}

Embedding FeatureNet::embed(const torch::Tensor& images, bool allow_resize, int batch_size,
                            const std::function<void(int64_t, int64_t)>& progress) const {
  const auto& cfg = config();
  if (!images.defined() || images.dim() != 4) throw Error("FeatureNet::embed: expected images [N, C, H, W]");
  const int64_t n = images.size(0);
  Embedding e;
  e.features = torch::empty({n, cfg.feature_dim}, torch::kFloat32);
  e.logits = torch::empty({n, cfg.num_classes}, torch::kFloat32);
  if (n == 0) return e;
  // Validate sizes/channels once, up front, with a clear message.
  prepare_classifier_input(images.narrow(0, 0, 1), cfg, allow_resize);
  torch::NoGradGuard ng;
  if (progress) progress(0, n);
  auto m = net_.ptr();  // the holder is const here; the module is not
  const bool was_training = m->is_training();
  m->eval();
  const auto dev = device();
  batch_size = std::max(1, batch_size);
  for (int64_t i = 0; i < n; i += batch_size) {
    int64_t b = std::min<int64_t>(batch_size, n - i);
    auto x = prepare_classifier_input(images.narrow(0, i, b), cfg, allow_resize).to(dev);
    auto f = m->features(x);
    auto l = m->head(f);
    e.features.narrow(0, i, b).copy_(f.to(torch::kCPU, torch::kFloat32));
    e.logits.narrow(0, i, b).copy_(l.to(torch::kCPU, torch::kFloat32));
    if (progress) progress(i + b, n);
  }
  if (was_training) m->train();
  return e;
}

std::string class_folder_name(const std::string& class_name) {
  std::string out;
  for (unsigned char c : class_name)
    out += (std::isalnum(c) || c == ' ' || c == '.' || c == '_' || c == '+' || c == '-') ? static_cast<char>(c) : '_';
  if (out.empty() || out[0] == '.') out = "_" + out;
  return out;
}

std::vector<int64_t> FeatureNet::map_classes(const std::vector<std::string>& names) const {
  const auto& cfg = config();
  auto lower = [](std::string s) {
    std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return std::tolower(c); });
    return s;
  };
  std::vector<int64_t> out;
  for (const auto& name : names) {
    int64_t id = -1;
    for (size_t k = 0; k < cfg.class_names.size() && id < 0; ++k)
      if (lower(cfg.class_names[k]) == lower(name)) id = static_cast<int64_t>(k);
    for (size_t k = 0; k < cfg.class_names.size() && id < 0; ++k)
      if (lower(class_folder_name(cfg.class_names[k])) == lower(name)) id = static_cast<int64_t>(k);
    if (id < 0 && !name.empty() && std::all_of(name.begin(), name.end(), ::isdigit) && name.size() < 9) {
      int64_t v = std::stoll(name);
      if (v < cfg.num_classes) id = v;
    }
    out.push_back(id);
  }
  return out;
}

double classifier_accuracy(const FeatureNet& net, const torch::Tensor& images, const torch::Tensor& labels, int k) {
  if (!labels.defined() || labels.size(0) != images.size(0)) throw Error("classifier_accuracy: labels do not match");
  if (images.size(0) == 0) throw Error("classifier_accuracy: no images");
  if (k < 1) throw Error("classifier_accuracy: k must be at least 1");
  auto logits = net.embed(images).logits;
  k = std::min<int>(k, static_cast<int>(logits.size(1)));
  auto top = std::get<1>(logits.topk(k, 1));
  return top.eq(labels.to(torch::kInt64).unsqueeze(1)).any(1).to(torch::kFloat64).mean().item<double>();
}

// ---------------------------------------------------------------------------------------------
// Data

namespace {

// Datasets with their own train/test split: IDX (files per split) and emoji (every 10th emoji held out).
bool has_own_split(const std::string& spec) {
  if (spec == "fashion-mnist" || spec == "mnist" || spec == "emoji") return true;
  if (!fs::is_directory(spec)) return false;
  for (const auto& e : fs::directory_iterator(spec))
    if (e.path().filename().string().find("idx3-ubyte") != std::string::npos) return true;
  return false;
}

// Deterministic permutation (independent of the standard library's shuffle).
std::vector<int64_t> permutation(int64_t n, std::mt19937_64& rng) {
  std::vector<int64_t> p(n);
  std::iota(p.begin(), p.end(), 0);
  for (int64_t i = n - 1; i > 0; --i) {
    int64_t j = static_cast<int64_t>(rng() % static_cast<uint64_t>(i + 1));
    std::swap(p[i], p[j]);
  }
  return p;
}

double cpu_seconds_now() {
  timespec ts{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

}  // namespace

Dataset load_split(const std::string& spec, const std::string& split, int channels, double holdout) {
  if (split != "train" && split != "test") throw Error("dataset split '" + split + "': expected train or test");
  if (has_own_split(spec)) return load_dataset(spec, split, 0, channels);
  Dataset all = load_dataset(spec, "train", 0, channels);
  int64_t n = all.size();
  int64_t n_test = std::max<int64_t>(1, static_cast<int64_t>(std::llround(n * holdout)));
  if (n_test >= n) throw Error(spec + ": too few images (" + std::to_string(n) + ") to hold out a test split");
  std::mt19937_64 rng(0x5eed);
  auto perm = torch::tensor(permutation(n, rng), torch::kInt64);
  auto idx = split == "test" ? perm.narrow(0, n - n_test, n_test) : perm.narrow(0, 0, n - n_test);
  idx = std::get<0>(idx.sort());  // keep the folder order
  Dataset d = all;
  d.images = all.images.index_select(0, idx);
  if (all.labelled()) d.labels = all.labels.index_select(0, idx);
  return d;
}

// ---------------------------------------------------------------------------------------------
// Training

ClassifierTrainResult train_classifier(const ClassifierTrainOptions& opt) {
  if (opt.epochs < 1) throw Error("train-classifier: --epochs must be at least 1");
  if (opt.batch_size < 2) throw Error("train-classifier: --batch-size must be at least 2");
  if (opt.lr <= 0) throw Error("train-classifier: --lr must be positive");
  ClassifierConfig cfg = opt.model;
  struct {
    Dataset train, test;
  } data{load_split(opt.data, "train"), load_split(opt.data, "test")};
  if (!data.train.labelled() || !data.test.labelled())
    throw Error(opt.data + ": training a classifier needs labels (an image folder with one subfolder per class)");
  if (opt.limit > 0 && opt.limit < data.train.size()) {
    data.train.images = data.train.images.narrow(0, 0, opt.limit);
    data.train.labels = data.train.labels.narrow(0, 0, opt.limit);
  }
  cfg.in_channels = data.train.channels();
  cfg.image_size = data.train.image_size();
  cfg.class_names = data.train.class_names;
  cfg.num_classes = static_cast<int>(data.train.class_names.size());
  if (cfg.num_classes < 2) throw Error(opt.data + ": at least two classes are needed");
  if (cfg.dataset.empty()) cfg.dataset = opt.data;
  // Round-trip through JSON to validate the configuration.
  cfg = ClassifierConfig::from_json(cfg.to_json(), "classifier configuration");

  torch::manual_seed(opt.seed);
  std::mt19937_64 rng(opt.seed * 0x9E3779B97F4A7C15ull + 1);
  Classifier net(cfg);
  net->to(opt.device);
  net->train();

  torch::optim::AdamW optim(net->parameters(), torch::optim::AdamWOptions(opt.lr).weight_decay(opt.weight_decay));
  const int64_t n = data.train.size();
  const int64_t steps_per_epoch = n / opt.batch_size;  // drop the last partial batch
  if (steps_per_epoch < 1) throw Error(opt.data + ": fewer training images than one batch");
  const int64_t total_steps = steps_per_epoch * opt.epochs;
  const int64_t warmup = std::max<int64_t>(1, static_cast<int64_t>(opt.warmup_epochs * steps_per_epoch));
  const int C = cfg.in_channels, S = cfg.image_size, P = std::max(0, opt.pad);

  auto t0 = std::chrono::steady_clock::now();
  double cpu0 = cpu_seconds_now();
  auto elapsed = [&] { return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(); };
  int64_t global = 0;
  ClassifierTrainResult res;
  FeatureNet eval_net;

  for (int epoch = 1; epoch <= opt.epochs; ++epoch) {
    auto perm = permutation(n, rng);
    double loss_sum = 0, correct = 0, seen = 0;
    for (int64_t step = 0; step < steps_per_epoch; ++step, ++global) {
      auto idx = torch::from_blob(perm.data() + step * opt.batch_size, {opt.batch_size}, torch::kInt64);
      auto x = data.train.images.index_select(0, idx).to(torch::kFloat32).div_(127.5).sub_(1.0);
      auto y = data.train.labels.index_select(0, idx);
      // Augmentation: random crop from a replicate-padded image, random horizontal flip.
      if (P > 0 || opt.flip) {
        auto padded = P > 0 ? F::pad(x, F::PadFuncOptions({P, P, P, P}).mode(torch::kReplicate)) : x;
        auto out = torch::empty_like(x);
        for (int64_t b = 0; b < opt.batch_size; ++b) {
          int64_t oy = P > 0 ? static_cast<int64_t>(rng() % (2 * P + 1)) : 0;
          int64_t ox = P > 0 ? static_cast<int64_t>(rng() % (2 * P + 1)) : 0;
          auto crop = padded[b].narrow(1, oy, S).narrow(2, ox, S);
          if (opt.flip && (rng() & 1)) crop = crop.flip({2});
          out[b].copy_(crop);
        }
        x = out;
      }
      (void)C;
      x = x.to(opt.device);
      y = y.to(opt.device);
      double lr = global < warmup
                      ? opt.lr * (global + 1) / warmup
                      : 0.5 * opt.lr * (1 + std::cos(M_PI * (global - warmup) / double(total_steps - warmup)));
      for (auto& g : optim.param_groups()) static_cast<torch::optim::AdamWOptions&>(g.options()).lr(lr);
      auto logits = net->forward(x);
      auto loss = F::cross_entropy(logits, y, F::CrossEntropyFuncOptions().label_smoothing(opt.label_smoothing));
      optim.zero_grad();
      loss.backward();
      optim.step();
      loss_sum += loss.item<double>() * opt.batch_size;
      correct += logits.argmax(1).eq(y).sum().item<double>();
      seen += opt.batch_size;
      bool last = step + 1 == steps_per_epoch;
      if (opt.progress && ((step + 1) % std::max(1, opt.progress_every) == 0 || last)) {
        ClassifierProgress p;
        p.epoch = epoch;
        p.epochs = opt.epochs;
        p.step = step + 1;
        p.steps_per_epoch = steps_per_epoch;
        p.loss = loss_sum / seen;
        p.accuracy = correct / seen;
        p.elapsed_s = elapsed();
        p.images_per_s = (global + 1) * double(opt.batch_size) / std::max(1e-9, p.elapsed_s);
        p.eta_s = (total_steps - global - 1) * double(opt.batch_size) / std::max(1e-9, p.images_per_s);
        p.epoch_end = last;
        if (last && (opt.eval_every_epoch || epoch == opt.epochs)) {
          eval_net = FeatureNet(net);
          p.test_accuracy = classifier_accuracy(eval_net, data.test.images, data.test.labels);
          net->train();
          if (epoch == opt.epochs) res.test_accuracy = p.test_accuracy;
        }
        opt.progress(p);
      }
    }
  }
  res.train_seconds = elapsed();
  res.cpu_seconds = cpu_seconds_now() - cpu0;
  res.steps = global;
  net->eval();
  if (!opt.progress) res.test_accuracy = classifier_accuracy(FeatureNet(net), data.test.images, data.test.labels);
  res.test_top5_accuracy = classifier_accuracy(FeatureNet(net), data.test.images, data.test.labels, 5);
  res.test_images = data.test.size();
  res.net = net;
  return res;
}

}  // namespace diffuse
