#include "models/clip_tokenizer.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "fixtures.h"
#include "models/clip_text_fix.h"
#include "models/error_of.h"

using namespace diffuse;
using diffuse::test::error_of;
using diffuse::test::fixture;
using diffuse::test::TempDir;

namespace fs = std::filesystem;

namespace {

nlohmann::json load_cases() {
  std::ifstream f(fixture("tokenizer/cases.json"));
  return nlohmann::json::parse(f);
}

// A transformers tokenizer folder: the fixture's tokenizer_config.json / special_tokens_map.json
// plus the vocab.json / merges.txt they were saved with (kept once in clip_vocab/).
std::string tokenizer_folder(const TempDir& tmp, const std::string& variant) {
  const auto dir = tmp / variant;
  fs::create_directories(dir);
  for (const auto& e : fs::directory_iterator(fixture("tokenizer/" + variant)))
    fs::copy_file(e.path(), dir + "/" + e.path().filename().string());
  fs::copy_file(fixture("clip_vocab/vocab.json"), dir + "/vocab.json");
  fs::copy_file(fixture("clip_vocab/merges.txt"), dir + "/merges.txt");
  return dir;
}

std::vector<int64_t> ids_of(const nlohmann::json& j) { return j.get<std::vector<int64_t>>(); }

// Every case: BPE ids, the 77-id rows of both paddings, and the untruncated row.
void check_all_cases(const CLIPTokenizer& sd1, const CLIPTokenizer& sd2, const std::string& what) {
  const auto cases = load_cases();
  ASSERT_EQ(cases.at("cases").size(), 61u);
  int checked = 0;
  for (const auto& c : cases.at("cases")) {
    const auto prompt = c.at("prompt").get<std::string>();
    SCOPED_TRACE(what + ": prompt '" + prompt + "'");
    EXPECT_EQ(sd1.encode(prompt), ids_of(c.at("hf_bpe")));
    EXPECT_EQ(sd1.tokens(prompt), c.at("hf_tokens").get<std::vector<std::string>>());
    EXPECT_EQ(sd1.tokenize(prompt, 1000, false), ids_of(c.at("hf_input_ids_untruncated")));
    EXPECT_EQ(sd1.tokenize(prompt), ids_of(c.at("hf_input_ids")));
    EXPECT_EQ(sd2.tokenize(prompt), ids_of(c.at("hf_input_ids_sd2_pad")));
    ++checked;
  }
  EXPECT_EQ(checked, 61);
}

}  // namespace

TEST(ClipTokenizer, AllCasesFromTokenizerFolders) {
  TempDir tmp;
  const auto sd1 = CLIPTokenizer::from_folder(tokenizer_folder(tmp, "tokenizer_sd1"));
  const auto sd2 = CLIPTokenizer::from_folder(tokenizer_folder(tmp, "tokenizer_sd2"));
  EXPECT_EQ(sd1.pad_id(), 49407);
  EXPECT_EQ(sd2.pad_id(), 0);
  check_all_cases(sd1, sd2, "folder");
}

TEST(ClipTokenizer, AllCasesFromBuiltinVocabulary) {
  const auto sd1 = CLIPTokenizer::builtin();
  const auto sd2 = CLIPTokenizer::builtin("!");
  check_all_cases(sd1, sd2, "builtin");
}

TEST(ClipTokenizer, BuiltinVocabularyEqualsTransformersFiles) {
  const auto b = CLIPTokenizer::builtin();
  const auto f = CLIPTokenizer::from_folder(fixture("clip_vocab"));
  ASSERT_EQ(b.vocab_size(), 49408);
  ASSERT_EQ(f.vocab_size(), 49408);
  for (int64_t i = 0; i < b.vocab_size(); ++i) ASSERT_EQ(b.id_to_token(i), f.id_to_token(i)) << "id " << i;
  EXPECT_EQ(b.bos_id(), 49406);
  EXPECT_EQ(b.eos_id(), 49407);
  EXPECT_EQ(b.token_id("a</w>"), 320);
  EXPECT_EQ(b.token_id("photo</w>"), 1125);
  EXPECT_EQ(b.token_id("cat</w>"), 2368);
  EXPECT_EQ(b.token_id("!"), 0);
  EXPECT_NE(CLIPTokenizer::builtin_vocab_path().find("bpe_simple_vocab_16e6.txt.gz"), std::string::npos);
}

TEST(ClipTokenizer, TruncationKeepsEndToken) {
  const auto t = CLIPTokenizer::builtin();
  std::string long_prompt;
  for (int i = 0; i < 100; ++i) long_prompt += "cat ";
  const auto ids = t.tokenize(long_prompt);
  ASSERT_EQ(ids.size(), 77u);
  EXPECT_EQ(ids.front(), 49406);
  EXPECT_EQ(ids[75], 2368);
  EXPECT_EQ(ids.back(), 49407);
  const auto unpadded = t.tokenize("a cat", 77, false);
  EXPECT_EQ(unpadded, (std::vector<int64_t>{49406, 320, 2368, 49407}));
  EXPECT_EQ(t.tokenize("", 77, false), (std::vector<int64_t>{49406, 49407}));
  EXPECT_NE(error_of([&] { t.tokenize("x", 1); }).find("max_len"), std::string::npos);
}

