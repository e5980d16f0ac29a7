#include "models/clip_tokenizer.h"

#include <unistd.h>
#include <zlib.h>

#include <climits>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <limits>
#include <mutex>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "core/atomic_file.h"
#include "core/error.h"
#include "models/clip_text_fix.h"

namespace diffuse {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

constexpr const char* kBos = "<|startoftext|>";
constexpr const char* kEos = "<|endoftext|>";
// CLIP uses the first 49152 - 256 - 2 merges of its list (openai/CLIP and transformers alike).
constexpr size_t kNumMerges = 49152 - 256 - 2;

// GPT-2 / CLIP bytes_to_unicode: printable bytes map to themselves, the rest to U+0100 + n; in
// the order that defines the first 256 vocabulary entries.
std::vector<std::pair<int, char32_t>> bytes_to_unicode() {
  std::vector<std::pair<int, char32_t>> out;
  std::vector<bool> seen(256, false);
  auto add_range = [&](int lo, int hi) {
    for (int b = lo; b <= hi; ++b) {
      out.emplace_back(b, static_cast<char32_t>(b));
      seen[b] = true;
    }
  };
  add_range('!', '~');
  add_range(0xA1, 0xAC);
  add_range(0xAE, 0xFF);
  int n = 0;
  for (int b = 0; b < 256; ++b)
    if (!seen[b]) out.emplace_back(b, static_cast<char32_t>(256 + n++));
  return out;
}

const std::vector<std::string>& byte_encoder() {
  static const std::vector<std::string> table = [] {
    std::vector<std::string> t(256);
    for (const auto& [b, c] : bytes_to_unicode()) t[b] = clip_text::utf8_encode(std::u32string(1, c));
    return t;
  }();
  return table;
}

std::string read_text_file(const std::string& path, const std::string& what) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw Error("CLIP tokenizer: cannot read " + what + " " + path);
  std::ostringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// Reads a possibly gzip-compressed file (zlib passes plain files through), stopping after
// `max_lines` lines where given (CLIP uses the first 48,895 of its vocabulary file's 262,145).
std::string read_maybe_gzip(const std::string& path, size_t max_lines = std::string::npos) {
  if (!fs::exists(path)) throw Error("CLIP tokenizer: BPE vocabulary " + path + " does not exist");
  gzFile g = gzopen(path.c_str(), "rb");
  if (!g) throw Error("CLIP tokenizer: cannot open " + path);
  std::string out;
  char buf[1 << 16];
  size_t lines = 0;
  for (;;) {
    const int n = gzread(g, buf, sizeof buf);
    if (n < 0) {
      int err = 0;
      std::string msg = gzerror(g, &err);
      gzclose(g);
      throw Error("CLIP tokenizer: " + path + ": corrupt gzip data (" + msg + ")");
    }
    if (n == 0) break;
    for (int i = 0; i < n; ++i) {
      if (buf[i] != '\n' || ++lines < max_lines) continue;
      out.append(buf, static_cast<size_t>(i));
      gzclose(g);
      return out;
    }
    out.append(buf, static_cast<size_t>(n));
  }
  gzclose(g);
  return out;
}

std::vector<std::string> split_lines(const std::string& s) {
  std::vector<std::string> lines;
  size_t pos = 0;
  while (pos <= s.size()) {
    size_t e = s.find('\n', pos);
    if (e == std::string::npos) e = s.size();
    lines.push_back(s.substr(pos, e - pos));
    pos = e + 1;
  }
  return lines;
}

// Python's str.split() for the ASCII whitespace a merges line can hold.
std::vector<std::string> split_ws(const std::string& s) {
  std::vector<std::string> parts;
  std::string cur;
  for (char c : s) {
    if (c == ' ' || c == '\t' || c == '\r' || c == '\v' || c == '\f') {
      if (!cur.empty()) parts.push_back(cur);
      cur.clear();
    } else {
      cur += c;
    }
  }
  if (!cur.empty()) parts.push_back(cur);
  return parts;
}

std::vector<std::pair<std::string, std::string>> parse_merges(const std::vector<std::string>& lines, size_t first,
                                                              size_t last, const std::string& path) {
  std::vector<std::pair<std::string, std::string>> merges;
  for (size_t i = first; i < last && i < lines.size(); ++i) {
    auto parts = split_ws(lines[i]);
    if (parts.empty()) continue;
    if (parts.size() != 2)
      throw Error("CLIP tokenizer: " + path + " line " + std::to_string(i + 1) + ": expected two symbols, got '" +
                  lines[i] + "'");
    merges.emplace_back(parts[0], parts[1]);
  }
  return merges;
}

// A special-token entry of special_tokens_map.json / tokenizer_config.json: a string or {"content": ...}.
std::string token_content(const json& v) {
  if (v.is_string()) return v.get<std::string>();
  if (v.is_object() && v.contains("content") && v.at("content").is_string()) return v.at("content").get<std::string>();
  return {};
}

json read_json_file(const std::string& path) {
  try {
    return json::parse(read_text_file(path, "file"));
  } catch (const json::exception& e) {
    throw Error("CLIP tokenizer: " + path + ": invalid JSON: " + e.what());
  }
}

}  // namespace

