#include "models/clip_text_fix.h"

#include <algorithm>
#include <cctype>
#include <cstdint>
#include <iterator>
#include <utility>

#include "models/clip_unicode_tables.h"

namespace diffuse::clip_text {

namespace {

using namespace clip_unicode;

template <size_t N>
bool in_ranges(const Range (&table)[N], char32_t c) {
  auto it = std::upper_bound(std::begin(table), std::end(table), static_cast<uint32_t>(c),
                             [](uint32_t v, const Range& r) { return v < r.lo; });
  return it != std::begin(table) && static_cast<uint32_t>(c) <= std::prev(it)->hi;
}

uint32_t combining_class(char32_t c) {
  auto it = std::upper_bound(std::begin(kCombiningClass), std::end(kCombiningClass), static_cast<uint32_t>(c),
                             [](uint32_t v, const Ccc& r) { return v < r.lo; });
  if (it == std::begin(kCombiningClass)) return 0;
  --it;
  return static_cast<uint32_t>(c) <= it->hi ? it->ccc : 0;
}

char32_t compose_pair(char32_t a, char32_t b) {
  // Hangul: L + V -> LV, LV + T -> LVT.
  constexpr char32_t SBase = 0xAC00, LBase = 0x1100, VBase = 0x1161, TBase = 0x11A7;
  constexpr int LCount = 19, VCount = 21, TCount = 28, NCount = VCount * TCount, SCount = LCount * NCount;
  if (a >= LBase && a < LBase + LCount && b >= VBase && b < VBase + VCount)
    return SBase + ((a - LBase) * VCount + (b - VBase)) * TCount;
  if (a >= SBase && a < SBase + SCount && (a - SBase) % TCount == 0 && b > TBase && b < TBase + TCount)
    return a + (b - TBase);
  auto it = std::lower_bound(std::begin(kCompose), std::end(kCompose), std::make_pair(a, b),
                             [](const Compose& e, const std::pair<char32_t, char32_t>& k) {
                               return e.first != k.first ? e.first < k.first : e.second < k.second;
                             });
  if (it != std::end(kCompose) && it->first == a && it->second == b) return it->composed;
  return 0;
}

char32_t simple_lower(char32_t c) {
  if (c < 0x80) return (c >= 'A' && c <= 'Z') ? c + 32 : c;
  auto it = std::upper_bound(std::begin(kLower), std::end(kLower), static_cast<uint32_t>(c),
                             [](uint32_t v, const LowerRun& r) { return v < r.start; });
  if (it == std::begin(kLower)) return c;
  --it;
  const uint32_t off = static_cast<uint32_t>(c) - it->start;
  if (off % it->stride == 0 && off / it->stride < it->count)
    return static_cast<char32_t>(static_cast<int64_t>(c) + it->delta);
  return c;
}

// Named entities ftfy unescapes that prompts plausibly contain (HTML5 names; ftfy also accepts the
// all-caps spelling of lowercase names).
const std::pair<const char*, char32_t> kEntities[] = {
    {"amp", '&'},      {"lt", '<'},       {"gt", '>'},        {"quot", '"'},      {"apos", '\''},     {"nbsp", 0xA0},
    {"copy", 0xA9},    {"reg", 0xAE},     {"trade", 0x2122},  {"hellip", 0x2026}, {"mdash", 0x2014},  {"ndash", 0x2013},
    {"lsquo", 0x2018}, {"rsquo", 0x2019}, {"ldquo", 0x201C},  {"rdquo", 0x201D},  {"sbquo", 0x201A},  {"bdquo", 0x201E},
    {"laquo", 0xAB},   {"raquo", 0xBB},   {"deg", 0xB0},      {"times", 0xD7},    {"divide", 0xF7},   {"middot", 0xB7},
    {"bull", 0x2022},  {"euro", 0x20AC},  {"pound", 0xA3},    {"yen", 0xA5},      {"cent", 0xA2},     {"sect", 0xA7},
    {"para", 0xB6},    {"plusmn", 0xB1},  {"frac12", 0xBD},   {"frac14", 0xBC},   {"frac34", 0xBE},   {"iexcl", 0xA1},
    {"iquest", 0xBF},  {"micro", 0xB5},   {"shy", 0xAD},      {"eacute", 0xE9},   {"egrave", 0xE8},   {"agrave", 0xE0},
    {"aacute", 0xE1},  {"ccedil", 0xE7},  {"ntilde", 0xF1},   {"ouml", 0xF6},     {"uuml", 0xFC},     {"auml", 0xE4},
    {"szlig", 0xDF},   {"Eacute", 0xC9},  {"hearts", 0x2665}, {"star", 0x2606},   {"larr", 0x2190},   {"rarr", 0x2192},
    {"uarr", 0x2191},  {"darr", 0x2193},  {"infin", 0x221E},  {"ne", 0x2260},     {"le", 0x2264},     {"ge", 0x2265},
    {"sup2", 0xB2},    {"sup3", 0xB3},    {"ensp", 0x2002},   {"emsp", 0x2003},   {"thinsp", 0x2009}, {"zwj", 0x200D},
    {"zwnj", 0x200C},
};

bool is_alnum_ascii(char32_t c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); }

// ftfy unescape_html: "&#?[0-9A-Za-z]{1,24};".
std::u32string unescape_html(const std::u32string& s) {
  std::u32string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size();) {
    if (s[i] != '&') {
      out += s[i++];
      continue;
    }
    size_t j = i + 1;
    const bool numeric = j < s.size() && s[j] == '#';
    if (numeric) ++j;
    size_t k = j;
    while (k < s.size() && k - j < 24 && is_alnum_ascii(s[k])) ++k;
    if (k == j || k >= s.size() || s[k] != ';') {
      out += s[i++];
      continue;
    }
    std::string name;
    for (size_t p = j; p < k; ++p) name += static_cast<char>(s[p]);
    char32_t rep = 0;
    if (numeric) {
      // html.unescape: &#NNN; or &#xHHH;; invalid code points and surrogates are not replaced.
      uint64_t v = 0;
      bool ok = true;
      if (name[0] == 'x' || name[0] == 'X') {
        ok = name.size() > 1;
        for (size_t p = 1; p < name.size() && ok; ++p) {
          const char c = name[p];
          const int d = (c >= '0' && c <= '9')   ? c - '0'
                        : (c >= 'a' && c <= 'f') ? c - 'a' + 10
                        : (c >= 'A' && c <= 'F') ? c - 'A' + 10
                                                 : -1;
          ok = d >= 0;
          v = std::min<uint64_t>(v * 16 + static_cast<uint64_t>(std::max(d, 0)), 0x7FFFFFFF);
        }
      } else {
        for (char c : name) {
          ok = ok && c >= '0' && c <= '9';
          if (ok) v = std::min<uint64_t>(v * 10 + static_cast<uint64_t>(c - '0'), 0x7FFFFFFF);
        }
      }
      if (ok && v > 0 && v < 0x110000 && !(v >= 0xD800 && v <= 0xDFFF)) rep = static_cast<char32_t>(v);
    } else {
      for (const auto& [n, c] : kEntities) {
        std::string upper(n);
        bool lower_name = true;
        for (char& ch : upper) {
          lower_name = lower_name && !(ch >= 'A' && ch <= 'Z');
          ch = static_cast<char>(std::toupper(static_cast<unsigned char>(ch)));
        }
        // ftfy also accepts "&NAME;" for lowercase names, as char.upper() (kept only for non-letters).
        if (name == n || (lower_name && name == upper && !is_letter(c))) {
          rep = c;
          break;
        }
      }
    }
    if (!rep) {
      out += s[i++];
      continue;
    }
    out += rep;
    i = k + 1;
  }
  return out;
}

