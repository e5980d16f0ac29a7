#include "train/captioned.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "core/error.h"
#include "core/image.h"
#include "core/parallel.h"
#include "core/strings.h"
#include "train/emoji.h"
#include "train/loader.h"

namespace fs = std::filesystem;

namespace diffuse {

int64_t CaptionedDataset::epoch_size() const {
  int64_t n = 0;
  for (int r : repeats) n += r;
  return n;
}

std::vector<std::pair<int, int>> bucket_resolutions(int resolution, int step) {
  if (step < 1) throw Error("size_step " + std::to_string(step) + ": must be at least 1");
  if (resolution < step)
    throw Error("resolution " + std::to_string(resolution) + ": must be at least the size step " +
                std::to_string(step));
  const int64_t area = static_cast<int64_t>(resolution) * resolution;
  const int lo = std::max(step, resolution / 2 / step * step), hi = 2 * resolution;
  std::set<std::pair<int, int>> set;
  const int square = resolution / step * step;
  set.insert({square, square});
  for (int w = lo; w <= hi; w += step) {
    int h = static_cast<int>(std::min<int64_t>(hi, area / w) / step * step);
    if (h < lo) continue;
    set.insert({w, h});
    set.insert({h, w});
  }
  std::vector<std::pair<int, int>> out(set.begin(), set.end());
  std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) {
    const double ra = static_cast<double>(a.first) / a.second, rb = static_cast<double>(b.first) / b.second;
    return ra != rb ? ra < rb : a.first * a.second < b.first * b.second;
  });
  return out;
}

std::pair<int, int> nearest_bucket(int w, int h, const std::vector<std::pair<int, int>>& buckets) {
  if (buckets.empty()) throw Error("nearest_bucket: no buckets");
  const double r = std::log(static_cast<double>(w) / h);
  std::pair<int, int> best = buckets[0];
  double best_d = INFINITY;
  for (const auto& b : buckets) {
    const double d = std::abs(std::log(static_cast<double>(b.first) / b.second) - r);
    if (d < best_d - 1e-12 || (std::abs(d - best_d) <= 1e-12 && b.first * b.second > best.first * best.second)) {
      best = b;
      best_d = d;
    }
  }
  return best;
}

torch::Tensor resize_cover_crop(const torch::Tensor& chw, int width, int height) {
  const int64_t h = chw.size(1), w = chw.size(2);
  torch::Tensor x = chw;
  if (h != height || w != width) {
    const double scale = std::max(static_cast<double>(width) / w, static_cast<double>(height) / h);
    const int64_t nh = std::max<int64_t>(height, std::lround(h * scale));
    const int64_t nw = std::max<int64_t>(width, std::lround(w * scale));
    namespace F = torch::nn::functional;
    auto o = F::InterpolateFuncOptions().size(std::vector<int64_t>{nh, nw});
    if (scale < 1)
      o.mode(torch::kArea);
    else
      o.mode(torch::kBilinear).align_corners(false);
    x = F::interpolate(x.unsqueeze(0), o).squeeze(0);
  }
  const int64_t top = (x.size(1) - height) / 2, left = (x.size(2) - width) / 2;
  return x.slice(1, top, top + height).slice(2, left, left + width).contiguous();
}