struct CLIPTokenizer::Cache {
  std::mutex mu;
  std::unordered_map<std::string, std::vector<std::string>> words;
};

CLIPTokenizer::CLIPTokenizer() : cache_(std::make_unique<Cache>()) {}
CLIPTokenizer::~CLIPTokenizer() = default;
CLIPTokenizer::CLIPTokenizer(CLIPTokenizer&&) noexcept = default;
CLIPTokenizer& CLIPTokenizer::operator=(CLIPTokenizer&&) noexcept = default;
CLIPTokenizer::CLIPTokenizer(const CLIPTokenizer& o)
    : token_to_id_(o.token_to_id_),
      id_to_token_(o.id_to_token_),
      merge_ranks_(o.merge_ranks_),
      split_tokens_(o.split_tokens_),
      bos_id_(o.bos_id_),
      eos_id_(o.eos_id_),
      pad_id_(o.pad_id_),
      unk_id_(o.unk_id_),
      model_max_length_(o.model_max_length_),
      expansions_(o.expansions_),
      cache_(std::make_unique<Cache>()) {}
CLIPTokenizer& CLIPTokenizer::operator=(const CLIPTokenizer& o) {
  if (this != &o) *this = CLIPTokenizer(o);
  return *this;
}

void CLIPTokenizer::init(std::unordered_map<std::string, int64_t> vocab,
                         std::vector<std::pair<std::string, std::string>> merges, const SpecialTokens& special,
                         const std::string& source) {
  if (!cache_) cache_ = std::make_unique<Cache>();
  token_to_id_ = std::move(vocab);
  int64_t max_id = -1;
  for (const auto& [t, id] : token_to_id_) {
    if (id < 0) throw Error("CLIP tokenizer: " + source + ": negative id for token '" + t + "'");
    max_id = std::max(max_id, id);
  }
  id_to_token_.assign(static_cast<size_t>(max_id + 1), std::string());
  for (const auto& [t, id] : token_to_id_) id_to_token_[static_cast<size_t>(id)] = t;
  merge_ranks_.clear();
  for (size_t i = 0; i < merges.size(); ++i)
    merge_ranks_.emplace(merges[i].first + " " + merges[i].second, static_cast<int64_t>(i));
  auto need = [&](const std::string& tok, const char* role) {
    const auto id = token_id(tok);
    if (id < 0)
      throw Error("CLIP tokenizer: " + source + ": " + role + " token '" + tok + "' is not in the vocabulary");
    return id;
  };
  bos_id_ = need(special.bos, "bos");
  eos_id_ = need(special.eos, "eos");
  pad_id_ = need(special.pad, "pad");
  unk_id_ = need(special.unk, "unk");
  // Added tokens are cut out of the text before normalisation, as transformers' slow tokenizer does.
  split_tokens_.clear();
  for (const auto& t : {special.bos, special.eos, special.unk, special.pad})
    if (!t.empty()) split_tokens_.push_back(t);
  for (const auto& t : special.added)
    if (!t.empty() && token_id(t) >= 0) split_tokens_.push_back(t);
  std::sort(split_tokens_.begin(), split_tokens_.end(), [](const std::string& a, const std::string& b) {
    return a.size() != b.size() ? a.size() > b.size() : a < b;
  });
  split_tokens_.erase(std::unique(split_tokens_.begin(), split_tokens_.end()), split_tokens_.end());
  cache_->words.clear();
  cache_->words[kBos] = {kBos};
  cache_->words[kEos] = {kEos};
}