TEST(ClipTokenizer, TextFixing) {
  EXPECT_EQ(CLIPTokenizer::normalize("  Tom &amp; Jerry\t&lt;3  "), "tom & jerry <3");
  EXPECT_EQ(CLIPTokenizer::normalize("<b>&amp;</b>"), "<b>&amp;</b>");        // '<' turns HTML unescaping off
  EXPECT_EQ(CLIPTokenizer::normalize("caf\xc3\x83\xc2\xa9"), "caf\xc3\xa9");  // mojibake "cafÃ©"
  // Mojibake next to correct text: "café cafÃ© itâ€™s" -> "café café it's".
  EXPECT_EQ(CLIPTokenizer::normalize("caf\xc3\xa9 caf\xc3\x83\xc2\xa9 it\xc3\xa2\xe2\x82\xac\xe2\x84\xa2s"),
            "caf\xc3\xa9 caf\xc3\xa9 it's");
  EXPECT_EQ(CLIPTokenizer::normalize("e\xcc\x81"), "\xc3\xa9");  // NFC
  EXPECT_EQ(CLIPTokenizer::normalize("\xef\xac\x81"), "fi");     // ligature
  EXPECT_EQ(CLIPTokenizer::normalize("\xef\xbc\xa1\xe3\x80\x80"
                                     "B"),
            "a b");  // full width
  EXPECT_EQ(CLIPTokenizer::normalize("\xce\xa3\xce\x9f\xce\xa6\xce\x9f\xce\xa3"),
            "\xcf\x83\xce\xbf\xcf\x86\xce\xbf\xcf\x82");  // ΣΟΦΟΣ -> σοφος (final sigma)
  EXPECT_EQ(CLIPTokenizer::normalize("a\x07"
                                     "b\x1b[31mc"),
            "abc");  // control chars, terminal escapes
  // Final sigma needs a cased letter before it: after an uncased letter (Arabic) it stays medial.
  EXPECT_EQ(CLIPTokenizer::normalize("\xd8\xb1\xce\xa3"), "\xd8\xb1\xcf\x83");
  // Accented capital + dash is valid UTF-8 in latin-1 bytes but not typical mojibake: kept.
  EXPECT_EQ(CLIPTokenizer::normalize("CAF\xc3\x89\xe2\x80\x94"
                                     "BAR"),
            "caf\xc3\xa9\xe2\x80\x94"
            "bar");
  // Invalid UTF-8 becomes U+FFFD rather than failing.
  EXPECT_EQ(CLIPTokenizer::normalize("a\xff"), "a\xef\xbf\xbd");
  EXPECT_TRUE(clip_text::is_letter(U'\u00e9'));
  EXPECT_TRUE(clip_text::is_letter(U'\u732b'));
  EXPECT_TRUE(clip_text::is_number(U'\u0663'));
  EXPECT_FALSE(clip_text::is_letter(U'\U0001F431'));
  EXPECT_TRUE(clip_text::is_space(U'\u3000'));
  EXPECT_FALSE(clip_text::is_space(U'\u200b'));
}

TEST(ClipTokenizer, Sd2PadTokenIsCutFromText) {
  TempDir tmp;
  const auto sd2 = CLIPTokenizer::from_folder(tokenizer_folder(tmp, "tokenizer_sd2"));
  EXPECT_EQ(sd2.encode("wow!"), (std::vector<int64_t>{sd2.token_id("wow</w>"), 0}));
  const auto sd1 = CLIPTokenizer::builtin();
  EXPECT_EQ(sd1.encode("wow!"), (std::vector<int64_t>{sd1.token_id("wow</w>"), sd1.token_id("!</w>")}));
}

TEST(ClipTokenizer, CopiesShareNothingMutable) {
  const auto a = CLIPTokenizer::builtin();
  CLIPTokenizer b = a;
  EXPECT_EQ(a.encode("a photo of a cat"), b.encode("a photo of a cat"));
  CLIPTokenizer c = std::move(b);
  EXPECT_EQ(c.encode("a photo of a cat"), (std::vector<int64_t>{320, 1125, 539, 320, 2368}));
}

