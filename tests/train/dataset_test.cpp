#include "train/dataset.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "core/error.h"
#include "core/image.h"
#include "fixtures.h"
#include "train/loader.h"

namespace diffuse {
namespace {

using test::TempDir;

void write_idx(const std::string& path, const std::vector<int>& dims, const std::vector<uint8_t>& data) {
  std::ofstream f(path, std::ios::binary);
  unsigned char magic[4] = {0, 0, 8, static_cast<unsigned char>(dims.size())};
  f.write(reinterpret_cast<char*>(magic), 4);
  for (int d : dims) {
    unsigned char b[4] = {static_cast<unsigned char>(d >> 24), static_cast<unsigned char>(d >> 16),
                          static_cast<unsigned char>(d >> 8), static_cast<unsigned char>(d)};
    f.write(reinterpret_cast<char*>(b), 4);
  }
  f.write(reinterpret_cast<const char*>(data.data()), static_cast<std::streamsize>(data.size()));
}

TEST(Dataset, FashionMnistFromDebianPackage) {
  if (!std::filesystem::exists(default_fashion_mnist_dir())) GTEST_SKIP() << "dataset-fashion-mnist not installed";
  auto d = load_dataset("fashion-mnist", "test");
  EXPECT_EQ(d.images.sizes(), (std::vector<int64_t>{10000, 1, 28, 28}));
  EXPECT_EQ(d.labels.size(0), 10000);
  EXPECT_EQ(d.class_names.size(), 10u);
  EXPECT_EQ(d.class_names[9], "ankle-boot");
  // Balanced test split: 1000 per class.
  auto counts = torch::bincount(d.labels);
  EXPECT_TRUE(torch::all(counts == 1000).item<bool>());
  auto padded = load_dataset("fashion-mnist", "test", 32);
  EXPECT_EQ(padded.images.sizes(), (std::vector<int64_t>{10000, 1, 32, 32}));
  EXPECT_TRUE(torch::equal(padded.images.slice(2, 2, 30).slice(3, 2, 30), d.images));
}

TEST(Dataset, IdxFolderAndCorruptIdx) {
  TempDir dir;
  std::vector<uint8_t> px(3 * 4 * 4);
  for (size_t i = 0; i < px.size(); ++i) px[i] = static_cast<uint8_t>(i);
  write_idx(dir / "train-images-idx3-ubyte", {3, 4, 4}, px);
  write_idx(dir / "train-labels-idx1-ubyte", {3}, {0, 2, 1});
  auto d = load_dataset(dir.path);
  EXPECT_EQ(d.images.sizes(), (std::vector<int64_t>{3, 1, 4, 4}));
  EXPECT_EQ(d.images[1][0][0][0].item<uint8_t>(), 16);
  EXPECT_EQ(d.labels[1].item<int64_t>(), 2);
  EXPECT_EQ(d.class_names.size(), 3u);
  // Truncated data.
  write_idx(dir / "train-images-idx3-ubyte", {3, 4, 4}, std::vector<uint8_t>(10));
  try {
    load_dataset(dir.path);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("truncated"), std::string::npos) << e.what();
  }
  // Label count mismatch.
  write_idx(dir / "train-images-idx3-ubyte", {3, 4, 4}, px);
  write_idx(dir / "train-labels-idx1-ubyte", {2}, {0, 1});
  EXPECT_THROW(load_dataset(dir.path), Error);
}

TEST(Dataset, ImageFolderWithClassesAndErrors) {
  TempDir dir;
  for (const char* cls : {"cats", "dogs"}) {
    std::filesystem::create_directories(dir / cls);
    for (int i = 0; i < 2; ++i) {
      Image img;
      img.width = 12;
      img.height = 8;
      img.channels = 3;
      img.data.assign(12 * 8 * 3, static_cast<uint8_t>(cls[0] == 'c' ? 10 : 200));
      write_png(dir / (std::string(cls) + "/" + std::to_string(i) + ".png"), img);
    }
  }
  auto d = load_dataset(dir.path, "train", 8);
  EXPECT_EQ(d.images.sizes(), (std::vector<int64_t>{4, 3, 8, 8}));
  EXPECT_EQ(d.class_names, (std::vector<std::string>{"cats", "dogs"}));
  EXPECT_EQ(d.labels[3].item<int64_t>(), 1);
  EXPECT_EQ(d.images[3][0][4][4].item<uint8_t>(), 200);
  // A corrupt image names its file.
  std::ofstream(dir / "dogs/bad.png") << "not a png";
  try {
    load_dataset(dir.path, "train", 8);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("bad.png"), std::string::npos);
  }
  TempDir empty;
  EXPECT_THROW(load_dataset(empty.path), Error);
  EXPECT_THROW(load_dataset("/nonexistent/folder"), Error);
}

TEST(Loader, DeterministicPerStepAndCoversEpoch) {
  Dataset d;
  d.images = torch::arange(10, torch::kUInt8).reshape({10, 1, 1, 1});
  d.labels = torch::arange(10, torch::kInt64);
  std::vector<int64_t> seen;
  {
    BatchLoader loader(d, 5, 7, false, 0);
    for (int s = 0; s < 4; ++s) {
      Batch b = loader.next();
      EXPECT_EQ(b.step, s);
      Batch again = loader.make(s);
      EXPECT_TRUE(torch::equal(b.images, again.images));
      EXPECT_TRUE(torch::equal(b.labels, again.labels));
      if (s < 2)
        for (int j = 0; j < 5; ++j) seen.push_back(b.labels[j].item<int64_t>());
    }
  }
  std::sort(seen.begin(), seen.end());
  for (int i = 0; i < 10; ++i) EXPECT_EQ(seen[static_cast<size_t>(i)], i);  // one epoch = a permutation
  // Starting mid-way gives the same batches as running through.
  BatchLoader a(d, 5, 7, true, 0), b(d, 5, 7, true, 3);
  for (int s = 0; s < 3; ++s) a.next();
  EXPECT_TRUE(torch::equal(a.next().images, b.next().images));
  // Images are scaled to [-1, 1].
  BatchLoader c(d, 10, 1, false, 0);
  auto x = c.next().images;
  EXPECT_NEAR(x.min().item<float>(), -1.0f, 1e-6);
  EXPECT_NEAR(x.max().item<float>(), 9 / 127.5f - 1.0f, 1e-6);
}

}  // namespace
}  // namespace diffuse
