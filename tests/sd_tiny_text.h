#pragma once
// The tiny SD fixture (sd_pipeline_tiny) with a tokenizer its vocab-1000 text encoder can take:
// the real CLIP vocabulary cut to ids < 998 (bytes, byte + </w>, the first 486 merges) with
// <|startoftext|> = 998 and <|endoftext|> = 999, so prompts run end to end through the text encoder.
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>

#include "fixtures.h"

namespace diffuse::test {

inline void write_tiny_tokenizer(const std::string& dir) {
  namespace fs = std::filesystem;
  fs::create_directories(dir);
  const std::string src = fixture("sd_pipeline_tiny/tokenizer");
  nlohmann::json vocab = nlohmann::json::parse(std::ifstream(src + "/vocab.json"));
  nlohmann::json cut = nlohmann::json::object();
  for (const auto& [tok, id] : vocab.items())
    if (id.get<int64_t>() < 998) cut[tok] = id;
  cut["<|startoftext|>"] = 998;
  cut["<|endoftext|>"] = 999;
  std::ofstream(dir + "/vocab.json") << cut.dump();
  std::ifstream in(src + "/merges.txt");
  std::ofstream out(dir + "/merges.txt");
  std::string line;
  for (int i = 0; i < 487 && std::getline(in, line); ++i) out << line << "\n";  // header + 486 merges
  fs::copy_file(src + "/special_tokens_map.json", dir + "/special_tokens_map.json",
                fs::copy_options::overwrite_existing);
}

// A copy of sd_pipeline_tiny in `dir` (weights linked) with the tiny tokenizer; returns `dir`.
inline std::string tiny_sd_folder(const std::string& dir) {
  namespace fs = std::filesystem;
  fs::create_directories(dir);
  const std::string src = fixture("sd_pipeline_tiny");
  fs::copy_file(src + "/model_index.json", dir + "/model_index.json", fs::copy_options::overwrite_existing);
  for (const char* c : {"scheduler", "unet", "vae", "text_encoder"})
    if (!fs::exists(dir + "/" + c)) fs::create_directory_symlink(src + "/" + c, dir + "/" + c);
  write_tiny_tokenizer(dir + "/tokenizer");
  return dir;
}

}  // namespace diffuse::test