namespace {

bool is_image(const fs::path& p) {
  std::string e = p.extension().string();
  std::transform(e.begin(), e.end(), e.begin(), [](unsigned char c) { return std::tolower(c); });
  return e == ".png" || e == ".jpg" || e == ".jpeg";
}

std::string trim(const std::string& s) {
  size_t b = 0, e = s.size();
  while (b < e && std::isspace(static_cast<unsigned char>(s[b]))) ++b;
  while (e > b && std::isspace(static_cast<unsigned char>(s[e - 1]))) --e;
  return s.substr(b, e - b);
}

// kohya reads the first line of a caption file.
std::string read_caption_file(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  if (!f) throw Error(p.string() + ": cannot read the caption file");
  std::string line;
  while (std::getline(f, line)) {
    line = trim(line);
    if (!line.empty()) return line;
  }
  return "";
}

// "10_name" -> 10; folders without a number prefix repeat once.
int folder_repeats(const std::string& name, const std::string& path) {
  const auto us = name.find('_');
  if (us == std::string::npos || us == 0) return 1;
  const std::string num = name.substr(0, us);
  if (!std::all_of(num.begin(), num.end(), [](unsigned char c) { return std::isdigit(c); })) return 1;
  long long n = 0;
  try {
    n = std::stoll(num);
  } catch (const std::exception&) {
    n = -1;
  }
  if (n < 1 || n > 100000)
    throw Error(path + ": repeat count " + num + " out of range (a folder N_name repeats its images N times, N >= 1)");
  return static_cast<int>(n);
}

std::string list_paths(const std::vector<std::string>& v) {
  std::ostringstream o;
  for (size_t i = 0; i < v.size() && i < 20; ++i) o << "\n  " << v[i];
  if (v.size() > 20) o << "\n  ... and " << v.size() - 20 << " more";
  return o.str();
}

struct Found {
  std::string path, caption;
  int repeats = 1;
};

// Captions of the metadata.jsonl files under `root`: absolute image path -> caption.
std::map<std::string, std::string> read_metadata(const fs::path& root, std::vector<std::string>& errors) {
  std::map<std::string, std::string> caps;
  std::vector<fs::path> metas;
  for (const auto& e : fs::recursive_directory_iterator(root))
    if (e.is_regular_file() && e.path().filename() == "metadata.jsonl") metas.push_back(e.path());
  std::sort(metas.begin(), metas.end());
  for (const auto& m : metas) {
    std::ifstream f(m, std::ios::binary);
    std::string line;
    for (int ln = 1; std::getline(f, line); ++ln) {
      if (trim(line).empty()) continue;
      const std::string where = m.string() + ":" + std::to_string(ln);
      nlohmann::json j;
      try {
        j = nlohmann::json::parse(line);
      } catch (const nlohmann::json::exception& e) {
        throw Error(where + ": invalid JSON: " + e.what());
      }
      if (!j.is_object() || !j.contains("file_name") || !j["file_name"].is_string())
        throw Error(where + ": needs a \"file_name\" string");
      if (!j.contains("text") || !j["text"].is_string()) throw Error(where + ": needs a \"text\" string (the caption)");
      const fs::path img = (m.parent_path() / j["file_name"].get<std::string>()).lexically_normal();
      if (!fs::is_regular_file(img)) {
        errors.push_back(where + ": no image " + img.string());
        continue;
      }
      caps[img.string()] = j["text"].get<std::string>();
    }
  }
  return caps;
}

std::vector<Found> scan_folder(const std::string& dir, const CaptionedOptions& opt) {
  if (!fs::is_directory(dir)) throw Error("data " + dir + ": not a folder");
  std::vector<std::string> meta_errors;
  const auto meta = read_metadata(dir, meta_errors);
  if (!meta_errors.empty()) throw Error(dir + ": metadata.jsonl lines that name no image:" + list_paths(meta_errors));
  std::vector<fs::path> images;
  for (const auto& e : fs::recursive_directory_iterator(dir))
    if (e.is_regular_file() && is_image(e.path())) images.push_back(e.path().lexically_normal());
  std::sort(images.begin(), images.end());
  if (images.empty()) throw Error(dir + ": no PNG or JPEG images found");
  std::vector<Found> found;
  std::vector<std::string> missing, empty;
  const fs::path root = fs::path(dir).lexically_normal();
  for (const auto& p : images) {
    Found f;
    f.path = p.string();
    const fs::path rel = p.lexically_relative(root);
    if (std::distance(rel.begin(), rel.end()) > 1) f.repeats = folder_repeats(rel.begin()->string(), f.path);
    auto it = meta.find(f.path);
    fs::path side = p;
    side.replace_extension(opt.caption_ext);
    if (!opt.caption.empty()) {
      f.caption = trim(opt.caption);
    } else if (it != meta.end()) {
      f.caption = trim(it->second);
    } else if (fs::is_regular_file(side)) {
      f.caption = read_caption_file(side);
    } else {
      missing.push_back(f.path);
      continue;
    }
    if (f.caption.empty()) {
      empty.push_back(f.path);
      continue;
    }
    found.push_back(std::move(f));
  }
  if (!missing.empty())
    throw Error(dir + ": " + std::to_string(missing.size()) + " of " + std::to_string(images.size()) +
                " images have no caption (neither IMAGE" + opt.caption_ext +
                " (caption_ext) nor a metadata.jsonl line):" + list_paths(missing));
  if (!empty.empty())
    throw Error(dir + ": " + std::to_string(empty.size()) + " images have an empty caption:" + list_paths(empty));
  return found;
}

CaptionedDataset load_folder(const std::string& dir, const CaptionedOptions& opt) {
  auto found = scan_folder(dir, opt);
  const int res = opt.resolution > 0 ? opt.resolution : 512;
  const auto candidates =
      opt.buckets ? bucket_resolutions(res, opt.size_step) : std::vector<std::pair<int, int>>{{res, res}};
  CaptionedDataset d;
  d.source = dir;
  d.resolution = res;
  // Decode every image (in parallel), remembering the failures.
  const int64_t n = static_cast<int64_t>(found.size());
  std::vector<torch::Tensor> pixels(found.size());
  std::vector<std::string> errors(found.size());
  parallel_chunks(n, 1, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      const auto k = static_cast<size_t>(i);
      try {
        pixels[k] = to_tensor(convert_channels(read_image(found[k].path), 3));
      } catch (const std::exception& ex) {
        errors[k] = ex.what();
      }
    }
  });
  std::vector<std::string> bad;
  for (const auto& e : errors)
    if (!e.empty()) bad.push_back(e);
  if (!bad.empty()) throw Error(dir + ": " + std::to_string(bad.size()) + " images cannot be read:" + list_paths(bad));

  std::map<std::pair<int, int>, int> bucket_index;
  std::vector<std::vector<torch::Tensor>> rows;
  for (size_t i = 0; i < found.size(); ++i) {
    const auto& x = pixels[i];
    const auto b = opt.buckets ? nearest_bucket(static_cast<int>(x.size(2)), static_cast<int>(x.size(1)), candidates)
                               : candidates[0];
    auto it = bucket_index.find(b);
    if (it == bucket_index.end()) {
      it = bucket_index.emplace(b, static_cast<int>(d.buckets.size())).first;
      d.buckets.push_back({b.first, b.second, {}, {}});
      rows.emplace_back();
    }
    auto& bucket = d.buckets[static_cast<size_t>(it->second)];
    const auto x8 = resize_cover_crop(x, b.first, b.second).add(1).mul(127.5).round().clamp(0, 255).to(torch::kUInt8);
    d.captions.push_back(found[i].caption);
    d.files.push_back(found[i].path);
    d.repeats.push_back(found[i].repeats);
    d.bucket_of.push_back(it->second);
    d.row_of.push_back(static_cast<int64_t>(bucket.items.size()));
    bucket.items.push_back(static_cast<int64_t>(i));
    rows[static_cast<size_t>(it->second)].push_back(x8);
    pixels[i] = torch::Tensor();
  }
  for (size_t b = 0; b < d.buckets.size(); ++b) d.buckets[b].images = torch::stack(rows[b]);
  return d;
}

