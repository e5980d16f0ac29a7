#include "eval/reference.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <vector>

#include "core/error.h"
#include "core/safetensors.h"
#include "train/emoji.h"

namespace fs = std::filesystem;

namespace diffuse {

namespace {

constexpr int kCacheVersion = 1;

uint64_t fnv1a(const std::string& s, uint64_t h = 1469598103934665603ull) {
  for (unsigned char c : s) {
    h ^= c;
    h *= 1099511628211ull;
  }
  return h;
}

std::string hex(uint64_t h) {
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(h));
  return buf;
}

// Where a dataset spec's files live, for the cache key.
std::string data_location(const std::string& data) {
  if (data == "fashion-mnist") return default_fashion_mnist_dir();
  if (data == "mnist") return "/usr/share/datasets/mnist";
  if (data == "emoji") return "emoji:" + default_emoji_font() + "\n" + default_emoji_test();
  std::error_code ec;
  auto p = fs::weakly_canonical(fs::absolute(data), ec);
  return ec ? data : p.string();
}

// Names, sizes and modification times of a folder's files (recursively, sorted).
std::string folder_signature(const std::string& dir) {
  std::vector<std::string> rows;
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return "missing";
  for (auto it = fs::recursive_directory_iterator(dir, fs::directory_options::skip_permission_denied, ec);
       !ec && it != fs::recursive_directory_iterator(); it.increment(ec)) {
    if (!it->is_regular_file(ec)) continue;
    auto size = it->file_size(ec);
    auto mtime = fs::last_write_time(it->path(), ec).time_since_epoch().count();
    rows.push_back(fs::relative(it->path(), dir, ec).string() + ":" + std::to_string(size) + ":" +
                   std::to_string(mtime));
  }
  std::sort(rows.begin(), rows.end());
  std::string s;
  for (auto& r : rows) s += r + "\n";
  return s;
}

// Size and modification time of one file ("missing" when absent).
std::string file_signature(const std::string& path) {
  std::error_code ec;
  auto size = fs::file_size(path, ec);
  if (ec) return path + ":missing\n";
  auto mtime = fs::last_write_time(path, ec).time_since_epoch().count();
  return path + ":" + std::to_string(size) + ":" + std::to_string(mtime) + "\n";
}

// What the dataset's content depends on: the emoji font and emoji-test.txt for emoji, else the
// files of its folder.
std::string data_signature(const std::string& data, const std::string& location) {
  if (data == "emoji") return file_signature(default_emoji_font()) + file_signature(default_emoji_test());
  return folder_signature(location);
}

std::string sanitize(const std::string& s) {
  std::string out;
  for (char c : fs::path(s).filename().string().empty() ? s : fs::path(s).filename().string())
    out += (std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_') ? c : '_';
  if (out.empty()) out = "data";
  return out.substr(0, 40);
}

bool try_load(const std::string& path, const std::string& key, int64_t dim, int64_t classes, ReferenceSet& out) {
  std::error_code ec;
  if (!fs::exists(path, ec)) return false;
  try {
    auto f = safetensors::File::open(path);
    auto it = f.metadata().find("key");
    if (it == f.metadata().end() || it->second != key) return false;
    auto feats = f.get("features").to(torch::kFloat32).clone();
    auto logits = f.get("logits").to(torch::kFloat32).clone();
    auto labels = f.get("labels").to(torch::kInt64).clone();
    auto mu = f.get("mu").to(torch::kFloat64).clone();
    auto sigma = f.get("sigma").to(torch::kFloat64).clone();
    int64_t n = feats.size(0);
    if (feats.dim() != 2 || feats.size(1) != dim || logits.dim() != 2 || logits.size(0) != n ||
        logits.size(1) != classes || labels.dim() != 1 || labels.size(0) != n || mu.dim() != 1 || mu.size(0) != dim ||
        sigma.dim() != 2 || sigma.size(0) != dim || sigma.size(1) != dim)
      return false;
    out.features = feats;
    out.logits = logits;
    out.labels = labels;
    out.stats.mu = mu;
    out.stats.sigma = sigma;
    out.stats.n = n;
    return true;
  } catch (const std::exception&) {
    return false;  // unreadable or truncated: rebuild
  }
}

}  // namespace

std::string default_cache_dir() {
  if (const char* e = std::getenv("DIFFUSE_CACHE_DIR"); e && *e) return e;
  if (const char* e = std::getenv("XDG_CACHE_HOME"); e && *e) return std::string(e) + "/diffuse";
  if (const char* e = std::getenv("HOME"); e && *e) return std::string(e) + "/.cache/diffuse";
  return "/tmp/diffuse-cache";
}

std::string reference_key(const FeatureNet& net, const std::string& data, const std::string& split) {
  std::string loc = data_location(data);
  uint64_t h = fnv1a("diffuse-reference v" + std::to_string(kCacheVersion));
  h = fnv1a(net.fingerprint(), h);
  h = fnv1a(loc + "\n" + split + "\n", h);
  h = fnv1a(data_signature(data, loc), h);
  return hex(h);
}

ReferenceSet reference_set(const FeatureNet& net, const std::string& data, const std::string& split,
                           const std::string& cache_dir, const std::function<void(int64_t, int64_t)>& progress) {
  const auto& cfg = net.config();
  ReferenceSet r;
  r.data = data;
  r.split = split;
  r.key = reference_key(net, data, split);
  if (!cache_dir.empty())
    r.cache_file = cache_dir + "/features-" + sanitize(data) + "-" + split + "-" + r.key + ".safetensors";
  if (!r.cache_file.empty() && try_load(r.cache_file, r.key, cfg.feature_dim, cfg.num_classes, r)) {
    r.from_cache = true;
    return r;
  }
  Dataset d = load_split(data, split, cfg.in_channels);
  if (d.size() < 2) throw Error(data + " (" + split + "): needs at least 2 images, found " + std::to_string(d.size()));
  auto emb = net.embed(d.images, /*allow_resize=*/true, 500, progress);
  r.features = emb.features;
  r.logits = emb.logits;
  if (d.labelled()) {
    auto ids = net.map_classes(d.class_names);
    auto map = torch::tensor(ids, torch::kInt64);
    r.labels = map.index_select(0, d.labels.to(torch::kInt64));
  } else {
    r.labels = torch::full({d.size()}, -1, torch::kInt64);
  }
  r.stats = feature_stats(r.features);
  if (!r.cache_file.empty()) {
    try {
      std::error_code ec;
      fs::create_directories(cache_dir, ec);
      safetensors::save(r.cache_file,
                        {{"features", r.features},
                         {"logits", r.logits},
                         {"labels", r.labels},
                         {"mu", r.stats.mu},
                         {"sigma", r.stats.sigma}},
                        {{"key", r.key},
                         {"data", data},
                         {"split", split},
                         {"classifier", net.source()},
                         {"classifier_fingerprint", net.fingerprint()}});
    } catch (const std::exception& e) {
      std::fprintf(stderr, "warning: cannot write the reference cache %s: %s\n", r.cache_file.c_str(), e.what());
      r.cache_file.clear();
    }
  }
  return r;
}

FeatureStats reference_stats(const FeatureNet& net, const std::string& data, const std::string& split,
                             const std::string& cache_dir) {
  return reference_set(net, data, split, cache_dir).stats;
}

}  // namespace diffuse