TEST(ClipTokenizer, BadInput) {
  TempDir tmp;
  fs::create_directories(tmp / "empty");
  auto e = error_of([&] { CLIPTokenizer::from_folder(tmp / "empty"); });
  EXPECT_NE(e.find("vocab.json"), std::string::npos) << e;
  EXPECT_NE(e.find("does not exist"), std::string::npos) << e;
  e = error_of([&] { CLIPTokenizer::from_folder(tmp / "missing"); });
  EXPECT_NE(e.find("missing"), std::string::npos) << e;

  fs::create_directories(tmp / "nomerges");
  fs::copy_file(fixture("clip_vocab/vocab.json"), tmp / "nomerges/vocab.json");
  e = error_of([&] { CLIPTokenizer::from_folder(tmp / "nomerges"); });
  EXPECT_NE(e.find("merges.txt"), std::string::npos) << e;

  fs::create_directories(tmp / "badjson");
  { std::ofstream(tmp / "badjson/vocab.json") << "{not json"; }
  { std::ofstream(tmp / "badjson/merges.txt") << "#version: 0.2\na b\n"; }
  e = error_of([&] { CLIPTokenizer::from_folder(tmp / "badjson"); });
  EXPECT_NE(e.find("vocab.json"), std::string::npos) << e;
  EXPECT_NE(e.find("invalid JSON"), std::string::npos) << e;

  fs::create_directories(tmp / "nospecial");
  { std::ofstream(tmp / "nospecial/vocab.json") << R"({"a": 0, "b": 1})"; }
  { std::ofstream(tmp / "nospecial/merges.txt") << "#version: 0.2\na b\n"; }
  e = error_of([&] { CLIPTokenizer::from_folder(tmp / "nospecial"); });
  EXPECT_NE(e.find("<|startoftext|>"), std::string::npos) << e;

  e = error_of([&] { CLIPTokenizer::from_bpe_file(tmp / "nope.txt.gz"); });
  EXPECT_NE(e.find("nope.txt.gz"), std::string::npos) << e;
  { std::ofstream(tmp / "short.txt") << "header\na b\n"; }
  e = error_of([&] { CLIPTokenizer::from_bpe_file(tmp / "short.txt"); });
  EXPECT_NE(e.find("merges"), std::string::npos) << e;
}

TEST(ClipTokenizer, ArbitraryBytesNeverFail) {
  const auto t = CLIPTokenizer::builtin();
  uint32_t state = 12345;
  for (int n = 0; n < 200; ++n) {
    std::string s;
    const int len = n % 40;
    for (int i = 0; i < len; ++i) {
      state = state * 1664525u + 1013904223u;
      s += static_cast<char>(state >> 24);
    }
    const auto ids = t.tokenize(s);
    ASSERT_EQ(ids.size(), 77u);
    for (auto id : ids) ASSERT_TRUE(id >= 0 && id < t.vocab_size());
  }
}

TEST(ClipTokenizer, ReducedVocabularyTokenizesItsTextsAsBefore) {
  const auto full = CLIPTokenizer::builtin();
  std::vector<std::string> texts;
  const auto cases = load_cases();
  for (const auto& c : cases.at("cases")) texts.push_back(c.at("prompt").get<std::string>());
  std::vector<int64_t> old_ids;
  const auto small = full.reduced(texts, &old_ids);
  ASSERT_EQ(static_cast<int64_t>(old_ids.size()), small.vocab_size());
  EXPECT_GT(small.vocab_size(), 512);
  EXPECT_LT(small.vocab_size(), 2000);
  EXPECT_EQ(small.bos_id(), small.vocab_size() - 2);
  EXPECT_EQ(small.eos_id(), small.vocab_size() - 1);
  EXPECT_EQ(small.pad_id(), small.eos_id());
  for (int64_t i = 0; i < small.vocab_size(); ++i) ASSERT_EQ(small.id_to_token(i), full.id_to_token(old_ids[i]));
  TempDir tmp;
  small.save(tmp / "small");
  const auto saved = CLIPTokenizer::from_folder(tmp / "small");
  ASSERT_EQ(saved.vocab_size(), small.vocab_size());
  for (const auto& text : texts) {
    SCOPED_TRACE(text);
    EXPECT_EQ(small.tokens(text), full.tokens(text));
    const auto ids = small.tokenize(text);
    std::vector<int64_t> mapped;
    for (const auto id : ids) mapped.push_back(old_ids[static_cast<size_t>(id)]);
    EXPECT_EQ(mapped, full.tokenize(text));
    EXPECT_EQ(saved.tokenize(text), ids);
  }
  // Other text still tokenizes, into pieces of the kept tokens that spell the same bytes.
  for (const std::string text : {"a zebra in quicksand", "héllo wörld 123", "\xF0\x9F\x98\x80 emoji"}) {
    SCOPED_TRACE(text);
    std::string a, b;
    for (const auto& t : small.tokens(text)) {
      ASSERT_GE(small.token_id(t), 0) << t;
      a += t;
    }
    for (const auto& t : full.tokens(text)) b += t;
    EXPECT_EQ(a, b);
  }
  // SD 2.x padding ("!", a byte symbol) keeps its id; added tokens cannot be reduced.
  const auto sd2 = CLIPTokenizer::builtin("!").reduced({"a cat"});
  EXPECT_EQ(sd2.pad_id(), 0);
  EXPECT_EQ(sd2.eos_id(), sd2.vocab_size() - 1);
  auto added = CLIPTokenizer::builtin();
  added.add_token("<cat-toy>", {49408});
  EXPECT_NE(error_of([&] { added.reduced({"a cat"}); }).find("added tokens"), std::string::npos);
}
