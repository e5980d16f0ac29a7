#include "pipelines/prompt_weights.h"

#include <cctype>
#include <cstdlib>

#include "core/error.h"
#include "pipelines/text_encoder.h"

namespace diffuse {

namespace {

constexpr double kRoundMultiplier = 1.1;
constexpr double kSquareMultiplier = 1 / 1.1;

bool is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }
// Python's \w on UTF-8 bytes: ASCII letters, digits, '_', and any non-ASCII character.
bool is_word(char c) {
  const auto u = static_cast<unsigned char>(c);
  return u >= 0x80 || std::isalnum(u) || c == '_';
}

// re.split(r"\s*\bBREAK\b\s*", text): the parts between BREAK keywords.
std::vector<std::string> split_break(const std::string& s) {
  std::vector<std::string> parts;
  size_t start = 0;  // start of the current part
  size_t pos = 0;    // where the search resumes
  while (true) {
    size_t k = s.find("BREAK", pos);
    if (k == std::string::npos) break;
    const bool left = k == 0 || !is_word(s[k - 1]);
    const bool right = k + 5 == s.size() || !is_word(s[k + 5]);
    if (!left || !right) {
      pos = k + 1;
      continue;
    }
    size_t b = k;
    while (b > start && is_space(s[b - 1])) --b;
    size_t e = k + 5;
    while (e < s.size() && is_space(s[e])) ++e;
    parts.push_back(s.substr(start, b - start));
    start = pos = e;
  }
  parts.push_back(s.substr(start));
  return parts;
}

// `:\s*([+-]?[.\d]+)\s*\)` at s[i] == ':'; returns the match length (0 if none) and the number text.
size_t match_weight(const std::string& s, size_t i, std::string& number) {
  size_t j = i + 1;
  while (j < s.size() && is_space(s[j])) ++j;
  const size_t num_start = j;
  if (j < s.size() && (s[j] == '+' || s[j] == '-')) ++j;
  const size_t digits = j;
  while (j < s.size() && (s[j] == '.' || std::isdigit(static_cast<unsigned char>(s[j])))) ++j;
  if (j == digits) return 0;
  number = s.substr(num_start, j - num_start);
  while (j < s.size() && is_space(s[j])) ++j;
  if (j >= s.size() || s[j] != ')') return 0;
  return j + 1 - i;
}

double parse_weight(const std::string& number, const std::string& prompt) {
  char* end = nullptr;
  const double w = std::strtod(number.c_str(), &end);
  bool digit = false;
  for (char c : number) digit = digit || std::isdigit(static_cast<unsigned char>(c));
  if (!digit || end != number.c_str() + number.size())
    throw Error("prompt: attention weight '" + number + "' is not a number in \"" + prompt + "\"");
  return w;
}

}  // namespace

bool PromptFragment::is_break() const { return weight == kBreakWeight && text == "BREAK"; }

std::vector<PromptFragment> parse_prompt_attention(const std::string& text) {
  std::vector<PromptFragment> res;
  std::vector<size_t> round, square;
  auto multiply_range = [&](size_t from, double m) {
    for (size_t p = from; p < res.size(); ++p) res[p].weight *= m;
  };
  auto add_text = [&](const std::string& t) {
    const auto parts = split_break(t);
    for (size_t i = 0; i < parts.size(); ++i) {
      if (i > 0) res.push_back({"BREAK", kBreakWeight});
      res.push_back({parts[i], 1.0});
    }
  };
  static const std::string kSyntax = "\\()[]:";
  for (size_t i = 0; i < text.size();) {
    const char c = text[i];
    if (c == '\\') {
      // \( \) \[ \] \\ give the character; a lone backslash disappears.
      if (i + 1 < text.size() && std::string("()[]\\").find(text[i + 1]) != std::string::npos) {
        res.push_back({std::string(1, text[i + 1]), 1.0});
        i += 2;
      } else {
        res.push_back({"", 1.0});
        i += 1;
      }
    } else if (c == '(') {
      round.push_back(res.size());
      ++i;
    } else if (c == '[') {
      square.push_back(res.size());
      ++i;
    } else if (c == ':') {
      std::string number;
      const size_t len = match_weight(text, i, number);
      if (len > 0 && !round.empty()) {
        multiply_range(round.back(), parse_weight(number, text));
        round.pop_back();
      } else {
        add_text(len > 0 ? text.substr(i, len) : ":");
      }
      i += len > 0 ? len : 1;
    } else if (c == ')' && !round.empty()) {
      multiply_range(round.back(), kRoundMultiplier);
      round.pop_back();
      ++i;
    } else if (c == ']' && !square.empty()) {
      multiply_range(square.back(), kSquareMultiplier);
      square.pop_back();
      ++i;
    } else if (c == ')' || c == ']') {
      add_text(std::string(1, c));
      ++i;
    } else {
      size_t j = i;
      while (j < text.size() && kSyntax.find(text[j]) == std::string::npos) ++j;
      add_text(text.substr(i, j - i));
      i = j;
    }
  }
  for (size_t pos : round) multiply_range(pos, kRoundMultiplier);
  for (size_t pos : square) multiply_range(pos, kSquareMultiplier);
  if (res.empty()) res.push_back({"", 1.0});
  for (size_t i = 0; i + 1 < res.size();) {
    if (res[i].weight == res[i + 1].weight) {
      res[i].text += res[i + 1].text;
      res.erase(res.begin() + static_cast<std::ptrdiff_t>(i) + 1);
    } else {
      ++i;
    }
  }
  return res;
}

bool PromptChunk::weighted() const {
  for (double w : weights)
    if (w != 1.0) return true;
  return false;
}

