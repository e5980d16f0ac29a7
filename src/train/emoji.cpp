#include "train/emoji.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <mutex>
#include <set>
#include <sstream>

#include "core/atomic_file.h"
#include "core/error.h"
#include "core/image.h"
#include "core/parallel.h"

namespace fs = std::filesystem;

namespace diffuse {

std::string default_emoji_font() {
  const char* env = std::getenv("DIFFUSE_EMOJI_FONT");
  return env && *env ? env : "/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf";
}

std::string default_emoji_test() {
  const char* env = std::getenv("DIFFUSE_EMOJI_TEST");
  return env && *env ? env : "/usr/share/unicode/emoji/emoji-test.txt";
}

// ---------------------------------------------------------------------------------------------
// emoji-test.txt

std::vector<EmojiEntry> read_emoji_test(const std::string& path) {
  if (!fs::is_regular_file(path))
    throw Error(path + ": emoji list not found (install the Debian package unicode-data)");
  std::ifstream f(path);
  if (!f) throw Error(path + ": cannot open the emoji list");
  std::vector<EmojiEntry> out;
  std::string line, group, subgroup;
  int lineno = 0;
  auto trim = [](std::string s) {
    size_t a = s.find_first_not_of(" \t\r"), b = s.find_last_not_of(" \t\r");
    return a == std::string::npos ? std::string() : s.substr(a, b - a + 1);
  };
  while (std::getline(f, line)) {
    ++lineno;
    if (line.rfind("# group:", 0) == 0) {
      group = trim(line.substr(8));
      continue;
    }
    if (line.rfind("# subgroup:", 0) == 0) {
      subgroup = trim(line.substr(11));
      continue;
    }
    if (line.empty() || line[0] == '#') continue;
    size_t semi = line.find(';'), hash = line.find('#');
    if (semi == std::string::npos || hash == std::string::npos || hash < semi)
      throw Error(path + ":" + std::to_string(lineno) + ": expected 'CODEPOINTS ; status # emoji Ex.y name'");
    EmojiEntry e;
    std::istringstream cps(line.substr(0, semi));
    std::string hex;
    while (cps >> hex) {
      char* end = nullptr;
      unsigned long v = std::strtoul(hex.c_str(), &end, 16);
      if (*end != '\0' || v > 0x10FFFF)
        throw Error(path + ":" + std::to_string(lineno) + ": bad code point '" + hex + "'");
      e.codepoints.push_back(static_cast<uint32_t>(v));
    }
    if (e.codepoints.empty()) throw Error(path + ":" + std::to_string(lineno) + ": no code points");
    e.fully_qualified = trim(line.substr(semi + 1, hash - semi - 1)) == "fully-qualified";
    // Comment: "<emoji> E<version> <name>".
    std::string comment = line.substr(hash + 1);
    size_t ev = comment.find(" E");
    while (ev != std::string::npos &&
           !(ev + 2 < comment.size() && std::isdigit(static_cast<unsigned char>(comment[ev + 2]))))
      ev = comment.find(" E", ev + 1);
    if (ev != std::string::npos) {
      size_t sp = comment.find(' ', ev + 2);
      e.name = sp == std::string::npos ? std::string() : trim(comment.substr(sp + 1));
    }
    e.group = group;
    e.subgroup = subgroup;
    out.push_back(std::move(e));
  }
  if (out.empty()) throw Error(path + ": no emoji entries (is this unicode-data's emoji-test.txt?)");
  return out;
}

// ---------------------------------------------------------------------------------------------
// sfnt reading

namespace {

// Bounds-checked big-endian reads from the font bytes.
struct Reader {
  const std::string& b;
  const std::string& path;
  void need(size_t off, size_t n) const {
    if (off > b.size() || b.size() - off < n)
      throw Error(path + ": corrupt font (read of " + std::to_string(n) + " bytes at offset " + std::to_string(off) +
                  " past the end of the file)");
  }
  uint8_t u8(size_t off) const {
    need(off, 1);
    return static_cast<uint8_t>(b[off]);
  }
  uint16_t u16(size_t off) const {
    need(off, 2);
    return static_cast<uint16_t>((static_cast<uint8_t>(b[off]) << 8) | static_cast<uint8_t>(b[off + 1]));
  }
  uint32_t u32(size_t off) const { return (static_cast<uint32_t>(u16(off)) << 16) | u16(off + 2); }
};

using LigatureMap = std::map<uint16_t, std::vector<std::pair<uint16_t, std::vector<uint16_t>>>>;

// Coverage table -> glyph ids in coverage order.
std::vector<uint16_t> read_coverage(const Reader& r, size_t off) {
  std::vector<uint16_t> glyphs;
  uint16_t format = r.u16(off);
  if (format == 1) {
    uint16_t n = r.u16(off + 2);
    for (uint16_t i = 0; i < n; ++i) glyphs.push_back(r.u16(off + 4 + 2 * i));
  } else if (format == 2) {
    uint16_t n = r.u16(off + 2);
    for (uint16_t i = 0; i < n; ++i) {
      size_t rec = off + 4 + 6 * size_t{i};
      uint16_t start = r.u16(rec), end = r.u16(rec + 2);
      for (uint32_t g = start; g <= end; ++g) glyphs.push_back(static_cast<uint16_t>(g));
    }
  } else {
    throw Error(r.path + ": GSUB coverage format " + std::to_string(format) + " is not supported");
  }
  return glyphs;
}

// LigatureSubstFormat1 subtable at `off` into `map`.
void read_ligature_subtable(const Reader& r, size_t off, LigatureMap& map) {
  if (r.u16(off) != 1) return;
  auto coverage = read_coverage(r, off + r.u16(off + 2));
  uint16_t sets = r.u16(off + 4);
  for (uint16_t s = 0; s < sets && s < coverage.size(); ++s) {
    size_t set = off + r.u16(off + 6 + 2 * size_t{s});
    uint16_t count = r.u16(set);
    auto& dst = map[coverage[s]];
    for (uint16_t l = 0; l < count; ++l) {
      size_t lig = set + r.u16(set + 2 + 2 * size_t{l});
      uint16_t out = r.u16(lig), comps = r.u16(lig + 2);
      std::vector<uint16_t> rest;
      for (uint16_t c = 1; c < comps; ++c) rest.push_back(r.u16(lig + 4 + 2 * (size_t{c} - 1)));
      dst.emplace_back(out, std::move(rest));
    }
  }
}

}  // namespace

EmojiFont::EmojiFont(const std::string& path) : path_(path) {
  if (!fs::is_regular_file(path))
    throw Error(path + ": emoji font not found (install the Debian package fonts-noto-color-emoji)");
  bytes_ = read_file(path);
  Reader r{bytes_, path_};
  uint32_t version = r.u32(0);
  if (version != 0x00010000 && version != 0x74727565 /* 'true' */)
    throw Error(path + ": not a TrueType/OpenType font (sfnt version " + std::to_string(version) + ")");
  uint16_t ntables = r.u16(4);
  std::map<std::string, std::pair<size_t, size_t>> tables;  // tag -> offset, length
  for (uint16_t i = 0; i < ntables; ++i) {
    size_t rec = 12 + 16 * size_t{i};
    r.need(rec, 16);
    std::string tag = bytes_.substr(rec, 4);
    size_t off = r.u32(rec + 8), len = r.u32(rec + 12);
    r.need(off, len);
    tables[tag] = {off, len};
  }
  for (const char* t : {"cmap", "CBLC", "CBDT"})
    if (!tables.count(t))
      throw Error(path + ": font has no " + std::string(t) + " table (not a CBDT colour-bitmap emoji font)");

  // cmap: prefer a format 12 subtable (full Unicode), else format 4 (BMP).
  {
    size_t cmap = tables["cmap"].first;
    uint16_t n = r.u16(cmap + 2);
    size_t best = 0;
    int best_format = 0;
    for (uint16_t i = 0; i < n; ++i) {
      size_t sub = cmap + r.u32(cmap + 4 + 8 * size_t{i} + 4);
      uint16_t format = r.u16(sub);
      if ((format == 12 && best_format != 12) || (format == 4 && best_format == 0)) {
        best = sub;
        best_format = format;
      }
    }
    if (best_format == 12) {
      uint32_t groups = r.u32(best + 12);
      for (uint32_t g = 0; g < groups; ++g) {
        size_t rec = best + 16 + 12 * size_t{g};
        uint32_t start = r.u32(rec), end = r.u32(rec + 4), gid = r.u32(rec + 8);
        if (end < start || end > 0x10FFFF) throw Error(path + ": corrupt cmap format 12 group");
        for (uint32_t c = start; c <= end; ++c) cmap_[c] = static_cast<uint16_t>(gid + (c - start));
      }
    } else if (best_format == 4) {
      uint16_t segs = r.u16(best + 6) / 2;
      size_t ends = best + 14, starts = ends + 2 * size_t{segs} + 2, deltas = starts + 2 * size_t{segs},
             ranges = deltas + 2 * size_t{segs};
      for (uint16_t s = 0; s < segs; ++s) {
        uint16_t end = r.u16(ends + 2 * size_t{s}), start = r.u16(starts + 2 * size_t{s});
        uint16_t delta = r.u16(deltas + 2 * size_t{s}), range = r.u16(ranges + 2 * size_t{s});
        for (uint32_t c = start; c <= end && c != 0xFFFF; ++c) {
          uint16_t gid;
          if (range == 0) {
            gid = static_cast<uint16_t>(c + delta);
          } else {
            size_t at = ranges + 2 * size_t{s} + range + 2 * (c - start);
            gid = r.u16(at);
            if (gid != 0) gid = static_cast<uint16_t>(gid + delta);
          }
          if (gid != 0) cmap_[c] = gid;
        }
      }
    } else {
      throw Error(path + ": no cmap subtable of format 12 or 4");
    }
  }

  // CBLC: the strike with the largest ppem; index subtables of formats 1 and 3; CBDT image
  // formats 17 (small metrics), 18 (big metrics) and 19 (no metrics), each holding a PNG.
  {
    size_t cblc = tables["CBLC"].first, cbdt = tables["CBDT"].first;
    uint32_t nsizes = r.u32(cblc + 4);
    if (nsizes == 0) throw Error(path + ": CBLC table has no bitmap strikes");
    size_t strike = 0;
    for (uint32_t s = 0; s < nsizes; ++s) {
      size_t rec = cblc + 8 + 48 * size_t{s};
      int ppem = r.u8(rec + 44);
      if (ppem > ppem_) {
        ppem_ = ppem;
        strike = rec;
      }
    }
    size_t array = cblc + r.u32(strike);
    uint32_t nsub = r.u32(strike + 8);
    for (uint32_t i = 0; i < nsub; ++i) {
      size_t rec = array + 8 * size_t{i};
      uint16_t first = r.u16(rec), last = r.u16(rec + 2);
      size_t sub = array + r.u32(rec + 4);
      uint16_t index_format = r.u16(sub), image_format = r.u16(sub + 2);
      size_t data = cbdt + r.u32(sub + 4);
      if (image_format != 17 && image_format != 18 && image_format != 19) continue;  // not PNG data
      if (index_format != 1 && index_format != 3) continue;  // formats 2, 4, 5 are not used by Noto
      for (uint32_t g = first; g <= last; ++g) {
        size_t k = g - first;
        size_t a = index_format == 1 ? r.u32(sub + 8 + 4 * k) : r.u16(sub + 8 + 2 * k);
        size_t b = index_format == 1 ? r.u32(sub + 8 + 4 * (k + 1)) : r.u16(sub + 8 + 2 * (k + 1));
        if (b <= a) continue;  // no bitmap for this glyph
        size_t at = data + a;
        size_t header = image_format == 17 ? 5 : image_format == 18 ? 8 : 0;
        size_t len = r.u32(at + header);
        size_t png = at + header + 4;
        r.need(png, len);
        if (header + 4 + len > b - a) throw Error(path + ": corrupt CBDT entry for glyph " + std::to_string(g));
        bitmaps_[static_cast<uint16_t>(g)] = {png, len};
      }
    }
    if (bitmaps_.empty()) throw Error(path + ": no PNG bitmaps in its CBDT table");
  }

  // GSUB: every ligature lookup (type 4, also behind type 7 extensions), in lookup-list order.
  if (tables.count("GSUB")) {
    size_t gsub = tables["GSUB"].first;
    size_t list = gsub + r.u16(gsub + 8);
    uint16_t nlookups = r.u16(list);
    for (uint16_t i = 0; i < nlookups; ++i) {
      size_t lookup = list + r.u16(list + 2 + 2 * size_t{i});
      uint16_t type = r.u16(lookup), nsub = r.u16(lookup + 4);
      LigatureMap map;
      for (uint16_t s = 0; s < nsub; ++s) {
        size_t sub = lookup + r.u16(lookup + 6 + 2 * size_t{s});
        if (type == 7 && r.u16(sub) == 1 && r.u16(sub + 2) == 4)
          read_ligature_subtable(r, sub + r.u32(sub + 4), map);
        else if (type == 4)
          read_ligature_subtable(r, sub, map);
      }
      if (!map.empty()) ligatures_.push_back(std::move(map));
    }
  }
}

int EmojiFont::glyph_exact(const std::vector<uint32_t>& cps) const {
  std::vector<uint16_t> seq;
  for (uint32_t c : cps) {
    auto it = cmap_.find(c);
    if (it == cmap_.end()) return -1;
    seq.push_back(it->second);
  }
  for (const auto& lookup : ligatures_) {
    std::vector<uint16_t> out;
    for (size_t i = 0; i < seq.size();) {
      auto it = lookup.find(seq[i]);
      bool matched = false;
      if (it != lookup.end()) {
        for (const auto& [lig, rest] : it->second) {
          if (i + 1 + rest.size() > seq.size()) continue;
          if (!std::equal(rest.begin(), rest.end(), seq.begin() + static_cast<std::ptrdiff_t>(i + 1))) continue;
          out.push_back(lig);
          i += 1 + rest.size();
          matched = true;
          break;
        }
      }
      if (!matched) out.push_back(seq[i++]);
    }
    seq = std::move(out);
  }
  return seq.size() == 1 ? seq[0] : -1;
}

int EmojiFont::glyph(const std::vector<uint32_t>& cps) const {
  int g = glyph_exact(cps);
  if (g >= 0 && bitmaps_.count(static_cast<uint16_t>(g))) return g;
  std::vector<uint32_t> stripped;
  for (uint32_t c : cps)
    if (c != 0xFE0F) stripped.push_back(c);
  if (stripped.size() != cps.size() && !stripped.empty()) {
    g = glyph_exact(stripped);
    if (g >= 0 && bitmaps_.count(static_cast<uint16_t>(g))) return g;
  }
  return -1;
}

std::string EmojiFont::png(int glyph) const {
  auto it = bitmaps_.find(static_cast<uint16_t>(glyph));
  if (glyph < 0 || it == bitmaps_.end()) return {};
  return bytes_.substr(it->second.first, it->second.second);
}

// ---------------------------------------------------------------------------------------------
// Rendering

torch::Tensor images_to_float(const torch::Tensor& u8) { return u8.to(torch::kFloat32).div(127.5).sub(1.0); }

namespace {

// A bitmap on white, padded (white) to a centred square and area-resized to `size`: uint8 [3, size, size].
torch::Tensor render(const std::string& png, const std::string& what, int size) {
  Image img = convert_channels(decode_png(png, what), 3);
  auto x = to_tensor(img);  // [3, h, w] in [-1, 1]
  int64_t h = x.size(1), w = x.size(2), s = std::max(h, w);
  int64_t top = (s - h) / 2, left = (s - w) / 2;
  x = torch::constant_pad_nd(x, {left, s - w - left, top, s - h - top}, 1.0);
  namespace F = torch::nn::functional;
  if (s != size)
    x = F::interpolate(x.unsqueeze(0),
                       F::InterpolateFuncOptions().size(std::vector<int64_t>{size, size}).mode(torch::kArea))
            .squeeze(0);
  return x.add(1).mul(127.5).round().clamp(0, 255).to(torch::kUInt8);
}

Dataset render_all(const std::string& font_path, const std::string& test_path, int size) {
  auto entries = read_emoji_test(test_path);
  EmojiFont font(font_path);
  struct Item {
    int glyph;
    const EmojiEntry* entry;
  };
  std::vector<Item> items;
  std::set<int> seen;
  for (const auto& e : entries) {
    if (!e.fully_qualified) continue;
    int g = font.glyph(e.codepoints);
    if (g < 0 || !seen.insert(g).second) continue;
    items.push_back({g, &e});
  }
  if (items.empty()) throw Error(font_path + ": none of the emoji in " + test_path + " has a bitmap in this font");
  std::set<std::string> subgroups;
  for (const auto& it : items) subgroups.insert(it.entry->subgroup);
  Dataset d;
  d.source = "emoji";
  d.class_names.assign(subgroups.begin(), subgroups.end());
  const int64_t n = static_cast<int64_t>(items.size());
  d.images = torch::empty({n, 3, size, size}, torch::kUInt8);
  std::vector<int64_t> labels(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    const auto& e = *items[static_cast<size_t>(i)].entry;
    labels[static_cast<size_t>(i)] =
        std::lower_bound(d.class_names.begin(), d.class_names.end(), e.subgroup) - d.class_names.begin();
    d.names.push_back(e.name);
  }
  d.labels = torch::tensor(labels, torch::kInt64);
  std::vector<std::string> errors(static_cast<size_t>(n));
  parallel_chunks(n, 16, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const auto& it = items[static_cast<size_t>(i)];
      try {
        d.images[i].copy_(render(font.png(it.glyph), font_path + " glyph " + std::to_string(it.glyph), size));
      } catch (const std::exception& e) {
        errors[static_cast<size_t>(i)] = e.what();
      }
    }
  });
  for (const auto& e : errors)
    if (!e.empty()) throw Error(e);
  return d;
}

}  // namespace

