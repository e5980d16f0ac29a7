#include "core/safetensors.h"

#include <gtest/gtest.h>

#include <fstream>

#include "core/error.h"
#include "fixtures.h"

namespace diffuse {
namespace {

using test::TempDir;

void write_raw(const std::string& path, const std::string& bytes) {
  std::ofstream f(path, std::ios::binary);
  f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

// A file with the given JSON header and `data_bytes` bytes of data.
std::string make_file(const std::string& header, size_t data_bytes) {
  std::string out;
  uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<char>((n >> (8 * i)) & 0xff));
  out += header;
  out += std::string(data_bytes, '\0');
  return out;
}

std::string error_of(const std::string& path) {
  try {
    safetensors::File::open(path);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(Safetensors, RoundTripAllDtypesAndMetadata) {
  TempDir dir;
  std::map<std::string, torch::Tensor> t = {
      {"f32", torch::randn({3, 4})},
      {"f64", torch::randn({2}, torch::kFloat64)},
      {"f16", torch::randn({5, 1}).to(torch::kFloat16)},
      {"bf16", torch::randn({7}).to(torch::kBFloat16)},
      {"i64", torch::arange(10, torch::kInt64)},
      {"i32", torch::arange(3, torch::kInt32)},
      {"u8", torch::arange(9, torch::kUInt8).reshape({3, 3})},
      {"bool", torch::tensor({true, false, true})},
      {"scalar", torch::tensor(3.5f)},
      {"empty", torch::empty({0, 4})},
  };
  safetensors::save(dir / "a.safetensors", t, {{"format", "pt"}, {"note", "héllo"}});
  auto f = safetensors::File::open(dir / "a.safetensors");
  EXPECT_EQ(f.metadata().at("format"), "pt");
  EXPECT_EQ(f.metadata().at("note"), "héllo");
  ASSERT_EQ(f.tensors().size(), t.size());
  for (const auto& [k, v] : t) {
    auto r = f.get(k);
    EXPECT_EQ(r.scalar_type(), v.scalar_type()) << k;
    EXPECT_EQ(r.sizes(), v.sizes()) << k;
    EXPECT_TRUE(torch::equal(r, v)) << k;
  }
}

TEST(Safetensors, ReadsDiffusersFixture) {
  auto f = safetensors::File::open(test::fixture("unet2d_ddpm/io.safetensors"));
  auto s = f.get("sample");
  EXPECT_EQ(s.sizes(), (std::vector<int64_t>{2, 3, 16, 16}));
  EXPECT_EQ(s.scalar_type(), torch::kFloat32);
  auto w = safetensors::File::open(test::fixture("unet2d_ddpm/diffusion_pytorch_model.safetensors"));
  EXPECT_EQ(w.metadata().at("format"), "pt");
  EXPECT_GT(w.tensors().size(), 50u);
}

TEST(Safetensors, SerializedHeaderIsPaddedAndAligned) {
  auto bytes =
      safetensors::serialize({{"a", torch::ones({3}, torch::kInt8)}, {"b", torch::ones({2}, torch::kFloat64)}});
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<unsigned char>(bytes[static_cast<size_t>(i)]);
  EXPECT_EQ((8 + n) % 8, 0u);
  EXPECT_EQ(bytes.size(), 8 + n + 3 + 16);
}

TEST(Safetensors, RejectsTruncatedFile) {
  TempDir dir;
  auto bytes = safetensors::serialize({{"x", torch::randn({100})}});
  write_raw(dir / "t.safetensors", bytes.substr(0, bytes.size() - 10));
  EXPECT_NE(error_of(dir / "t.safetensors").find("out of range"), std::string::npos);
  write_raw(dir / "tiny.safetensors", "abc");
  EXPECT_NE(error_of(dir / "tiny.safetensors").find("tiny.safetensors"), std::string::npos);
}

TEST(Safetensors, RejectsAbsurdHeaderLength) {
  TempDir dir;
  std::string b(16, '\0');
  b[7] = 0x7f;  // ~9e18
  write_raw(dir / "h.safetensors", b);
  EXPECT_NE(error_of(dir / "h.safetensors").find("absurd"), std::string::npos);
  std::string c(16, '\0');
  c[0] = 100;  // 100 > remaining 8 bytes
  write_raw(dir / "h2.safetensors", c);
  EXPECT_NE(error_of(dir / "h2.safetensors").find("exceeds the file size"), std::string::npos);
}

TEST(Safetensors, RejectsInvalidJson) {
  TempDir dir;
  write_raw(dir / "j.safetensors", make_file("{\"a\": [1, 2", 0));
  EXPECT_NE(error_of(dir / "j.safetensors").find("not valid JSON"), std::string::npos);
  write_raw(dir / "k.safetensors", make_file("[1, 2]   ", 0));
  EXPECT_NE(error_of(dir / "k.safetensors").find("not a JSON object"), std::string::npos);
}

TEST(Safetensors, RejectsOverlappingAndMismatchedOffsets) {
  TempDir dir;
  write_raw(dir / "o.safetensors", make_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                                             R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                                             12));
  EXPECT_NE(error_of(dir / "o.safetensors").find("overlap"), std::string::npos);
  write_raw(dir / "m.safetensors", make_file(R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", 8));
  EXPECT_NE(error_of(dir / "m.safetensors").find("does not match shape"), std::string::npos);
  write_raw(dir / "r.safetensors", make_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}})", 8));
  EXPECT_NE(error_of(dir / "r.safetensors").find("precedes"), std::string::npos);
}

TEST(Safetensors, RejectsUnknownDtypeAndBadShape) {
  TempDir dir;
  write_raw(dir / "d.safetensors", make_file(R"({"a":{"dtype":"Q4","shape":[2],"data_offsets":[0,2]}})", 2));
  std::string e = error_of(dir / "d.safetensors");
  EXPECT_NE(e.find("unsupported dtype 'Q4'"), std::string::npos);
  EXPECT_NE(e.find("tensor 'a'"), std::string::npos);
  write_raw(dir / "s.safetensors", make_file(R"({"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", 8));
  EXPECT_NE(error_of(dir / "s.safetensors").find("non-negative"), std::string::npos);
  write_raw(dir / "n.safetensors", make_file(R"({"a":{"dtype":"F32","shape":[2]}})", 8));
  EXPECT_NE(error_of(dir / "n.safetensors").find("data_offsets"), std::string::npos);
}

TEST(Safetensors, HostileNamesAreEscapedInErrors) {
  TempDir dir;
  // A terminal escape sequence as a tensor name, and bytes that are not UTF-8 in the header.
  write_raw(dir / "e.safetensors",
            make_file(R"({"\u001b[31mred":{"dtype":"Q4","shape":[2],"data_offsets":[0,2]}})", 2));
  std::string e = error_of(dir / "e.safetensors");
  EXPECT_NE(e.find("tensor '\\x1b[31mred'"), std::string::npos) << e;
  EXPECT_EQ(e.find('\x1b'), std::string::npos);
  write_raw(dir / "u.safetensors", make_file("{\"a\xff\xfe\": 1}   ", 0));
  e = error_of(dir / "u.safetensors");
  EXPECT_EQ(e.find('\xff'), std::string::npos) << e;
  EXPECT_NE(e.find("not valid JSON"), std::string::npos) << e;
}

TEST(Safetensors, MissingFileAndMissingTensorNamed) {
  EXPECT_NE(error_of("/nonexistent/x.safetensors").find("/nonexistent/x.safetensors"), std::string::npos);
  TempDir dir;
  safetensors::save(dir / "a.safetensors", {{"x", torch::ones({1})}});
  auto f = safetensors::File::open(dir / "a.safetensors");
  try {
    f.get("y");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("'y'"), std::string::npos);
  }
}

TEST(Safetensors, MappedTensorsOutliveFileAndAreCopyOnWrite) {
  TempDir dir;
  auto x = torch::arange(16, torch::kFloat32);
  safetensors::save(dir / "a.safetensors", {{"x", x}});
  torch::Tensor y;
  {
    auto f = safetensors::File::open(dir / "a.safetensors");
    y = f.get("x");
  }
  y.mul_(2);  // writes to the private mapping only
  EXPECT_TRUE(torch::equal(y, x * 2));
  EXPECT_TRUE(torch::equal(safetensors::load(dir / "a.safetensors").at("x"), x));
}

TEST(Safetensors, SaveIsAtomicOnFailure) {
  TempDir dir;
  safetensors::save(dir / "a.safetensors", {{"x", torch::ones({2})}});
  // An unsupported dtype fails during serialisation; the old file must be intact and no temp left.
  EXPECT_THROW(safetensors::save(dir / "a.safetensors", {{"x", torch::ones({2}, torch::kComplexFloat)}}), Error);
  EXPECT_TRUE(torch::equal(safetensors::load(dir / "a.safetensors").at("x"), torch::ones({2})));
  int files = 0;
  for (auto& e : std::filesystem::directory_iterator(dir.path)) (void)e, ++files;
  EXPECT_EQ(files, 1);
}

}  // namespace
}  // namespace diffuse
