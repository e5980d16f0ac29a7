#include "train/emoji.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <fstream>
#include <set>

#include "core/error.h"
#include "fixtures.h"
#include "models/error_of.h"

namespace diffuse {
namespace {

using test::TempDir;

int64_t index_of(const Dataset& d, const std::string& name) {
  auto it = std::find(d.names.begin(), d.names.end(), name);
  return it == d.names.end() ? -1 : static_cast<int64_t>(it - d.names.begin());
}

TEST(Emoji, RendersMoreThanAThousandDistinctEmojiWithSubgroupLabels) {
  EmojiOptions o;
  o.image_size = 32;
  Dataset d = load_emoji(o);
  std::printf("emoji: %lld rendered, %zu subgroups\n", static_cast<long long>(d.size()), d.class_names.size());
  EXPECT_GT(d.size(), 3000);  // Noto 2.042 + Unicode 15.0: ZWJ sequences, flags and skin tones included
  ASSERT_EQ(d.images.sizes(), (std::vector<int64_t>{d.size(), 3, 32, 32}));
  EXPECT_EQ(d.images.scalar_type(), torch::kUInt8);
  ASSERT_EQ(static_cast<int64_t>(d.names.size()), d.size());
  ASSERT_EQ(d.labels.size(0), d.size());
  EXPECT_TRUE(std::is_sorted(d.class_names.begin(), d.class_names.end()));
  EXPECT_GT(d.class_names.size(), 80u);
  // Every class has at least one emoji; images are distinct.
  EXPECT_EQ(std::get<0>(at::_unique(d.labels)).size(0), static_cast<int64_t>(d.class_names.size()));
  auto flat = d.images.reshape({d.size(), -1}).to(torch::kInt32);
  auto uniq = std::get<0>(at::unique_dim(flat, 0));
  EXPECT_GT(uniq.size(0), d.size() * 99 / 100);

  // Sequences resolved through GSUB ligatures.
  for (const char* name :
       {"flag: Germany", "thumbs up: medium skin tone", "family: man, woman, girl, boy", "keycap: 1", "rainbow flag"})
    EXPECT_GE(index_of(d, name), 0) << name;
}

TEST(Emoji, EveryFullyQualifiedEmojiReachesABitmapGlyph) {
  auto entries = read_emoji_test(default_emoji_test());
  EmojiFont font(default_emoji_font());
  EXPECT_EQ(font.ppem(), 109);
  int fully = 0, resolved = 0;
  std::set<int> glyphs;
  std::string missing;
  for (const auto& e : entries) {
    if (!e.fully_qualified) continue;
    ++fully;
    int g = font.glyph(e.codepoints);
    if (g >= 0) {
      ++resolved;
      glyphs.insert(g);
      EXPECT_FALSE(font.png(g).empty());
    } else if (missing.size() < 400) {
      missing += e.name + "; ";
    }
  }
  std::printf("fully-qualified emoji: %d, with a bitmap glyph: %d, distinct glyphs: %zu\n", fully, resolved,
              glyphs.size());
  EXPECT_EQ(resolved, fully) << "no glyph for: " << missing;
  // Unknown sequences have no glyph.
  EXPECT_EQ(font.glyph({0x41}), -1);
  EXPECT_EQ(font.glyph({0x1F600, 0x200D, 0x1F600}), -1);
}

TEST(Emoji, RedAppleIsFoodFruitRedOnWhite) {
  EmojiOptions o;
  o.image_size = 64;
  Dataset d = load_emoji(o);
  int64_t i = index_of(d, "red apple");
  ASSERT_GE(i, 0);
  EXPECT_EQ(d.class_names[static_cast<size_t>(d.labels[i].item<int64_t>())], "food-fruit");
  auto img = d.images[i].to(torch::kFloat32);  // [3, 64, 64] in 0..255
  // Corners are white background.
  for (auto [y, x] : std::vector<std::pair<int, int>>{{0, 0}, {0, 63}, {63, 0}, {63, 63}})
    EXPECT_EQ(img.index({torch::indexing::Slice(), y, x}).min().item<float>(), 255.f);
  // Non-background pixels are mostly red.
  auto r = img[0], g = img[1], b = img[2];
  auto fg = (r < 250) | (g < 250) | (b < 250);
  auto red = fg & (r > g + 60) & (r > b + 60);
  double fg_share = fg.to(torch::kFloat32).mean().item<double>();
  double red_share = red.to(torch::kFloat32).sum().item<double>() / fg.to(torch::kFloat32).sum().item<double>();
  EXPECT_GT(fg_share, 0.3);
  EXPECT_GT(red_share, 0.6);

  // The same emoji through the dataset registry, and the held-out split.
  Dataset train = load_dataset("emoji", "train", 64), test = load_dataset("emoji", "test", 64);
  EXPECT_EQ(train.size() + test.size(), d.size());
  EXPECT_EQ(test.size(), d.size() / 10);
  EXPECT_EQ(test.names[0], d.names[9]);
  EXPECT_TRUE(torch::equal(test.images[0], d.images[9]));
  EXPECT_EQ(train.class_names, d.class_names);
}

TEST(Emoji, MissingFilesNameTheDebianPackage) {
  TempDir dir;
  EmojiOptions o;
  o.font = dir / "nope.ttf";
  std::string msg = test::error_of([&] { load_emoji(o); });
  EXPECT_NE(msg.find("nope.ttf"), std::string::npos) << msg;
  EXPECT_NE(msg.find("fonts-noto-color-emoji"), std::string::npos) << msg;
  o.font.clear();
  o.test_file = dir / "emoji-test.txt";
  msg = test::error_of([&] { load_emoji(o); });
  EXPECT_NE(msg.find("emoji-test.txt"), std::string::npos) << msg;
  EXPECT_NE(msg.find("unicode-data"), std::string::npos) << msg;
  // A file that is not a font.
  o.test_file.clear();
  o.font = dir / "emoji-test.txt";
  std::ofstream(o.font) << "not a font";
  EXPECT_NE(test::error_of([&] { load_emoji(o); }).find("not a TrueType"), std::string::npos);
  o.font.clear();
  o.image_size = 4;
  EXPECT_THROW(load_emoji(o), Error);
}

}  // namespace
}  // namespace diffuse