// ESC [ (digits|;)* letter
std::u32string remove_terminal_escapes(const std::u32string& s) {
  std::u32string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == 0x1B && i + 1 < s.size() && s[i + 1] == '[') {
      size_t k = i + 2;
      while (k < s.size() && ((s[k] >= '0' && s[k] <= '9') || s[k] == ';')) ++k;
      if (k < s.size() && ((s[k] >= 'a' && s[k] <= 'z') || (s[k] >= 'A' && s[k] <= 'Z'))) {
        i = k;
        continue;
      }
    }
    out += s[i];
  }
  return out;
}

// windows-1252 bytes 0x80..0x9F (0 = undefined: sloppy codec maps them to U+0080 + n).
const char16_t kCp1252High[32] = {0x20AC, 0,      0x201A, 0x0192, 0x201E, 0x2026, 0x2020, 0x2021,
                                  0x02C6, 0x2030, 0x0160, 0x2039, 0x0152, 0,      0x017D, 0,
                                  0,      0x2018, 0x2019, 0x201C, 0x201D, 0x2022, 0x2013, 0x2014,
                                  0x02DC, 0x2122, 0x0161, 0x203A, 0x0153, 0,      0x017E, 0x0178};

// Whether `b` is valid UTF-8; `multibyte`: it holds a sequence that looks like mojibake.
bool valid_utf8(const std::string& b, bool& multibyte) {
  multibyte = false;
  for (size_t i = 0; i < b.size();) {
    const auto c = static_cast<unsigned char>(b[i]);
    size_t n = c < 0x80                   ? 1
               : (c >= 0xC2 && c <= 0xDF) ? 2
               : (c >= 0xE0 && c <= 0xEF) ? 3
               : (c >= 0xF0 && c <= 0xF4) ? 4
                                          : 0;
    if (n == 0 || i + n > b.size()) return false;
    for (size_t k = 1; k < n; ++k)
      if ((static_cast<unsigned char>(b[i + k]) & 0xC0) != 0x80) return false;
    if (n == 3) {
      const auto c1 = static_cast<unsigned char>(b[i + 1]);
      if ((c == 0xE0 && c1 < 0xA0) || (c == 0xED && c1 >= 0xA0)) return false;
    }
    if (n == 4) {
      const auto c1 = static_cast<unsigned char>(b[i + 1]);
      if ((c == 0xF0 && c1 < 0x90) || (c == 0xF4 && c1 >= 0x90)) return false;
    }
    // Lead bytes of typical mojibake (Â Ã Å: Latin, Î Ï: Greek, Ð Ñ: Cyrillic, × Ø Ù: Hebrew and
    // Arabic, 3- and 4-byte sequences: punctuation, CJK, emoji). A lone "É—" (C9 97) is more likely
    // meant than mojibake and is left alone.
    if (n > 2 || c == 0xC2 || c == 0xC3 || c == 0xC5 || c == 0xCE || c == 0xCF || (c >= 0xD0 && c <= 0xD1) ||
        (c >= 0xD7 && c <= 0xD9))
      multibyte = true;
    i += n;
  }
  return true;
}