std::vector<PromptChunk> prompt_chunks(const CLIPTokenizer& tok, const std::string& prompt, int64_t chunk_len,
                                       int comma_backtrack) {
  if (chunk_len < 3) throw Error("prompt chunks: chunk length must be at least 3");
  const size_t body = static_cast<size_t>(chunk_len - 2);
  const int64_t comma = tok.token_id(",</w>");
  std::vector<PromptChunk> chunks;
  PromptChunk chunk;
  int64_t last_comma = -1;
  auto next_chunk = [&]() {
    PromptChunk c;
    c.ids.push_back(tok.bos_id());
    c.weights.push_back(1.0);
    c.ids.insert(c.ids.end(), chunk.ids.begin(), chunk.ids.end());
    c.weights.insert(c.weights.end(), chunk.weights.begin(), chunk.weights.end());
    c.ids.push_back(tok.eos_id());
    c.weights.push_back(1.0);
    while (static_cast<int64_t>(c.ids.size()) < chunk_len) {
      c.ids.push_back(tok.pad_id());
      c.weights.push_back(1.0);
    }
    chunks.push_back(std::move(c));
    chunk = PromptChunk();
    last_comma = -1;
  };
  for (const auto& frag : parse_prompt_attention(prompt)) {
    if (frag.is_break()) {
      next_chunk();
      continue;
    }
    for (int64_t id : tok.encode(frag.text)) {
      if (comma >= 0 && id == comma) {
        last_comma = static_cast<int64_t>(chunk.ids.size());
      } else if (comma_backtrack > 0 && chunk.ids.size() == body && last_comma != -1 &&
                 static_cast<int64_t>(chunk.ids.size()) - last_comma <= comma_backtrack) {
        // Move the words after the last comma to the next chunk.
        const auto cut = static_cast<std::ptrdiff_t>(last_comma + 1);
        std::vector<int64_t> ids(chunk.ids.begin() + cut, chunk.ids.end());
        std::vector<double> ws(chunk.weights.begin() + cut, chunk.weights.end());
        chunk.ids.resize(static_cast<size_t>(cut));
        chunk.weights.resize(static_cast<size_t>(cut));
        next_chunk();
        chunk.ids = std::move(ids);
        chunk.weights = std::move(ws);
      }
      if (chunk.ids.size() == body) next_chunk();
      chunk.ids.push_back(id);
      chunk.weights.push_back(frag.weight);
    }
  }
  if (!chunk.ids.empty() || chunks.empty()) next_chunk();
  return chunks;
}

torch::Tensor encode_weighted_prompt(const SDTextEncoder& te, const std::string& prompt, int clip_skip,
                                     int64_t min_chunks, torch::Tensor* pooled) {
  torch::NoGradGuard ng;
  const auto& cfg = te.model->config();
  auto chunks = prompt_chunks(te.tokenizer, prompt, cfg.max_position_embeddings);
  while (static_cast<int64_t>(chunks.size()) < min_chunks)
    chunks.push_back(prompt_chunks(te.tokenizer, "", cfg.max_position_embeddings).front());
  std::vector<torch::Tensor> parts;
  for (const auto& c : chunks) {
    for (int64_t id : c.ids)
      if (id < 0 || id >= cfg.vocab_size)
        throw Error("prompt: token id " + std::to_string(id) + " is outside the text encoder's vocabulary (" +
                    std::to_string(cfg.vocab_size) + ")");
    torch::Tensor chunk_pooled;
    auto z = te.encode_ids(torch::tensor(c.ids, torch::kInt64).unsqueeze(0), clip_skip,
                           pooled && parts.empty() ? &chunk_pooled : nullptr);
    if (pooled && parts.empty()) *pooled = chunk_pooled;
    if (c.weighted()) {
      // A1111's "Original" emphasis: z *= weights; z *= original_mean / new_mean.
      auto w = torch::tensor(c.weights, torch::kFloat64).to(z.scalar_type()).view({1, -1, 1});
      auto original_mean = z.mean();
      z = z * w;
      z = z * (original_mean / z.mean());
    }
    parts.push_back(z);
  }
  return parts.size() == 1 ? parts[0] : torch::cat(parts, 1);
}

void match_prompt_lengths(const SDTextEncoder* te, torch::Tensor& a, torch::Tensor& b, int clip_skip) {
  std::vector<const SDTextEncoder*> encoders;
  if (te) encoders.push_back(te);
  match_prompt_lengths(encoders, a, b, clip_skip);
}

void match_prompt_lengths(const std::vector<const SDTextEncoder*>& encoders, torch::Tensor& a, torch::Tensor& b,
                          int clip_skip) {
  if (!a.defined() || !b.defined() || a.dim() != 3 || b.dim() != 3 || a.size(1) == b.size(1)) return;
  torch::Tensor& shorter = a.size(1) < b.size(1) ? a : b;
  const int64_t target = std::max(a.size(1), b.size(1));
  const int64_t len = encoders.empty() ? 77 : encoders[0]->model->config().max_position_embeddings;
  if (encoders.empty() || shorter.size(1) % len != 0 || target % len != 0) return;  // given embeddings: as they are
  std::vector<torch::Tensor> parts;
  for (const auto* te : encoders) parts.push_back(encode_weighted_prompt(*te, "", clip_skip));
  auto empty = (parts.size() == 1 ? parts[0] : torch::cat(parts, -1)).to(shorter.device(), shorter.scalar_type());
  auto pad = empty.expand({shorter.size(0), len, empty.size(2)}).repeat({1, (target - shorter.size(1)) / len, 1});
  shorter = torch::cat({shorter, pad}, 1);
}

}  // namespace diffuse