CaptionedDataset load_emoji_captions(const CaptionedOptions& opt) {
  EmojiOptions eo;
  eo.image_size = opt.resolution > 0 ? opt.resolution : 64;
  eo.split = opt.split;
  Dataset e = load_emoji(eo);
  CaptionedDataset d;
  d.source = "emoji-captions";
  d.resolution = eo.image_size;
  d.labels = e.labels;
  d.class_names = e.class_names;
  CaptionedBucket b;
  b.width = b.height = eo.image_size;
  b.images = e.images;
  for (int64_t i = 0; i < e.size(); ++i) {
    const auto& name = e.names[static_cast<size_t>(i)];
    d.captions.push_back(name + ", " + e.class_names[static_cast<size_t>(e.labels[i].item<int64_t>())]);
    d.files.push_back(name);
    d.repeats.push_back(1);
    d.bucket_of.push_back(0);
    d.row_of.push_back(i);
    b.items.push_back(i);
  }
  d.buckets.push_back(std::move(b));
  return d;
}

}  // namespace

std::string captioned_images_dataset(const std::string& spec) {
  const std::string suffix = "-captions";
  if (spec.size() > suffix.size() && spec.compare(spec.size() - suffix.size(), suffix.size(), suffix) == 0)
    return spec.substr(0, spec.size() - suffix.size());
  return {};
}