// The byte a character stands for in sloppy windows-1252 (latin-1 for U+0080..U+009F), or -1.
int mojibake_byte(char32_t c) {
  if (c < 0x80 || (c >= 0xA0 && c <= 0xFF)) return static_cast<int>(c);
  if (c >= 0x80 && c <= 0x9F) return static_cast<int>(c);
  for (int k = 0; k < 32; ++k)
    if (kCp1252High[k] == c) return 0x80 + k;
  return -1;
}

// Mojibake inside otherwise correct text (ftfy's decode_inconsistent_utf8): each run of characters
// whose bytes form one UTF-8 sequence with a typical mojibake lead byte is decoded on its own.
std::u32string fix_inline_mojibake(const std::u32string& s) {
  std::u32string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size();) {
    const int b0 = s[i] >= 0xC2 ? mojibake_byte(s[i]) : -1;
    size_t n = 0;
    if (b0 >= 0xE0 && b0 <= 0xEF)
      n = 3;
    else if (b0 >= 0xF0 && b0 <= 0xF4)
      n = 4;
    else if (b0 >= 0xC2 && b0 <= 0xDF)
      n = 2;
    if (n > 0 && i + n <= s.size()) {
      std::string bytes(1, static_cast<char>(b0));
      for (size_t k = 1; k < n; ++k) {
        const int b = mojibake_byte(s[i + k]);
        if (b < 0x80 || b > 0xBF) break;
        bytes += static_cast<char>(b);
      }
      bool typical = false;
      if (bytes.size() == n && valid_utf8(bytes, typical) && typical) {
        out += utf8_decode(bytes);
        i += n;
        continue;
      }
    }
    out += s[i++];
  }
  return out;
}

// Whole-line mojibake repair: UTF-8 that was decoded as latin-1 / windows-1252.
std::u32string fix_encoding(const std::u32string& s) {
  bool non_ascii = false;
  for (char32_t c : s) non_ascii = non_ascii || c >= 0x80;
  if (!non_ascii) return s;
  // latin-1 or sloppy windows-1252 bytes (a line mixing both is accepted too).
  std::string bytes;
  for (char32_t c : s) {
    const int b = mojibake_byte(c);
    if (b < 0) return fix_inline_mojibake(s);
    bytes += static_cast<char>(b);
  }
  bool multibyte = false;
  if (valid_utf8(bytes, multibyte) && multibyte) return utf8_decode(bytes);
  return fix_inline_mojibake(s);
}

