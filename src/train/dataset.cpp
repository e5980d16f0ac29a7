#include "train/dataset.h"

#include <zlib.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>

#include "core/error.h"
#include "core/image.h"
#include "train/emoji.h"

namespace fs = std::filesystem;

namespace diffuse {

const std::vector<std::string> kFashionMnistClasses = {"t-shirt", "trouser", "pullover", "dress", "coat",
                                                       "sandal",  "shirt",   "sneaker",  "bag",   "ankle-boot"};

std::string default_fashion_mnist_dir() {
  const char* env = std::getenv("DIFFUSE_FASHION_MNIST_DIR");
  return env && *env ? env : "/usr/share/datasets/fashion-mnist";
}

torch::Tensor read_idx(const std::string& path) {
  gzFile f = gzopen(path.c_str(), "rb");  // reads plain files too
  if (!f) throw Error(path + ": cannot open IDX file");
  auto fail = [&](const std::string& why) {
    gzclose(f);
    return Error(path + ": " + why);
  };
  unsigned char magic[4];
  if (gzread(f, magic, 4) != 4) throw fail("truncated IDX header");
  if (magic[0] != 0 || magic[1] != 0 || magic[2] != 0x08) throw fail("not an unsigned-byte IDX file (bad magic)");
  int ndim = magic[3];
  if (ndim < 1 || ndim > 4) throw fail("IDX file has " + std::to_string(ndim) + " dimensions");
  std::vector<int64_t> dims;
  int64_t count = 1;
  for (int i = 0; i < ndim; ++i) {
    unsigned char b[4];
    if (gzread(f, b, 4) != 4) throw fail("truncated IDX header");
    int64_t d = (int64_t(b[0]) << 24) | (int64_t(b[1]) << 16) | (int64_t(b[2]) << 8) | b[3];
    if (d <= 0 || d > (1 << 24)) throw fail("IDX dimension " + std::to_string(d) + " out of range");
    dims.push_back(d);
    count *= d;
    if (count > (int64_t(1) << 32)) throw fail("IDX file is absurdly large");
  }
  auto t = torch::empty(dims, torch::kUInt8);
  int64_t done = 0;
  auto* p = t.data_ptr<uint8_t>();
  while (done < count) {
    int chunk = static_cast<int>(std::min<int64_t>(count - done, 1 << 26));
    int got = gzread(f, p + done, chunk);
    if (got <= 0)
      throw fail("truncated IDX data (" + std::to_string(done) + " of " + std::to_string(count) + " bytes)");
    done += got;
  }
  gzclose(f);
  return t;
}

namespace {

std::string find_idx(const std::string& dir, const std::string& stem) {
  for (const char* ext : {"", ".gz"}) {
    std::string p = dir + "/" + stem + ext;
    if (fs::exists(p)) return p;
  }
  // torchvision and Debian sometimes use dots instead of dashes.
  std::string dotted = stem;
  std::replace(dotted.begin(), dotted.end(), '-', '.');
  for (const char* ext : {"", ".gz"}) {
    std::string p = dir + "/" + dotted + ext;
    if (fs::exists(p)) return p;
  }
  throw Error(dir + ": no " + stem + "[.gz] file (expected an IDX dataset folder)");
}

Dataset load_idx_dir(const std::string& dir, const std::string& split) {
  std::string prefix = split == "test" ? "t10k" : "train";
  Dataset d;
  d.source = dir;
  auto images = read_idx(find_idx(dir, prefix + "-images-idx3-ubyte"));
  auto labels = read_idx(find_idx(dir, prefix + "-labels-idx1-ubyte"));
  if (images.dim() != 3) throw Error(dir + ": images IDX file must be [N, H, W]");
  if (labels.dim() != 1 || labels.size(0) != images.size(0))
    throw Error(dir + ": label count " + std::to_string(labels.size(0)) + " does not match image count " +
                std::to_string(images.size(0)));
  d.images = images.unsqueeze(1);
  d.labels = labels.to(torch::kInt64);
  int64_t k = d.labels.max().item<int64_t>() + 1;
  for (int64_t i = 0; i < k; ++i) d.class_names.push_back(std::to_string(i));
  return d;
}

bool is_image_file(const fs::path& p) {
  std::string e = p.extension().string();
  std::transform(e.begin(), e.end(), e.begin(), ::tolower);
  return e == ".png" || e == ".jpg" || e == ".jpeg";
}

Dataset load_image_folder(const std::string& dir, int image_size, int channels) {
  Dataset d;
  d.source = dir;
  std::vector<std::pair<fs::path, int64_t>> files;
  std::vector<fs::path> subdirs;
  for (const auto& e : fs::directory_iterator(dir))
    if (e.is_directory()) subdirs.push_back(e.path());
  std::sort(subdirs.begin(), subdirs.end());
  std::vector<fs::path> top;
  for (const auto& e : fs::directory_iterator(dir))
    if (e.is_regular_file() && is_image_file(e.path())) top.push_back(e.path());
  std::sort(top.begin(), top.end());
  bool labelled = top.empty() && !subdirs.empty();
  if (labelled) {
    for (const auto& sd : subdirs) {
      std::vector<fs::path> imgs;
      for (const auto& e : fs::recursive_directory_iterator(sd))
        if (e.is_regular_file() && is_image_file(e.path())) imgs.push_back(e.path());
      if (imgs.empty()) continue;
      std::sort(imgs.begin(), imgs.end());
      int64_t label = static_cast<int64_t>(d.class_names.size());
      d.class_names.push_back(sd.filename().string());
      for (auto& p : imgs) files.emplace_back(p, label);
    }
  } else {
    for (auto& p : top) files.emplace_back(p, -1);
  }
  if (files.empty()) throw Error(dir + ": no PNG or JPEG images found");
  if (image_size <= 0) {
    Image first = read_image(files[0].first.string());
    image_size = std::min(first.width, first.height);
  }
  if (channels <= 0) channels = read_image(files[0].first.string()).channels == 1 ? 1 : 3;
  d.images = torch::empty({static_cast<int64_t>(files.size()), channels, image_size, image_size}, torch::kUInt8);
  std::vector<int64_t> labels;
  for (size_t i = 0; i < files.size(); ++i) {
    Image img = convert_channels(read_image(files[i].first.string()), channels);
    auto t = resize_center_crop(to_tensor(img), image_size);
    d.images[static_cast<int64_t>(i)].copy_(t.add(1).mul(127.5).round().clamp(0, 255).to(torch::kUInt8));
    labels.push_back(files[i].second);
  }
  if (labelled) d.labels = torch::tensor(labels, torch::kInt64);
  return d;
}

}  // namespace

Dataset load_dataset(const std::string& spec, const std::string& split, int image_size, int channels) {
  if (split != "train" && split != "test") throw Error("dataset split '" + split + "': expected train or test");
  Dataset d;
  if (spec == "fashion-mnist" || spec == "mnist") {
    std::string dir = spec == "fashion-mnist" ? default_fashion_mnist_dir() : "/usr/share/datasets/mnist";
    if (!fs::is_directory(dir))
      throw Error("--data " + spec + ": " + dir + " not found (install the Debian package dataset-" + spec + ")");
    d = load_idx_dir(dir, split);
    if (spec == "fashion-mnist" && d.class_names.size() == kFashionMnistClasses.size())
      d.class_names = kFashionMnistClasses;
  } else if (spec == "emoji") {
    EmojiOptions eo;
    eo.image_size = image_size > 0 ? image_size : 64;
    eo.split = split;
    d = load_emoji(eo);
  } else if (fs::is_directory(spec)) {
    bool idx = false;
    for (const auto& e : fs::directory_iterator(spec))
      if (e.path().filename().string().find("idx3-ubyte") != std::string::npos) idx = true;
    d = idx ? load_idx_dir(spec, split) : load_image_folder(spec, image_size, channels);
  } else {
    throw Error("--data " + spec + ": not a dataset name (fashion-mnist, mnist, emoji) or a directory");
  }
  if (channels > 0 && d.channels() != channels) {
    if (d.channels() == 1 && channels == 3)
      d.images = d.images.repeat({1, 3, 1, 1});
    else
      throw Error(d.source + ": has " + std::to_string(d.channels()) + " channels, " + std::to_string(channels) +
                  " wanted");
  }
  if (image_size > 0 && d.image_size() != image_size) {
    int64_t diff = image_size - d.image_size();
    if (diff > 0 && diff % 2 == 0) {
      // Pad with the border colour (IDX digits/clothes sit on a black background).
      d.images = torch::constant_pad_nd(d.images, {diff / 2, diff / 2, diff / 2, diff / 2}, 0);
    } else {
      auto f = d.images.to(torch::kFloat32);
      namespace F = torch::nn::functional;
      f = F::interpolate(f, F::InterpolateFuncOptions()
                                .size(std::vector<int64_t>{image_size, image_size})
                                .mode(torch::kBilinear)
                                .align_corners(false));
      d.images = f.round().clamp(0, 255).to(torch::kUInt8);
    }
  }
  return d;
}

}  // namespace diffuse