bool is_captioned_dataset(const std::string& spec, const std::string& caption_ext) {
  if (spec == "emoji-captions") return true;
  if (!fs::is_directory(spec)) return false;
  for (const auto& e : fs::recursive_directory_iterator(spec)) {
    if (!e.is_regular_file()) continue;
    if (e.path().filename() == "metadata.jsonl") return true;
    if (e.path().extension() == caption_ext) {
      fs::path stem = e.path();
      for (const char* ext : {".png", ".jpg", ".jpeg", ".PNG", ".JPG", ".JPEG"})
        if (fs::exists(stem.replace_extension(ext))) return true;
    }
  }
  return false;
}

CaptionedDataset load_captioned(const std::string& spec, const CaptionedOptions& opt) {
  if (opt.caption_ext.empty() || opt.caption_ext[0] != '.')
    throw Error("caption_ext '" + opt.caption_ext + "': expected an extension such as .txt");
  if (opt.resolution < 0) throw Error("resolution " + std::to_string(opt.resolution) + ": must be positive");
  if (spec == "emoji-captions") {
    if (opt.split != "train" && opt.split != "test" && opt.split != "all")
      throw Error("split '" + opt.split + "': expected train, test or all");
    return load_emoji_captions(opt);
  }
  return load_folder(spec, opt);
}

// ---------------------------------------------------------------------------------------------
// Batches

CaptionedLoader::CaptionedLoader(const CaptionedDataset& data, int batch_size, uint64_t seed)
    : data_(data), batch_size_(batch_size), seed_(seed) {
  if (batch_size < 1) throw Error("batch " + std::to_string(batch_size) + ": must be at least 1");
  if (data.size() == 0) throw Error(data.source + ": the dataset is empty");
  for (const auto& b : data.buckets) {
    int64_t copies = 0;
    for (auto i : b.items) copies += data.repeats[static_cast<size_t>(i)];
    batches_per_epoch_ += (copies + batch_size - 1) / batch_size;
  }
}

std::vector<CaptionedLoader::Planned> CaptionedLoader::plan(int64_t epoch) const {
  auto gen = at::detail::createCPUGenerator(mix_seed(seed_, static_cast<uint64_t>(epoch) ^ 0x63617074696f6eULL));
  std::vector<Planned> batches;
  for (size_t b = 0; b < data_.buckets.size(); ++b) {
    std::vector<int64_t> copies;
    const auto& items = data_.buckets[b].items;
    for (size_t r = 0; r < items.size(); ++r)
      for (int k = 0; k < data_.repeats[static_cast<size_t>(items[r])]; ++k) copies.push_back(static_cast<int64_t>(r));
    auto perm = torch::randperm(static_cast<int64_t>(copies.size()), gen, torch::kInt64);
    const auto* p = perm.data_ptr<int64_t>();
    for (size_t s = 0; s < copies.size(); s += static_cast<size_t>(batch_size_)) {
      Planned pl{static_cast<int>(b), {}};
      for (size_t k = s; k < std::min(copies.size(), s + static_cast<size_t>(batch_size_)); ++k)
        pl.rows.push_back(copies[static_cast<size_t>(p[k])]);
      batches.push_back(std::move(pl));
    }
  }
  auto order = torch::randperm(static_cast<int64_t>(batches.size()), gen, torch::kInt64);
  std::vector<Planned> out;
  for (int64_t i = 0; i < order.size(0); ++i) out.push_back(batches[static_cast<size_t>(order[i].item<int64_t>())]);
  return out;
}

CaptionedBatch CaptionedLoader::make(int64_t step) const {
  const int64_t epoch = step / batches_per_epoch_, k = step % batches_per_epoch_;
  Planned pl;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (cached_epoch_ != epoch) {
      cached_ = plan(epoch);
      cached_epoch_ = epoch;
    }
    pl = cached_[static_cast<size_t>(k)];
  }
  const auto& bucket = data_.buckets[static_cast<size_t>(pl.bucket)];
  CaptionedBatch b;
  b.step = step;
  b.bucket = pl.bucket;
  b.rows = pl.rows;
  for (auto r : pl.rows) {
    const auto item = bucket.items[static_cast<size_t>(r)];
    b.items.push_back(item);
    b.captions.push_back(data_.captions[static_cast<size_t>(item)]);
  }
  b.images = images_to_float(bucket.images.index_select(0, torch::tensor(pl.rows, torch::kInt64)));
  return b;
}

}  // namespace diffuse