char32_t ligature(char32_t c, std::u32string& out) {
  switch (c) {
    case 0x0132:
      out += U"IJ";
      return 1;
    case 0x0133:
      out += U"ij";
      return 1;
    case 0x0149:
      out += U"\u02BCn";
      return 1;
    case 0x01F1:
      out += U"DZ";
      return 1;
    case 0x01F2:
      out += U"Dz";
      return 1;
    case 0x01F3:
      out += U"dz";
      return 1;
    case 0x01C4:
      out += U"D\u017D";
      return 1;
    case 0x01C5:
      out += U"D\u017E";
      return 1;
    case 0x01C6:
      out += U"d\u017E";
      return 1;
    case 0x01C7:
      out += U"LJ";
      return 1;
    case 0x01C8:
      out += U"Lj";
      return 1;
    case 0x01C9:
      out += U"lj";
      return 1;
    case 0x01CA:
      out += U"NJ";
      return 1;
    case 0x01CB:
      out += U"Nj";
      return 1;
    case 0x01CC:
      out += U"nj";
      return 1;
    case 0xFB00:
      out += U"ff";
      return 1;
    case 0xFB01:
      out += U"fi";
      return 1;
    case 0xFB02:
      out += U"fl";
      return 1;
    case 0xFB03:
      out += U"ffi";
      return 1;
    case 0xFB04:
      out += U"ffl";
      return 1;
    case 0xFB05:
      out += U"\u017Ft";
      return 1;
    case 0xFB06:
      out += U"st";
      return 1;
    default:
      return 0;
  }
}

bool width_map(char32_t c, std::u32string& out) {
  if (c != 0x3000 && (c < 0xFF01 || c > 0xFFEF)) return false;
  auto it = std::lower_bound(std::begin(kWidth), std::end(kWidth), static_cast<uint32_t>(c),
                             [](const Width& w, uint32_t v) { return w.cp < v; });
  if (it == std::end(kWidth) || it->cp != c) return false;
  out += static_cast<char32_t>(it->a);
  if (it->b) out += static_cast<char32_t>(it->b);
  return true;
}

bool control_char(char32_t c) {
  return c <= 0x08 || c == 0x0B || (c >= 0x0E && c <= 0x1F) || c == 0x7F || (c >= 0x206A && c <= 0x206F) ||
         c == 0xFEFF || (c >= 0xFFF9 && c <= 0xFFFC);
}

// The per-character fixers, in ftfy's order after fix_encoding.
std::u32string fix_chars(const std::u32string& s) {
  std::u32string a;
  a.reserve(s.size());
  for (char32_t c : s) {  // fix_c1_controls (sloppy windows-1252)
    if (c >= 0x80 && c <= 0x9F && kCp1252High[c - 0x80])
      a += static_cast<char32_t>(kCp1252High[c - 0x80]);
    else
      a += c;
  }
  std::u32string b;
  for (char32_t c : a) {  // fix_latin_ligatures, fix_character_width, uncurl_quotes
    if (ligature(c, b) || width_map(c, b)) continue;
    if (c == 0x02BC || (c >= 0x2018 && c <= 0x201B))
      b += U'\'';
    else if (c >= 0x201C && c <= 0x201F)
      b += U'"';
    else
      b += c;
  }
  std::u32string d;
  for (size_t i = 0; i < b.size(); ++i) {  // fix_line_breaks
    const char32_t c = b[i];
    if (c == '\r' && i + 1 < b.size() && b[i + 1] == '\n') continue;
    d += (c == '\r' || c == 0x2028 || c == 0x2029 || c == 0x85) ? U'\n' : c;
  }
  std::u32string e;
  for (char32_t c : remove_terminal_escapes(d))  // remove_control_chars
    if (!control_char(c)) e += c;
  return nfc(e);
}

}  // namespace

std::u32string utf8_decode(const std::string& s) {
  std::u32string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size();) {
    const auto c = static_cast<unsigned char>(s[i]);
    size_t n = c < 0x80                   ? 1
               : (c >= 0xC2 && c <= 0xDF) ? 2
               : (c >= 0xE0 && c <= 0xEF) ? 3
               : (c >= 0xF0 && c <= 0xF4) ? 4
                                          : 0;
    bool ok = n > 0 && i + n <= s.size();
    for (size_t k = 1; ok && k < n; ++k) ok = (static_cast<unsigned char>(s[i + k]) & 0xC0) == 0x80;
    char32_t cp = 0;
    if (ok) {
      cp = n == 1 ? c : n == 2 ? (c & 0x1F) : n == 3 ? (c & 0x0F) : (c & 0x07);
      for (size_t k = 1; k < n; ++k) cp = (cp << 6) | (static_cast<unsigned char>(s[i + k]) & 0x3F);
      if ((n == 3 && cp < 0x800) || (n == 4 && (cp < 0x10000 || cp > 0x10FFFF)) || (cp >= 0xD800 && cp <= 0xDFFF))
        ok = false;
    }
    if (!ok) {
      out += static_cast<char32_t>(0xFFFD);
      ++i;
      continue;
    }
    out += cp;
    i += n;
  }
  return out;
}