CLIPTokenizer CLIPTokenizer::from_folder(const std::string& dir) {
  if (!fs::is_directory(dir)) throw Error("CLIP tokenizer folder " + dir + " does not exist or is not a directory");
  const auto vocab_path = (fs::path(dir) / "vocab.json").string();
  const auto merges_path = (fs::path(dir) / "merges.txt").string();
  if (!fs::exists(vocab_path)) throw Error("CLIP tokenizer: " + vocab_path + " does not exist");
  if (!fs::exists(merges_path)) throw Error("CLIP tokenizer: " + merges_path + " does not exist");
  const json v = read_json_file(vocab_path);
  if (!v.is_object()) throw Error("CLIP tokenizer: " + vocab_path + ": expected a JSON object of token -> id");
  std::unordered_map<std::string, int64_t> vocab;
  vocab.reserve(v.size());
  for (const auto& [tok, id] : v.items()) {
    if (!id.is_number_integer())
      throw Error("CLIP tokenizer: " + vocab_path + ": id of '" + tok + "' is not an integer");
    vocab.emplace(tok, id.get<int64_t>());
  }
  std::string text = read_text_file(merges_path, "merges file");
  // transformers: read().strip().split("\n")[1 : 49152 - 256 - 2 + 1]
  const auto b = text.find_first_not_of(" \t\r\n\v\f");
  const auto e = text.find_last_not_of(" \t\r\n\v\f");
  text = b == std::string::npos ? std::string() : text.substr(b, e - b + 1);
  auto lines = split_lines(text);
  for (auto& l : lines)
    if (!l.empty() && l.back() == '\r') l.pop_back();
  auto merges = parse_merges(lines, 1, kNumMerges + 1, merges_path);

  SpecialTokens special;
  int64_t max_len = 77;
  for (const char* name : {"tokenizer_config.json", "special_tokens_map.json"}) {  // the latter wins
    const auto path = (fs::path(dir) / name).string();
    if (!fs::exists(path)) continue;
    const json j = read_json_file(path);
    if (!j.is_object()) throw Error("CLIP tokenizer: " + path + ": expected a JSON object");
    auto take = [&](const char* key, std::string& out) {
      if (j.contains(key)) {
        const auto t = token_content(j.at(key));
        if (!t.empty()) out = t;
      }
    };
    take("bos_token", special.bos);
    take("eos_token", special.eos);
    take("unk_token", special.unk);
    take("pad_token", special.pad);
    if (j.contains("added_tokens_decoder") && j.at("added_tokens_decoder").is_object())
      for (const auto& [id, tok] : j.at("added_tokens_decoder").items()) special.added.push_back(token_content(tok));
    if (j.contains("model_max_length") && j.at("model_max_length").is_number_integer()) {
      const auto m = j.at("model_max_length").get<int64_t>();
      if (m > 1 && m < 1000000) max_len = m;
    }
  }
  CLIPTokenizer t;
  t.init(std::move(vocab), std::move(merges), special, dir);
  t.model_max_length_ = max_len;
  return t;
}

