#pragma once
// CLIP's byte-level BPE tokenizer, as openai/CLIP's SimpleTokenizer and transformers' CLIPTokenizer
// (with ftfy installed): text fixing (the ftfy repairs SD prompts need, see clip_text_fix.h),
// whitespace cleanup, lowercasing, the CLIP pre-tokenizer regex over Unicode code points, BPE
// merges over the bytes-to-unicode alphabet, <|startoftext|> / <|endoftext|>, truncation and padding.
#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

namespace diffuse {

class CLIPTokenizer {
 public:
  // A tokenizer folder (diffusers pipeline `tokenizer/`): vocab.json + merges.txt, and the pad token
  // from special_tokens_map.json / tokenizer_config.json when present ("<|endoftext|>" otherwise;
  // SD 2.x uses "!"). Missing or malformed files throw diffuse::Error naming the file.
  static CLIPTokenizer from_folder(const std::string& dir);
  // The original OpenAI vocabulary (bpe_simple_vocab_16e6.txt.gz shipped in models/clip/), with the
  // SD 1.x padding (<|endoftext|>); for single-file checkpoints. `pad_token` "!" gives SD 2.x padding.
  static CLIPTokenizer builtin(const std::string& pad_token = "<|endoftext|>");
  // Same from an explicit bpe_simple_vocab_16e6.txt(.gz) path (gzip detected by its magic bytes).
  static CLIPTokenizer from_bpe_file(const std::string& path, const std::string& pad_token = "<|endoftext|>");
  // Where builtin() reads its vocabulary: $DIFFUSE_CLIP_VOCAB, ./models/clip/, or models/clip/ (or
  // share/diffuse/models/clip/) above the executable. Throws diffuse::Error listing the places tried.
  static std::string builtin_vocab_path();

  // Token ids of `text` without <|startoftext|> / <|endoftext|>, untruncated.
  std::vector<int64_t> encode(const std::string& text) const;
  // BPE tokens (vocabulary strings, e.g. "photo</w>") of `text`.
  std::vector<std::string> tokens(const std::string& text) const;
  // <|startoftext|> ids <|endoftext|>, truncated to max_len (the last slot stays <|endoftext|>) and,
  // when pad, padded with pad_id() to max_len: transformers' padding="max_length", truncation=True.
  std::vector<int64_t> tokenize(const std::string& text, int64_t max_len = 77, bool pad = true) const;

  // Text normalisation applied before pre-tokenizing: fix_text, whitespace cleanup, lowercase.
  static std::string normalize(const std::string& text);

  int64_t bos_id() const { return bos_id_; }
  int64_t eos_id() const { return eos_id_; }
  int64_t pad_id() const { return pad_id_; }
  int64_t vocab_size() const { return static_cast<int64_t>(id_to_token_.size()); }
  int64_t model_max_length() const { return model_max_length_; }
  // Adds `token` (cut out of the raw text exactly as written, like transformers' added tokens) that
  // encodes to `ids` (several for multi-vector textual-inversion embeddings). Throws if it exists.
  void add_token(const std::string& token, const std::vector<int64_t>& ids);
  // This tokenizer cut down to what `texts` use: the 512 byte symbols (so any text still tokenizes),
  // the merges whose results tokenizing `texts` produces, and the special tokens, which take the
  // last ids. Each of `texts` gives the same token strings as here; `old_ids` (when given)
  // receives each new id's id in this tokenizer, for selecting embedding rows. A text outside
  // `texts` may split into smaller pieces than here. Throws with added tokens (add_token).
  CLIPTokenizer reduced(const std::vector<std::string>& texts, std::vector<int64_t>* old_ids = nullptr) const;
  // Writes a transformers tokenizer folder: vocab.json, merges.txt, special_tokens_map.json and
  // tokenizer_config.json (files written atomically), which from_folder() reads back unchanged.
  void save(const std::string& dir) const;

  // Vocabulary id of `token`, or -1.
  int64_t token_id(const std::string& token) const;
  const std::string& id_to_token(int64_t id) const;

  CLIPTokenizer();
  ~CLIPTokenizer();
  CLIPTokenizer(CLIPTokenizer&&) noexcept;
  CLIPTokenizer& operator=(CLIPTokenizer&&) noexcept;
  CLIPTokenizer(const CLIPTokenizer&);
  CLIPTokenizer& operator=(const CLIPTokenizer&);

 private:
  struct Cache;
  struct SpecialTokens {
    std::string bos = "<|startoftext|>", eos = "<|endoftext|>", unk = "<|endoftext|>", pad = "<|endoftext|>";
    std::vector<std::string> added;  // tokenizer_config.json added_tokens_decoder contents
  };
  void init(std::unordered_map<std::string, int64_t> vocab, std::vector<std::pair<std::string, std::string>> merges,
            const SpecialTokens& special, const std::string& source);
  std::vector<std::string> bpe(const std::string& token) const;

  std::unordered_map<std::string, int64_t> token_to_id_;
  std::vector<std::string> id_to_token_;
  std::unordered_map<std::string, int64_t> merge_ranks_;  // "a b" -> rank
  std::vector<std::string> split_tokens_;                 // added tokens cut out of the raw text, longest first
  int64_t bos_id_ = -1, eos_id_ = -1, pad_id_ = -1, unk_id_ = -1;
  int64_t model_max_length_ = 77;
  std::unordered_map<std::string, std::vector<int64_t>> expansions_;  // add_token()
  std::unique_ptr<Cache> cache_;
};

}  // namespace diffuse