std::string utf8_encode(const std::u32string& s) {
  std::string out;
  out.reserve(s.size());
  for (char32_t c : s) {
    if (c < 0x80) {
      out += static_cast<char>(c);
    } else if (c < 0x800) {
      out += static_cast<char>(0xC0 | (c >> 6));
      out += static_cast<char>(0x80 | (c & 0x3F));
    } else if (c < 0x10000) {
      out += static_cast<char>(0xE0 | (c >> 12));
      out += static_cast<char>(0x80 | ((c >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (c & 0x3F));
    } else {
      out += static_cast<char>(0xF0 | (c >> 18));
      out += static_cast<char>(0x80 | ((c >> 12) & 0x3F));
      out += static_cast<char>(0x80 | ((c >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (c & 0x3F));
    }
  }
  return out;
}

bool is_letter(char32_t c) {
  if (c < 0x80) return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
  return in_ranges(kLetters, c);
}
bool is_number(char32_t c) {
  if (c < 0x80) return c >= '0' && c <= '9';
  return in_ranges(kNumbers, c);
}
bool is_space(char32_t c) { return in_ranges(kSpace, c); }

std::u32string nfc(const std::u32string& s) {
  std::u32string out;
  out.reserve(s.size());
  size_t starter = std::u32string::npos;
  uint32_t last_ccc = 0;
  for (char32_t c : s) {
    const uint32_t ccc = combining_class(c);
    if (starter != std::u32string::npos) {
      const bool adjacent = starter + 1 == out.size();
      if (adjacent || (last_ccc != 0 && last_ccc < ccc)) {
        if (char32_t comp = compose_pair(out[starter], c)) {
          out[starter] = comp;
          continue;
        }
      }
    }
    if (ccc == 0) {
      starter = out.size();
      last_ccc = 0;
    } else {
      last_ccc = ccc;
    }
    out += c;
  }
  return out;
}

std::u32string fix_text(const std::u32string& text) {
  std::u32string out;
  bool unescape = true;
  for (size_t pos = 0; pos < text.size();) {
    size_t brk = text.find(U'\n', pos);
    brk = brk == std::u32string::npos ? text.size() : brk + 1;
    std::u32string seg = text.substr(pos, brk - pos);
    pos = brk;
    if (seg.find(U'<') != std::u32string::npos) unescape = false;  // unescape_html="auto"
    for (int iter = 0; iter < 8; ++iter) {
      const std::u32string orig = seg;
      if (unescape) seg = unescape_html(seg);
      seg = fix_chars(fix_encoding(remove_terminal_escapes(seg)));
      if (seg == orig) break;
    }
    out += seg;
  }
  return out;
}

std::u32string whitespace_clean(const std::u32string& text) {
  std::u32string out;
  bool pending = false;
  for (char32_t c : text) {
    if (is_space(c)) {
      pending = true;
      continue;
    }
    if (pending && !out.empty()) out += U' ';
    pending = false;
    out += c;
  }
  return out;
}

std::u32string lower(const std::u32string& text) {
  std::u32string out;
  out.reserve(text.size());
  for (size_t i = 0; i < text.size(); ++i) {
    const char32_t c = text[i];
    if (c == 0x130) {
      out += U"i\u0307";
    } else if (c == 0x3A3) {
      // Final_Sigma: preceded by a cased letter and not followed by one (case-ignorable marks skipped).
      auto cased = [](char32_t x) { return in_ranges(kCased, x); };
      auto ignorable = [](char32_t x) { return in_ranges(kCaseIgnorable, x); };
      bool before = false, after = false;
      for (size_t k = i; k-- > 0;) {
        if (ignorable(text[k])) continue;
        before = cased(text[k]);
        break;
      }
      for (size_t k = i + 1; k < text.size(); ++k) {
        if (ignorable(text[k])) continue;
        after = cased(text[k]);
        break;
      }
      out += (before && !after) ? char32_t{0x3C2} : char32_t{0x3C3};
    } else {
      out += simple_lower(c);
    }
  }
  return out;
}

}  // namespace diffuse::clip_text
