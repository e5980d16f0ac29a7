// A1111 prompt syntax: parse_prompt_attention's docstring cases, BREAK, escapes; 75-token
// chunks with comma backtracking; the weighting math on the tiny fixture text encoder, and
// bit-for-bit equality with the plain diffusers encoding for prompts without syntax.
#include "pipelines/prompt_weights.h"

#include <gtest/gtest.h>

#include "fixtures.h"
#include "models/error_of.h"
#include "pipelines/sd_pipeline.h"
#include "sd_tiny_text.h"

namespace diffuse {
namespace {

using Frags = std::vector<std::pair<std::string, double>>;

void expect_parse(const std::string& prompt, const Frags& want) {
  auto got = parse_prompt_attention(prompt);
  ASSERT_EQ(got.size(), want.size()) << prompt;
  for (size_t i = 0; i < want.size(); ++i) {
    EXPECT_EQ(got[i].text, want[i].first) << prompt << " fragment " << i;
    EXPECT_NEAR(got[i].weight, want[i].second, 1e-12) << prompt << " fragment " << i;
  }
}

TEST(PromptWeights, ParsesA1111DocstringExamples) {
  expect_parse("normal text", {{"normal text", 1.0}});
  expect_parse("an (important) word", {{"an ", 1.0}, {"important", 1.1}, {" word", 1.0}});
  expect_parse("(unbalanced", {{"unbalanced", 1.1}});
  expect_parse("\\(literal\\]", {{"(literal]", 1.0}});
  expect_parse("(unnecessary)(parens)", {{"unnecessaryparens", 1.1}});
  expect_parse("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).", {{"a ", 1.0},
                                                                       {"house", 1.1 * 1.1 * 1.3},
                                                                       {" ", 1.1},
                                                                       {"on", 1.0},
                                                                       {" a ", 1.1},
                                                                       {"hill", 0.55},
                                                                       {", sun, ", 1.1},
                                                                       {"sky", 1.1 * 1.1 * 1.1 * 1.1},
                                                                       {".", 1.1}});
  expect_parse("", {{"", 1.0}});
}

TEST(PromptWeights, ParsesBreakEscapesAndStrayBrackets) {
  expect_parse("a cat BREAK a dog", {{"a cat", 1.0}, {"BREAK", -1.0}, {"a dog", 1.0}});
  expect_parse("BREAKFAST", {{"BREAKFAST", 1.0}});
  expect_parse("((word))", {{"word", 1.21}});
  expect_parse("[word]", {{"word", 1 / 1.1}});
  expect_parse("[[word]]", {{"word", 1 / 1.21}});
  expect_parse("(word: 1.3 )", {{"word", 1.3}});
  expect_parse("a) b] c", {{"a) b] c", 1.0}});
  expect_parse("time: 1.5) x", {{"time: 1.5) x", 1.0}});
  expect_parse("a \\\\ b \\x", {{"a \\ b x", 1.0}});
  expect_parse("[unclosed (x", {{"unclosed ", 1 / 1.1}, {"x", 1.1 / 1.1}});
  EXPECT_NE(test::error_of([] { parse_prompt_attention("(a:1.2.3)"); }).find("1.2.3"), std::string::npos);
}

struct PromptWeightsTiny : ::testing::Test {
  static const SDTextEncoder& te() {
    static const SDTextEncoder t = [] {
      static test::TempDir dir;
      test::write_tiny_tokenizer(dir / "tokenizer");
      SDTextEncoder e;
      e.tokenizer = CLIPTokenizer::from_folder(dir / "tokenizer");
      e.model = load_clip_text_model(test::fixture("sd_pipeline_tiny/text_encoder"));
      return e;
    }();
    return t;
  }
};

TEST_F(PromptWeightsTiny, PlainPromptIsBitIdenticalToDiffusersEncoding) {
  for (const std::string p : {"a photo of a cat", "", "time: 1) and more, words"})
    for (int skip : {0, 1}) {
      auto plain = te().encode(p, skip);
      auto weighted = encode_weighted_prompt(te(), p, skip);
      ASSERT_EQ(weighted.sizes(), plain.sizes());
      EXPECT_TRUE(torch::equal(weighted, plain)) << p << " clip skip " << skip;
    }
}

TEST_F(PromptWeightsTiny, LongPromptGivesThreeChunks) {
  std::string prompt;
  while (te().tokenizer.encode(prompt).size() < 200) prompt += "a ";
  ASSERT_EQ(te().tokenizer.encode(prompt).size(), 200u);
  auto chunks = prompt_chunks(te().tokenizer, prompt);
  ASSERT_EQ(chunks.size(), 3u);
  for (const auto& c : chunks) {
    ASSERT_EQ(c.ids.size(), 77u);
    EXPECT_EQ(c.ids.front(), te().tokenizer.bos_id());
  }
  EXPECT_EQ(chunks[0].ids[76], te().tokenizer.eos_id());
  EXPECT_EQ(chunks[2].ids[51], te().tokenizer.eos_id());  // 50 tokens, then the end token
  auto z = encode_weighted_prompt(te(), prompt);
  EXPECT_EQ(z.sizes(), (std::vector<int64_t>{1, 231, 32}));
  // Each chunk is encoded on its own.
  auto first = te().encode_ids(torch::tensor(chunks[1].ids).unsqueeze(0));
  EXPECT_TRUE(torch::equal(z.slice(1, 77, 154), first));
}

TEST_F(PromptWeightsTiny, BreakAndCommaBacktrackStartNewChunks) {
  auto chunks = prompt_chunks(te().tokenizer, "a BREAK a");
  ASSERT_EQ(chunks.size(), 2u);
  EXPECT_EQ(chunks[0].ids[2], te().tokenizer.eos_id());
  // 70 tokens, a comma, then 10 more: the 4 words after the comma that would overflow move along.
  std::string prompt;
  for (int i = 0; i < 70; ++i) prompt += "a ";
  prompt += ", ";
  for (int i = 0; i < 10; ++i) prompt += "b ";
  chunks = prompt_chunks(te().tokenizer, prompt);
  ASSERT_EQ(chunks.size(), 2u);
  const int64_t comma = te().tokenizer.token_id(",</w>");
  EXPECT_EQ(chunks[0].ids[71], comma);
  EXPECT_EQ(chunks[0].ids[72], te().tokenizer.eos_id());  // chunk ends at the comma
  EXPECT_EQ(chunks[1].ids[11], te().tokenizer.eos_id());  // all 10 b's in the second chunk
}

TEST_F(PromptWeightsTiny, WeightsScaleTokensAndRestoreTheMean) {
  const std::string prompt = "a (photo:1.5) of [a] cat";
  auto chunks = prompt_chunks(te().tokenizer, prompt);
  ASSERT_EQ(chunks.size(), 1u);
  const auto& c = chunks[0];
  auto ids = te().tokenizer.encode("a photo of a cat");
  auto photo = te().tokenizer.encode("photo");
  ASSERT_EQ(std::vector<int64_t>(c.ids.begin() + 1, c.ids.begin() + 1 + static_cast<int64_t>(ids.size())), ids);
  EXPECT_EQ(c.weights[1], 1.0);
  EXPECT_EQ(c.weights[2], 1.5);
  for (size_t i = 0; i < photo.size(); ++i) EXPECT_EQ(c.weights[2 + i], 1.5);
  const size_t a2 = 2 + photo.size() + te().tokenizer.encode("of").size();
  EXPECT_NEAR(c.weights[a2], 1 / 1.1, 1e-12);

  auto z = te().encode_ids(torch::tensor(c.ids).unsqueeze(0));
  auto w = torch::tensor(c.weights, torch::kFloat64).to(torch::kFloat32).view({1, -1, 1});
  auto want = z * w;
  want = want * (z.mean() / want.mean());
  auto got = encode_weighted_prompt(te(), prompt);
  EXPECT_TRUE(torch::equal(got, want));
  EXPECT_NEAR(got.mean().item<double>(), z.mean().item<double>(), 1e-6);
  EXPECT_FALSE(torch::allclose(got, z));
}

TEST_F(PromptWeightsTiny, NegativePromptPaddedToTheSameChunkCount) {
  std::string prompt;
  for (int i = 0; i < 100; ++i) prompt += "a ";
  auto cond = encode_weighted_prompt(te(), prompt);
  auto uncond = encode_weighted_prompt(te(), "");
  ASSERT_EQ(cond.size(1), 154);
  auto before = uncond.clone();
  match_prompt_lengths(&te(), cond, uncond);
  ASSERT_EQ(uncond.size(1), 154);
  EXPECT_TRUE(torch::equal(uncond.slice(1, 0, 77), before));
  EXPECT_TRUE(torch::equal(uncond.slice(1, 77, 154), before));
  EXPECT_TRUE(torch::equal(encode_weighted_prompt(te(), "", 0, 2), uncond));
}

}  // namespace
}  // namespace diffuse