Dataset load_emoji(const EmojiOptions& opt) {
  if (opt.image_size < 8 || opt.image_size > 136)
    throw Error("emoji: image size " + std::to_string(opt.image_size) + " out of range (8 to 136 pixels)");
  if (opt.split != "all" && opt.split != "train" && opt.split != "test")
    throw Error("emoji: split '" + opt.split + "': expected all, train or test");
  const std::string font = opt.font.empty() ? default_emoji_font() : opt.font;
  const std::string test = opt.test_file.empty() ? default_emoji_test() : opt.test_file;

  static std::mutex mu;
  static std::map<std::string, std::shared_ptr<const Dataset>> cache;
  const std::string key = font + "\n" + test + "\n" + std::to_string(opt.image_size);
  std::shared_ptr<const Dataset> all;
  {
    std::lock_guard<std::mutex> lock(mu);
    auto it = cache.find(key);
    if (it != cache.end()) all = it->second;
  }
  if (!all) {
    all = std::make_shared<const Dataset>(render_all(font, test, opt.image_size));
    std::lock_guard<std::mutex> lock(mu);
    cache.emplace(key, all);
  }
  Dataset d = *all;
  d.images = all->images.clone();
  d.labels = all->labels.clone();
  if (opt.split == "all") return d;
  // Held out: every 10th emoji in emoji-test order (indices 9, 19, ...).
  std::vector<int64_t> keep;
  std::vector<std::string> names;
  for (int64_t i = 0; i < all->size(); ++i) {
    bool test_item = i % 10 == 9;
    if (test_item == (opt.split == "test")) {
      keep.push_back(i);
      names.push_back(all->names[static_cast<size_t>(i)]);
    }
  }
  auto idx = torch::tensor(keep, torch::kInt64);
  d.images = all->images.index_select(0, idx);
  d.labels = all->labels.index_select(0, idx);
  d.names = std::move(names);
  return d;
}

}  // namespace diffuse