CLIPTokenizer CLIPTokenizer::from_bpe_file(const std::string& path, const std::string& pad_token) {
  const auto lines = split_lines(read_maybe_gzip(path, kNumMerges + 1));
  auto merges = parse_merges(lines, 1, kNumMerges + 1, path);
  if (merges.size() != kNumMerges)
    throw Error("CLIP tokenizer: " + path + ": expected " + std::to_string(kNumMerges) + " merges, found " +
                std::to_string(merges.size()));
  // openai/CLIP SimpleTokenizer: byte symbols, the same with </w>, one token per merge, then specials.
  std::vector<std::string> order;
  order.reserve(2 * 256 + merges.size() + 2);
  for (const auto& [b, c] : bytes_to_unicode()) order.push_back(clip_text::utf8_encode(std::u32string(1, c)));
  for (size_t i = 0; i < 256; ++i) order.push_back(order[i] + "</w>");
  for (const auto& [a, b] : merges) order.push_back(a + b);
  order.emplace_back(kBos);
  order.emplace_back(kEos);
  std::unordered_map<std::string, int64_t> vocab;
  vocab.reserve(order.size());
  for (size_t i = 0; i < order.size(); ++i) vocab[order[i]] = static_cast<int64_t>(i);
  SpecialTokens special;
  special.pad = pad_token;
  CLIPTokenizer t;
  t.init(std::move(vocab), std::move(merges), special, path);
  return t;
}

std::string CLIPTokenizer::builtin_vocab_path() {
  static const char* kFile = "bpe_simple_vocab_16e6.txt.gz";
  std::vector<std::string> tried;
  auto ok = [&](const fs::path& p) {
    tried.push_back(p.string());
    std::error_code ec;
    return fs::is_regular_file(p, ec);
  };
  if (const char* e = std::getenv("DIFFUSE_CLIP_VOCAB"); e && *e) {
    if (ok(e)) return e;
    throw Error("CLIP tokenizer: DIFFUSE_CLIP_VOCAB=" + std::string(e) + " does not exist");
  }
  std::error_code ec;
  if (auto p = fs::current_path(ec) / "models" / "clip" / kFile; !ec && ok(p)) return p.string();
  char buf[PATH_MAX];
  const ssize_t len = ::readlink("/proc/self/exe", buf, sizeof buf - 1);
  if (len > 0) {
    buf[len] = 0;
    for (fs::path p = fs::path(buf).parent_path(); !p.empty(); p = p.parent_path()) {
      for (const auto& cand : {p / "models" / "clip" / kFile, p / "share" / "diffuse" / "models" / "clip" / kFile})
        if (ok(cand)) return cand.string();
      if (p == p.root_path()) break;
    }
  }
  std::string msg = std::string("CLIP tokenizer: built-in vocabulary ") + kFile +
                    " not found (set DIFFUSE_CLIP_VOCAB or pass a tokenizer folder); looked in:";
  for (size_t i = 0; i < tried.size() && i < 8; ++i) msg += "\n  " + tried[i];
  throw Error(msg);
}

CLIPTokenizer CLIPTokenizer::builtin(const std::string& pad_token) {
  static std::mutex mu;
  static std::unique_ptr<CLIPTokenizer> cached;
  std::lock_guard<std::mutex> lock(mu);
  if (!cached) cached = std::make_unique<CLIPTokenizer>(from_bpe_file(builtin_vocab_path()));
  CLIPTokenizer t(*cached);
  if (pad_token != kEos) {
    SpecialTokens special;
    special.pad = pad_token;
    const auto id = t.token_id(pad_token);
    if (id < 0) throw Error("CLIP tokenizer: pad token '" + pad_token + "' is not in the vocabulary");
    t.pad_id_ = id;
    t.split_tokens_.push_back(pad_token);
    std::sort(t.split_tokens_.begin(), t.split_tokens_.end(), [](const std::string& a, const std::string& b) {
      return a.size() != b.size() ? a.size() > b.size() : a < b;
    });
  }
  return t;
}

int64_t CLIPTokenizer::token_id(const std::string& token) const {
  auto it = token_to_id_.find(token);
  return it == token_to_id_.end() ? -1 : it->second;
}

const std::string& CLIPTokenizer::id_to_token(int64_t id) const {
  if (id < 0 || id >= vocab_size()) throw Error("CLIP tokenizer: id " + std::to_string(id) + " is out of range");
  return id_to_token_[static_cast<size_t>(id)];
}

