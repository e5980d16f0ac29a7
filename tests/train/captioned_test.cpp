// Captioned datasets: kohya caption files and N_name repeats, Hugging Face metadata.jsonl,
// aspect-ratio buckets, deterministic one-bucket batches, emoji-captions, and the errors for
// images without captions, empty captions and unreadable images. Folders are written here.
#include "train/captioned.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <set>

#include "core/image.h"
#include "fixtures.h"
#include "models/error_of.h"
#include "train/emoji.h"

namespace diffuse {
namespace {

namespace fs = std::filesystem;
using test::TempDir;

// A w x h RGB image: the left half `left`, the right half `right`.
Image two_colour(int w, int h, std::array<uint8_t, 3> left, std::array<uint8_t, 3> right) {
  Image img{w, h, 3, std::vector<uint8_t>(static_cast<size_t>(w * h * 3))};
  for (int y = 0; y < h; ++y)
    for (int x = 0; x < w; ++x)
      for (int c = 0; c < 3; ++c)
        img.data[static_cast<size_t>((y * w + x) * 3 + c)] =
            x < w / 2 ? left[static_cast<size_t>(c)] : right[static_cast<size_t>(c)];
  return img;
}

void put(const std::string& path, const std::string& text) {
  fs::create_directories(fs::path(path).parent_path());
  std::ofstream(path, std::ios::binary) << text;
}

void put_png(const std::string& path, const Image& img) {
  fs::create_directories(fs::path(path).parent_path());
  write_png(path, img);
}

const std::array<uint8_t, 3> kRed{255, 0, 0}, kBlue{0, 0, 255};

TEST(Captioned, BucketResolutionsFollowKohya) {
  auto b = bucket_resolutions(512, 64);
  std::set<std::pair<int, int>> s(b.begin(), b.end());
  for (auto r : {std::pair{512, 512}, {576, 448}, {640, 384}, {768, 320}, {448, 576}, {320, 768}, {1024, 256}})
    EXPECT_TRUE(s.count(r)) << r.first << "x" << r.second;
  for (const auto& [w, h] : b) {
    EXPECT_EQ(w % 64, 0);
    EXPECT_EQ(h % 64, 0);
    EXPECT_LE(w * h, 512 * 512);
    EXPECT_GE(w * h, 512 * 512 * 3 / 4) << w << "x" << h;  // areas stay close to the target
  }
  // Nearest aspect ratio: 2:1 -> 704x320 (2.2) beats 640x384 (1.67); square stays square.
  EXPECT_EQ(nearest_bucket(1000, 500, b), (std::pair{704, 320}));
  EXPECT_EQ(nearest_bucket(300, 300, b), (std::pair{512, 512}));
  EXPECT_EQ(nearest_bucket(500, 1000, b), (std::pair{320, 704}));
  EXPECT_NE(test::error_of([] { bucket_resolutions(32, 64); }).find("resolution 32"), std::string::npos);
}

TEST(Captioned, ResizeCoverCropKeepsTheCentre) {
  // 64x32, left red / right blue -> the 32x32 centre: 16 red columns, then 16 blue.
  auto x = to_tensor(two_colour(64, 32, kRed, kBlue));
  auto y = resize_cover_crop(x, 32, 32);
  ASSERT_EQ(y.sizes(), (std::vector<int64_t>{3, 32, 32}));
  EXPECT_TRUE(torch::equal(y, x.slice(2, 16, 48)));
  // Enlarging to cover 48x48 (scale 1.5 -> 96x48, crop columns 24..72) keeps both halves.
  auto z = resize_cover_crop(x, 48, 48);
  ASSERT_EQ(z.sizes(), (std::vector<int64_t>{3, 48, 48}));
  EXPECT_NEAR(z[0][10][2].item<double>(), 1.0, 1e-6);   // red
  EXPECT_NEAR(z[2][10][45].item<double>(), 1.0, 1e-6);  // blue
}

TEST(Captioned, KohyaFolderWithRepeatsAndBuckets) {
  TempDir dir;
  put_png(dir / "3_cat/a.png", two_colour(32, 32, kRed, kRed));
  put(dir / "3_cat/a.txt", "\n  a red cat  \nsecond line is ignored\n");
  put_png(dir / "plain/b.png", two_colour(64, 32, kRed, kBlue));
  put(dir / "plain/b.txt", "a wide picture");
  put_png(dir / "c.png", two_colour(16, 32, kBlue, kBlue));
  put(dir / "c.txt", "a tall blue one");
  ASSERT_TRUE(is_captioned_dataset(dir.path));
  CaptionedOptions o;
  o.resolution = 32;
  o.size_step = 8;
  auto d = load_captioned(dir.path, o);
  ASSERT_EQ(d.size(), 3);
  std::map<std::string, size_t> at;
  for (size_t i = 0; i < d.files.size(); ++i) at[fs::path(d.files[i]).filename().string()] = i;
  const auto a = at.at("a.png"), b = at.at("b.png"), c = at.at("c.png");
  EXPECT_EQ(d.captions[a], "a red cat");
  EXPECT_EQ(d.captions[b], "a wide picture");
  EXPECT_EQ(d.captions[c], "a tall blue one");
  EXPECT_EQ(d.repeats[a], 3);
  EXPECT_EQ(d.repeats[b], 1);
  EXPECT_EQ(d.repeats[c], 1);
  EXPECT_EQ(d.epoch_size(), 5);
  ASSERT_EQ(d.buckets.size(), 3u);  // square, wide, tall
  const auto buckets = bucket_resolutions(32, 8);
  auto size_of = [&](size_t i) {
    const auto& bk = d.buckets[static_cast<size_t>(d.bucket_of[i])];
    return std::pair{bk.width, bk.height};
  };
  EXPECT_EQ(size_of(a), (std::pair{32, 32}));
  EXPECT_EQ(size_of(b), nearest_bucket(64, 32, buckets));
  EXPECT_GT(size_of(b).first, size_of(b).second);
  EXPECT_EQ(size_of(c), nearest_bucket(16, 32, buckets));
  EXPECT_LT(size_of(c).first, size_of(c).second);
  // The wide image is resized to cover its bucket and centre-cropped: red on the left, blue on the right.
  const auto& wide = d.buckets[static_cast<size_t>(d.bucket_of[b])];
  auto img = wide.images[d.row_of[b]];
  ASSERT_EQ(img.sizes(), (std::vector<int64_t>{3, wide.height, wide.width}));
  EXPECT_EQ(img[0][0][0].item<int>(), 255);
  EXPECT_EQ(img[2][0][0].item<int>(), 0);
  EXPECT_EQ(img[0][0][wide.width - 1].item<int>(), 0);
  EXPECT_EQ(img[2][0][wide.width - 1].item<int>(), 255);

  // Without buckets every image becomes resolution x resolution.
  o.buckets = false;
  auto sq = load_captioned(dir.path, o);
  ASSERT_EQ(sq.buckets.size(), 1u);
  EXPECT_EQ(sq.buckets[0].images.sizes(), (std::vector<int64_t>{3, 3, 32, 32}));
}

TEST(Captioned, HuggingFaceMetadataAndCaptionExtension) {
  TempDir dir;
  put_png(dir / "train/x.png", two_colour(24, 24, kRed, kBlue));
  put_png(dir / "train/sub/y.jpg", two_colour(24, 24, kBlue, kRed));
  put(dir / "train/metadata.jsonl",
      "{\"file_name\": \"x.png\", \"text\": \"red and blue\"}\n\n"
      "{\"file_name\": \"sub/y.jpg\", \"text\": \" blue and red \", \"other\": 1}\n");
  CaptionedOptions o;
  o.resolution = 16;
  o.size_step = 8;
  auto d = load_captioned(dir.path, o);
  ASSERT_EQ(d.size(), 2);
  std::set<std::string> caps(d.captions.begin(), d.captions.end());
  EXPECT_EQ(caps, (std::set<std::string>{"red and blue", "blue and red"}));
  EXPECT_EQ(d.buckets.size(), 1u);

  // kohya captions under another extension.
  TempDir k;
  put_png(k / "img.png", two_colour(16, 16, kRed, kRed));
  put(k / "img.caption", "red");
  o.caption_ext = ".caption";
  EXPECT_EQ(load_captioned(k.path, o).captions, std::vector<std::string>{"red"});
  o.caption_ext = ".txt";
  const auto e = test::error_of([&] { load_captioned(k.path, o); });
  EXPECT_NE(e.find("1 of 1 images have no caption"), std::string::npos) << e;
  EXPECT_NE(e.find("img.png"), std::string::npos) << e;
  EXPECT_NE(e.find("caption_ext"), std::string::npos) << e;
}

TEST(Captioned, BadInputGivesOneClearError) {
  CaptionedOptions o;
  o.resolution = 16;
  o.size_step = 8;
  {  // images without captions are all listed
    TempDir d;
    put_png(d / "a.png", two_colour(16, 16, kRed, kRed));
    put_png(d / "b.png", two_colour(16, 16, kRed, kRed));
    put_png(d / "c.png", two_colour(16, 16, kRed, kRed));
    put(d / "c.txt", "fine");
    const auto e = test::error_of([&] { load_captioned(d.path, o); });
    EXPECT_NE(e.find("2 of 3 images have no caption"), std::string::npos) << e;
    EXPECT_NE(e.find(d / "a.png"), std::string::npos) << e;
    EXPECT_NE(e.find(d / "b.png"), std::string::npos) << e;
    EXPECT_EQ(e.find(d / "c.png"), std::string::npos) << e;
  }
  {  // empty captions (file or metadata)
    TempDir d;
    put_png(d / "a.png", two_colour(16, 16, kRed, kRed));
    put(d / "a.txt", "  \n\n");
    put_png(d / "b.png", two_colour(16, 16, kRed, kRed));
    put(d / "metadata.jsonl", "{\"file_name\": \"b.png\", \"text\": \"\"}\n");
    const auto e = test::error_of([&] { load_captioned(d.path, o); });
    EXPECT_NE(e.find("2 images have an empty caption"), std::string::npos) << e;
    EXPECT_NE(e.find(d / "a.png"), std::string::npos) << e;
  }
  {  // unreadable images
    TempDir d;
    put(d / "broken.png", "not a png at all");
    put(d / "broken.txt", "a caption");
    const auto e = test::error_of([&] { load_captioned(d.path, o); });
    EXPECT_NE(e.find("1 images cannot be read"), std::string::npos) << e;
    EXPECT_NE(e.find("broken.png"), std::string::npos) << e;
  }
  {  // metadata naming a missing image, invalid JSON, a missing text field
    TempDir d;
    put_png(d / "a.png", two_colour(16, 16, kRed, kRed));
    put(d / "metadata.jsonl",
        "{\"file_name\": \"a.png\", \"text\": \"ok\"}\n{\"file_name\": \"gone.png\", \"text\": \"x\"}\n");
    auto e = test::error_of([&] { load_captioned(d.path, o); });
    EXPECT_NE(e.find("metadata.jsonl:2: no image"), std::string::npos) << e;
    put(d / "metadata.jsonl", "{\"file_name\": \"a.png\", \"caption\": \"ok\"}\n");
    e = test::error_of([&] { load_captioned(d.path, o); });
    EXPECT_NE(e.find("metadata.jsonl:1: needs a \"text\" string"), std::string::npos) << e;
    put(d / "metadata.jsonl", "{oops\n");
    e = test::error_of([&] { load_captioned(d.path, o); });
    EXPECT_NE(e.find("metadata.jsonl:1: invalid JSON"), std::string::npos) << e;
  }
  {  // a folder without images, a repeat count of 0
    TempDir d;
    EXPECT_NE(test::error_of([&] { load_captioned(d.path, o); }).find("no PNG or JPEG images"), std::string::npos);
    put_png(d / "0_none/a.png", two_colour(16, 16, kRed, kRed));
    put(d / "0_none/a.txt", "x");
    EXPECT_NE(test::error_of([&] { load_captioned(d.path, o); }).find("repeat count 0"), std::string::npos);
  }
  EXPECT_NE(test::error_of([&] { load_captioned("/nonexistent/folder", o); }).find("not a folder"), std::string::npos);
}

TEST(Captioned, BatchesComeFromOneBucketAndFollowRepeatsDeterministically) {
  TempDir dir;
  // 5 square images (one repeated twice) and 3 wide ones.
  for (int i = 0; i < 5; ++i) {
    const std::string sub = i == 0 ? "2_sq" : "sq";
    put_png(dir / (sub + "/s" + std::to_string(i) + ".png"), two_colour(16, 16, kRed, kRed));
    put(dir / (sub + "/s" + std::to_string(i) + ".txt"), "square " + std::to_string(i));
  }
  for (int i = 0; i < 3; ++i) {
    put_png(dir / ("w" + std::to_string(i) + ".png"), two_colour(40, 16, kRed, kBlue));
    put(dir / ("w" + std::to_string(i) + ".txt"), "wide " + std::to_string(i));
  }
  CaptionedOptions o;
  o.resolution = 16;
  o.size_step = 8;
  auto d = load_captioned(dir.path, o);
  ASSERT_EQ(d.buckets.size(), 2u);
  CaptionedLoader loader(d, 2, 7);
  EXPECT_EQ(loader.batches_per_epoch(), 3 + 2);  // 6 square copies / 2, 3 wide / 2 rounded up
  for (int64_t epoch = 0; epoch < 3; ++epoch) {
    std::map<int64_t, int> seen;
    for (int64_t s = 0; s < loader.batches_per_epoch(); ++s) {
      auto b = loader.make(epoch * loader.batches_per_epoch() + s);
      const auto& bk = d.buckets[static_cast<size_t>(b.bucket)];
      ASSERT_EQ(b.images.sizes(), (std::vector<int64_t>{static_cast<int64_t>(b.rows.size()), 3, bk.height, bk.width}));
      for (size_t k = 0; k < b.items.size(); ++k) {
        ++seen[b.items[k]];
        EXPECT_EQ(d.bucket_of[static_cast<size_t>(b.items[k])], b.bucket);
        EXPECT_EQ(b.captions[k], d.captions[static_cast<size_t>(b.items[k])]);
        EXPECT_TRUE(torch::equal(b.images[static_cast<int64_t>(k)],
                                 images_to_float(bk.images[b.rows[k]].unsqueeze(0)).squeeze(0)));
      }
    }
    ASSERT_EQ(seen.size(), 8u);
    for (const auto& [item, count] : seen) EXPECT_EQ(count, d.repeats[static_cast<size_t>(item)]);
  }
  // The same (seed, step) gives the same batch from a fresh loader; epochs are shuffled differently.
  CaptionedLoader again(d, 2, 7);
  std::vector<int64_t> e0, e1;
  for (int64_t s = 0; s < 10; ++s) {
    auto x = loader.make(s), y = again.make(s);
    EXPECT_EQ(x.items, y.items);
    EXPECT_TRUE(torch::equal(x.images, y.images));
    (s < 5 ? e0 : e1).insert((s < 5 ? e0 : e1).end(), x.items.begin(), x.items.end());
  }
  EXPECT_NE(e0, e1);
  CaptionedLoader other(d, 2, 8);
  std::vector<int64_t> o0;
  for (int64_t s = 0; s < 5; ++s) {
    auto x = other.make(s);
    o0.insert(o0.end(), x.items.begin(), x.items.end());
  }
  EXPECT_NE(e0, o0);
}

TEST(Captioned, EmojiCaptionsNameAndSubgroupWithTheHeldOutSplit) {
  if (!fs::exists(default_emoji_font()) || !fs::exists(default_emoji_test()))
    GTEST_SKIP() << "fonts-noto-color-emoji / unicode-data not installed";
  CaptionedOptions o;
  o.resolution = 16;
  auto train = load_captioned("emoji-captions", o);
  o.split = "test";
  auto test = load_captioned("emoji-captions", o);
  EmojiOptions eo;
  eo.image_size = 16;
  eo.split = "test";
  const auto held = load_emoji(eo);
  ASSERT_EQ(test.size(), held.size());
  for (int64_t i = 0; i < test.size(); ++i) {
    const auto k = static_cast<size_t>(i);
    EXPECT_EQ(test.captions[k],
              held.names[k] + ", " + held.class_names[static_cast<size_t>(held.labels[i].item<int64_t>())]);
  }
  EXPECT_TRUE(torch::equal(test.buckets.at(0).images, held.images));
  std::set<std::string> tr(train.captions.begin(), train.captions.end());
  EXPECT_TRUE(tr.count("red apple, food-fruit"));
  for (const auto& c : test.captions) EXPECT_FALSE(tr.count(c)) << c;  // held out
  EXPECT_GT(train.size(), 8 * test.size());
  // Skin tones and genders are words of the names.
  bool tone = false;
  for (const auto& c : train.captions) tone |= c.find("medium-dark skin tone") != std::string::npos;
  EXPECT_TRUE(tone);
}

}  // namespace
}  // namespace diffuse
