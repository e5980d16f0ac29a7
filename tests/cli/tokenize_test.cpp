// `diffuse tokenize` and `diffuse forward` on a CLIP text encoder, through the real binary.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/safetensors.h"
#include "fixtures.h"

namespace diffuse {
namespace {

using test::TempDir;
namespace fs = std::filesystem;

// Exit code and stdout+stderr of `diffuse ARGS`, captured through a file in `tmp`.
std::pair<int, std::string> diffuse_cli(const TempDir& tmp, const std::string& args) {
  const auto log = tmp / "cli.log";
  const int status = std::system((std::string(DIFFUSE_CLI) + " " + args + " > " + log + " 2>&1").c_str());
  std::ifstream f(log);
  std::stringstream ss;
  ss << f.rdbuf();
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, ss.str()};
}

std::vector<int64_t> parse_ids(const std::string& out) {
  return nlohmann::json::parse(out).get<std::vector<int64_t>>();
}

nlohmann::json find_case(const std::string& prompt) {
  std::ifstream f(test::fixture("tokenizer/cases.json"));
  const auto cases = nlohmann::json::parse(f);
  for (const auto& c : cases.at("cases"))
    if (c.at("prompt") == prompt) return c;
  ADD_FAILURE() << "no case " << prompt;
  return {};
}

// A pipeline folder whose tokenizer/ is the SD 2.x one.
std::string sd2_pipeline(const TempDir& tmp) {
  const auto dir = tmp / "pipe";
  fs::create_directories(dir + "/tokenizer");
  std::ofstream(dir + "/model_index.json") << "{\"_class_name\": \"StableDiffusionPipeline\"}";
  for (const auto& e : fs::directory_iterator(test::fixture("tokenizer/tokenizer_sd2")))
    fs::copy_file(e.path(), dir + "/tokenizer/" + e.path().filename().string());
  fs::copy_file(test::fixture("clip_vocab/vocab.json"), dir + "/tokenizer/vocab.json");
  fs::copy_file(test::fixture("clip_vocab/merges.txt"), dir + "/tokenizer/merges.txt");
  return dir;
}

TEST(CliTokenize, BuiltinVocabularyPrintsPaddedIds) {
  TempDir tmp;
  const auto c = find_case("Hello, world!");
  auto [code, out] = diffuse_cli(tmp, "tokenize 'Hello, world!'");
  ASSERT_EQ(code, 0) << out;
  EXPECT_EQ(parse_ids(out), c.at("hf_input_ids").get<std::vector<int64_t>>());
  std::tie(code, out) = diffuse_cli(tmp, "tokenize --no-pad 'Hello, world!'");
  ASSERT_EQ(code, 0) << out;
  EXPECT_EQ(parse_ids(out), c.at("hf_input_ids_untruncated").get<std::vector<int64_t>>());
}

TEST(CliTokenize, TextArrivesUnmangled) {
  TempDir tmp;
  // "[a, b]" is a prompt, not a list: brackets and comma are tokens ('[' 314, ',' 267, ']' 316).
  auto [code, out] = diffuse_cli(tmp, "tokenize --no-pad '[a, b]'");
  ASSERT_EQ(code, 0) << out;
  EXPECT_EQ(parse_ids(out), (std::vector<int64_t>{49406, 314, 320, 267, 321, 316, 49407}));
  std::string joined;
  std::tie(code, joined) = diffuse_cli(tmp, "tokenize --no-pad '[a,' 'b]'");  // arguments joined with spaces
  ASSERT_EQ(code, 0) << joined;
  EXPECT_EQ(parse_ids(joined), parse_ids(out));
  std::tie(code, out) = diffuse_cli(tmp, "tokenize");
  EXPECT_EQ(code, 1) << out;
}

TEST(CliTokenize, PipelineAndTokenizerFolders) {
  TempDir tmp;
  const auto pipe = sd2_pipeline(tmp);
  const auto c = find_case("...!!!???");
  for (const auto& model : {pipe, pipe + "/tokenizer"}) {
    auto [code, out] = diffuse_cli(tmp, "tokenize --model " + model + " '" + c.at("prompt").get<std::string>() + "'");
    ASSERT_EQ(code, 0) << out;
    EXPECT_EQ(parse_ids(out), c.at("hf_input_ids_sd2_pad").get<std::vector<int64_t>>()) << model;
  }
  // Long prompts are truncated to 77 with the end token last.
  const auto long_case = find_case(
      "1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25 26 27 28 29 30 31 32 33 34 35 36 37 38 39 40");
  auto [code, out] = diffuse_cli(tmp, "tokenize " + long_case.at("prompt").get<std::string>());
  ASSERT_EQ(code, 0) << out;
  EXPECT_EQ(parse_ids(out), long_case.at("hf_input_ids").get<std::vector<int64_t>>());
}

TEST(CliTokenize, BadModelFolder) {
  TempDir tmp;
  fs::create_directories(tmp / "empty");
  auto [code, out] = diffuse_cli(tmp, "tokenize --model " + (tmp / "empty") + " cat");
  EXPECT_NE(code, 0);
  EXPECT_NE(out.find("vocab.json"), std::string::npos) << out;
  std::tie(code, out) = diffuse_cli(tmp, "tokenize --model " + (tmp / "nowhere") + " cat");
  EXPECT_NE(code, 0);
  EXPECT_NE(out.find("nowhere"), std::string::npos) << out;
}

TEST(CliForward, ClipTextModelMatchesTransformers) {
  for (const char* name : {"clip_text_tiny_quickgelu", "clip_text_tiny_gelu"}) {
    TempDir tmp;
    const auto io = test::fixture(std::string(name) + "/io.safetensors");
    auto [code, out] = diffuse_cli(tmp, "forward --model " + test::fixture(name) + " --inputs " + io + " --out " +
                                            (tmp / "o.safetensors") + " --threads 1");
    ASSERT_EQ(code, 0) << out;
    auto got = safetensors::load(tmp / "o.safetensors");
    auto ref = safetensors::load(io);
    for (const char* t :
         {"last_hidden_state", "pooler_output", "hidden_states.0", "hidden_states.1", "hidden_states.2"}) {
      ASSERT_TRUE(got.count(t)) << name << " " << t;
      EXPECT_LE(test::max_abs_diff(got.at(t), ref.at(t)), 1e-4) << name << " " << t;
    }
  }
}

TEST(CliForward, ClipTextModelWithProjectionMatchesTransformers) {
  TempDir tmp;
  const auto io = test::fixture("clip_text_proj_tiny/io.safetensors");
  auto [code, out] = diffuse_cli(tmp, "forward --model " + test::fixture("clip_text_proj_tiny") + " --inputs " + io +
                                          " --out " + (tmp / "o.safetensors") + " --threads 1");
  ASSERT_EQ(code, 0) << out;
  auto got = safetensors::load(tmp / "o.safetensors");
  auto ref = safetensors::load(io);
  for (const char* t : {"text_embeds", "last_hidden_state", "hidden_states.0", "hidden_states.1", "hidden_states.2"}) {
    ASSERT_TRUE(got.count(t)) << t;
    EXPECT_LE(test::max_abs_diff(got.at(t), ref.at(t)), 1e-4) << t;
  }
  EXPECT_FALSE(got.count("pooler_output"));  // transformers' class returns text_embeds instead
}

}  // namespace
}  // namespace diffuse