std::string CLIPTokenizer::normalize(const std::string& text) {
  using namespace clip_text;
  return utf8_encode(lower(whitespace_clean(fix_text(utf8_decode(text)))));
}

std::vector<std::string> CLIPTokenizer::bpe(const std::string& token) const {
  {
    std::lock_guard<std::mutex> lock(cache_->mu);
    auto it = cache_->words.find(token);
    if (it != cache_->words.end()) return it->second;
  }
  // Symbols: one per code point, the last one with </w>.
  std::vector<std::string> word;
  for (size_t i = 0; i < token.size();) {
    size_t n = 1;
    const auto c = static_cast<unsigned char>(token[i]);
    if (c >= 0xF0)
      n = 4;
    else if (c >= 0xE0)
      n = 3;
    else if (c >= 0xC0)
      n = 2;
    word.push_back(token.substr(i, n));
    i += n;
  }
  if (word.empty()) return {};
  word.back() += "</w>";
  while (word.size() > 1) {
    int64_t best = std::numeric_limits<int64_t>::max();
    std::string first, second;
    for (size_t i = 0; i + 1 < word.size(); ++i) {
      auto it = merge_ranks_.find(word[i] + " " + word[i + 1]);
      if (it != merge_ranks_.end() && it->second < best) {
        best = it->second;
        first = word[i];
        second = word[i + 1];
      }
    }
    if (best == std::numeric_limits<int64_t>::max()) break;
    std::vector<std::string> merged;
    merged.reserve(word.size());
    for (size_t i = 0; i < word.size();) {
      if (i + 1 < word.size() && word[i] == first && word[i + 1] == second) {
        merged.push_back(first + second);
        i += 2;
      } else {
        merged.push_back(word[i]);
        ++i;
      }
    }
    word = std::move(merged);
  }
  std::lock_guard<std::mutex> lock(cache_->mu);
  if (cache_->words.size() > 100000) cache_->words.clear();
  cache_->words[token] = word;
  return word;
}

std::vector<std::string> CLIPTokenizer::tokens(const std::string& text) const {
  // 1. Cut out added tokens (transformers' trie split, on the raw text).
  std::vector<std::pair<std::string, bool>> chunks;  // (text, is_added_token)
  std::string cur;
  for (size_t i = 0; i < text.size();) {
    bool hit = false;
    for (const auto& t : split_tokens_) {
      if (text.compare(i, t.size(), t) == 0) {
        if (!cur.empty()) chunks.emplace_back(cur, false);
        cur.clear();
        chunks.emplace_back(t, true);
        i += t.size();
        hit = true;
        break;
      }
    }
    if (!hit) cur += text[i++];
  }
  if (!cur.empty()) chunks.emplace_back(cur, false);

  std::vector<std::string> out;
  const auto& enc = byte_encoder();
  for (const auto& [chunk, added] : chunks) {
    if (added) {
      out.push_back(chunk);
      continue;
    }
    // 2. ftfy + whitespace cleanup + lowercase, 3. the CLIP regex, 4. bytes -> symbols -> BPE.
    using namespace clip_text;
    const std::u32string s = lower(whitespace_clean(fix_text(utf8_decode(chunk))));
    static const std::u32string kSpecial[] = {U"<|startoftext|>", U"<|endoftext|>"};
    static const std::u32string kContractions[] = {U"'s", U"'t", U"'re", U"'ve", U"'m", U"'ll", U"'d"};
    auto emit = [&](size_t b, size_t e) {
      const std::string piece = utf8_encode(s.substr(b, e - b));
      std::string mapped;
      for (unsigned char c : piece) mapped += enc[c];
      for (auto& t : bpe(mapped)) out.push_back(std::move(t));
    };
    for (size_t i = 0; i < s.size();) {
      bool matched = false;
      for (const auto& sp : kSpecial) {
        if (s.compare(i, sp.size(), sp) == 0) {
          out.push_back(utf8_encode(sp));
          i += sp.size();
          matched = true;
          break;
        }
      }
      if (matched) continue;
      for (const auto& c : kContractions) {
        if (s.compare(i, c.size(), c) == 0) {
          emit(i, i + c.size());
          i += c.size();
          matched = true;
          break;
        }
      }
      if (matched) continue;
      const char32_t c = s[i];
      size_t j = i + 1;
      if (is_letter(c)) {
        while (j < s.size() && is_letter(s[j])) ++j;
      } else if (is_number(c)) {
        // one digit per token
      } else if (!is_space(c)) {
        while (j < s.size() && !is_space(s[j]) && !is_letter(s[j]) && !is_number(s[j])) ++j;
      } else {
        i = j;
        continue;
      }
      emit(i, j);
      i = j;
    }
  }
  return out;
}

