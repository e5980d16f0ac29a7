#pragma once
// The colour emoji of Debian's fonts-noto-color-emoji as a labelled image dataset.
//
// NotoColorEmoji.ttf stores each emoji as a PNG bitmap (136x128) in its CBDT table, indexed by
// CBLC. Code points map to glyphs through cmap (format 12 or 4); multi-code-point sequences
// (ZWJ sequences, flags, keycaps, skin tones) through the font's GSUB ligature lookups. Every
// fully-qualified emoji of unicode-data's emoji-test.txt that resolves to a bitmap glyph is
// rendered onto white, padded to a square and area-resized; its label is the emoji-test subgroup
// (e.g. "food-fruit") and its name is kept (e.g. "red apple"). Nothing is cached on disk.
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "train/dataset.h"

namespace diffuse {

// $DIFFUSE_EMOJI_FONT or /usr/share/fonts/truetype/noto/NotoColorEmoji.ttf.
std::string default_emoji_font();
// $DIFFUSE_EMOJI_TEST or /usr/share/unicode/emoji/emoji-test.txt.
std::string default_emoji_test();

// One entry of emoji-test.txt.
struct EmojiEntry {
  std::vector<uint32_t> codepoints;
  std::string group, subgroup, name;
  bool fully_qualified = false;
};
// Parses emoji-test.txt (all statuses). Throws diffuse::Error naming the file.
std::vector<EmojiEntry> read_emoji_test(const std::string& path);

// A parsed sfnt font's colour bitmaps: code point sequences -> glyph -> PNG bytes.
class EmojiFont {
 public:
  // Reads the table directory, cmap, CBLC/CBDT (largest strike) and GSUB ligatures.
  // Throws diffuse::Error naming the file (and the Debian package when it is missing).
  explicit EmojiFont(const std::string& path);

  // Glyph id of a code point sequence (after ligature substitution), -1 when the font has no
  // single glyph for it. A trailing or embedded U+FE0F is retried without it.
  int glyph(const std::vector<uint32_t>& codepoints) const;
  // PNG bytes of a glyph's bitmap in the chosen strike; empty when the glyph has none.
  std::string png(int glyph) const;
  int ppem() const { return ppem_; }
  size_t bitmap_count() const { return bitmaps_.size(); }
  const std::string& path() const { return path_; }

 private:
  int glyph_exact(const std::vector<uint32_t>& codepoints) const;
  std::string path_;
  std::string bytes_;
  std::map<uint32_t, uint16_t> cmap_;
  // Ligature lookups in order: first glyph -> (ligature glyph, remaining components).
  std::vector<std::map<uint16_t, std::vector<std::pair<uint16_t, std::vector<uint16_t>>>>> ligatures_;
  std::map<uint16_t, std::pair<size_t, size_t>> bitmaps_;  // glyph -> PNG offset, length in bytes_
  int ppem_ = 0;
};

struct EmojiOptions {
  std::string font;           // empty = default_emoji_font()
  std::string test_file;      // empty = default_emoji_test()
  int image_size = 64;        // output side in pixels (8..136)
  std::string split = "all";  // all | train | test (test = every 10th emoji, in emoji-test order)
};

// The rendered emoji: uint8 [N, 3, S, S] on white, labels = subgroup ids, class_names = the
// subgroups with at least one rendered emoji (sorted), names = emoji names. Each emoji appears
// once (the first fully-qualified sequence that reaches a glyph). Decoded sets are kept in memory
// for the life of the process, so repeated loads are cheap.
Dataset load_emoji(const EmojiOptions& opt = {});

// Converts uint8 [N, C, H, W] images to float in [-1, 1].
torch::Tensor images_to_float(const torch::Tensor& u8);

}  // namespace diffuse