void CLIPTokenizer::add_token(const std::string& token, const std::vector<int64_t>& ids) {
  if (token.empty() || ids.empty()) throw Error("CLIP tokenizer: add_token needs a token and its ids");
  if (token_id(token) >= 0 || expansions_.count(token))
    throw Error("CLIP tokenizer: token '" + token + "' is already in the vocabulary");
  token_to_id_[token] = ids.front();
  if (ids.front() >= static_cast<int64_t>(id_to_token_.size()))
    id_to_token_.resize(static_cast<size_t>(ids.front() + 1));
  id_to_token_[static_cast<size_t>(ids.front())] = token;
  expansions_[token] = ids;
  split_tokens_.push_back(token);
  std::sort(split_tokens_.begin(), split_tokens_.end(), [](const std::string& a, const std::string& b) {
    return a.size() != b.size() ? a.size() > b.size() : a < b;
  });
}

CLIPTokenizer CLIPTokenizer::reduced(const std::vector<std::string>& texts, std::vector<int64_t>* old_ids) const {
  if (!expansions_.empty()) throw Error("CLIP tokenizer: a vocabulary with added tokens cannot be reduced");
  std::vector<std::pair<std::string, std::string>> merges(merge_ranks_.size());
  std::unordered_multimap<std::string, int64_t> by_result;  // merge result -> rank
  for (const auto& [pair, rank] : merge_ranks_) {
    const auto sp = pair.find(' ');
    auto& m = merges[static_cast<size_t>(rank)];
    m = {pair.substr(0, sp), pair.substr(sp + 1)};
    by_result.emplace(m.first + m.second, rank);
  }
  // Every merge that can produce a token the texts use, and recursively its parts. BPE picks the
  // lowest-ranked merge present, and the merges it applies to these texts are all kept, so the
  // texts merge exactly as before.
  std::set<int64_t> kept;
  std::vector<std::string> todo;
  for (const auto& text : texts)
    for (auto& t : tokens(text)) todo.push_back(std::move(t));
  std::set<std::string> seen;
  while (!todo.empty()) {
    const std::string t = std::move(todo.back());
    todo.pop_back();
    if (!seen.insert(t).second) continue;
    const auto [b, e] = by_result.equal_range(t);
    for (auto it = b; it != e; ++it)
      if (kept.insert(it->second).second) {
        const auto& m = merges[static_cast<size_t>(it->second)];
        todo.push_back(m.first);
        todo.push_back(m.second);
      }
  }
  // Byte symbols, then the kept merges' results in merge order, then the special tokens.
  std::vector<std::string> order;
  for (const auto& [byte, c] : bytes_to_unicode()) order.push_back(clip_text::utf8_encode(std::u32string(1, c)));
  for (size_t i = 0; i < 256; ++i) order.push_back(order[i] + "</w>");
  std::vector<std::pair<std::string, std::string>> new_merges;
  for (const auto r : kept) {
    new_merges.push_back(merges[static_cast<size_t>(r)]);
    order.push_back(new_merges.back().first + new_merges.back().second);
  }
  SpecialTokens special;
  special.bos = id_to_token(bos_id_);
  special.eos = id_to_token(eos_id_);
  special.unk = id_to_token(unk_id_);
  special.pad = id_to_token(pad_id_);
  for (const auto& s : {special.bos, special.eos, special.unk, special.pad}) order.push_back(s);
  std::unordered_map<std::string, int64_t> vocab;
  std::vector<int64_t> from;
  for (size_t i = 0; i < order.size(); ++i) {
    const auto& t = order[i];
    if (vocab.count(t)) continue;  // a merge result seen before, or a special token that is a byte ("!")
    const auto id = token_id(t);
    if (id < 0 && i < 512) continue;  // a byte symbol this vocabulary lacks stays unknown
    if (id < 0) throw Error("CLIP tokenizer: cannot reduce a vocabulary without the token '" + t + "'");
    vocab.emplace(t, static_cast<int64_t>(from.size()));
    from.push_back(id);
  }
  CLIPTokenizer out;
  out.init(std::move(vocab), std::move(new_merges), special, "reduced vocabulary");
  out.model_max_length_ = model_max_length_;
  if (old_ids) *old_ids = std::move(from);
  return out;
}

void CLIPTokenizer::save(const std::string& dir) const {
  fs::create_directories(dir);
  json vocab = json::object();
  for (int64_t i = 0; i < vocab_size(); ++i)
    if (!id_to_token_[static_cast<size_t>(i)].empty()) vocab[id_to_token_[static_cast<size_t>(i)]] = i;
  write_file_atomically((fs::path(dir) / "vocab.json").string(), vocab.dump() + "\n");
  std::vector<const std::string*> merges(merge_ranks_.size());
  for (const auto& [pair, rank] : merge_ranks_) merges[static_cast<size_t>(rank)] = &pair;
  std::string m = "#version: 0.2\n";
  for (const auto* x : merges) m += *x + "\n";
  write_file_atomically((fs::path(dir) / "merges.txt").string(), m);
  const std::string bos = id_to_token(bos_id_), eos = id_to_token(eos_id_), unk = id_to_token(unk_id_),
                    pad = id_to_token(pad_id_);
  auto special = [](const std::string& s) {
    return json{{"content", s}, {"lstrip", false}, {"normalized", true}, {"rstrip", false}, {"single_word", false}};
  };
  const json map = {
      {"bos_token", special(bos)}, {"eos_token", special(eos)}, {"pad_token", pad}, {"unk_token", special(unk)}};
  write_file_atomically((fs::path(dir) / "special_tokens_map.json").string(), map.dump(2) + "\n");
  const json cfg = {{"bos_token", bos},
                    {"eos_token", eos},
                    {"pad_token", pad},
                    {"unk_token", unk},
                    {"clean_up_tokenization_spaces", true},
                    {"errors", "replace"},
                    {"model_max_length", model_max_length_},
                    {"tokenizer_class", "CLIPTokenizer"}};
  write_file_atomically((fs::path(dir) / "tokenizer_config.json").string(), cfg.dump(2) + "\n");
}

std::vector<int64_t> CLIPTokenizer::encode(const std::string& text) const {
  std::vector<int64_t> ids;
  for (const auto& t : tokens(text)) {
    if (!expansions_.empty()) {
      auto e = expansions_.find(t);
      if (e != expansions_.end()) {
        ids.insert(ids.end(), e->second.begin(), e->second.end());
        continue;
      }
    }
    const auto id = token_id(t);
    ids.push_back(id >= 0 ? id : unk_id_);
  }
  return ids;
}

std::vector<int64_t> CLIPTokenizer::tokenize(const std::string& text, int64_t max_len, bool pad) const {
  if (max_len < 2) throw Error("CLIP tokenizer: max_len must be at least 2, got " + std::to_string(max_len));
  auto ids = encode(text);
  if (static_cast<int64_t>(ids.size()) > max_len - 2) ids.resize(static_cast<size_t>(max_len - 2));
  std::vector<int64_t> out;
  out.reserve(pad ? static_cast<size_t>(max_len) : ids.size() + 2);
  out.push_back(bos_id_);
  out.insert(out.end(), ids.begin(), ids.end());
  out.push_back(eos_id_);
  if (pad)
    while (static_cast<int64_t>(out.size()) < max_len) out.push_back(pad_id_);
  return out;
}

}  // namespace diffuse
