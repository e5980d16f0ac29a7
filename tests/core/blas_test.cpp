// The BLAS kernels behind fp32 matrix products: OpenBLAS's fallback for CPUs it does not know is
// replaced by the kernels of the CPU's instruction sets; its other choices and the user's are kept.
#include "core/blas.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>

#include "cli/run_cli.h"

namespace diffuse {
namespace {

#if defined(__x86_64__) || defined(__i386__)
bool cpu_has_avx2_fma() { return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"); }
#else
bool cpu_has_avx2_fma() { return false; }
#endif

TEST(BlasKernels, OnlyOpenBlasFallbackIsReplaced) {
  EXPECT_EQ(blas_kernels_for("Prescott", /*avx2_fma=*/true, /*avx512=*/true), "SkylakeX");
  EXPECT_EQ(blas_kernels_for("Prescott", true, false), "Haswell");
  EXPECT_EQ(blas_kernels_for("Prescott", false, false), "");  // nothing better to run
  // a CPU OpenBLAS recognised keeps its choice, even where another set might be wider
  EXPECT_EQ(blas_kernels_for("Zen", true, true), "");
  EXPECT_EQ(blas_kernels_for("Haswell", true, true), "");
  EXPECT_EQ(blas_kernels_for("SkylakeX", true, true), "");
}

// Prints the kernels in use, for the child process of UserChoiceIsKept.
TEST(BlasKernels, ReportsTheKernelsInUse) {
  const BlasKernels k = blas_kernels();
  EXPECT_EQ(k.in_use.empty(), k.detected.empty());
  std::printf("blas kernels in use: [%s], OpenBLAS chose [%s]\n", k.in_use.c_str(), k.detected.c_str());
}

TEST(BlasKernels, ProductsRunOnTheCpusVectorKernels) {
  const BlasKernels k = blas_kernels();
  if (k.detected.empty()) GTEST_SKIP() << "the BLAS is not OpenBLAS";
  if (!cpu_has_avx2_fma()) GTEST_SKIP() << "the CPU has neither AVX2 nor AVX-512";
  if (std::getenv("OPENBLAS_CORETYPE")) GTEST_SKIP() << "OPENBLAS_CORETYPE chooses the kernels";
  EXPECT_NE(k.in_use, "Prescott") << "OpenBLAS chose " << k.detected;
  EXPECT_EQ(std::getenv("OPENBLAS_CORETYPE"), nullptr);  // not passed on to child processes
  // The kernels now in use compute: a product against the same in double precision.
  torch::manual_seed(3);
  const auto a = torch::randn({300, 200}), b = torch::randn({200, 170});
  const auto ref = torch::mm(a.to(torch::kFloat64), b.to(torch::kFloat64));
  const auto got = torch::mm(a, b).to(torch::kFloat64);
  EXPECT_LT((got - ref).abs().max().item<double>(), 1e-4 * ref.abs().max().item<double>());
}

TEST(BlasKernels, UserChoiceIsKept) {
  if (blas_kernels().detected.empty()) GTEST_SKIP() << "the BLAS is not OpenBLAS";
  if (!cpu_has_avx2_fma()) GTEST_SKIP() << "Haswell kernels need AVX2";
  // The shell's /proc/self/exe would be the shell: this binary's path is read here.
  const std::string self = std::filesystem::read_symlink("/proc/self/exe").string();
  const std::string out = test::run_command("OPENBLAS_CORETYPE=Haswell '" + self +
                                            "' --gtest_filter=BlasKernels.ReportsTheKernelsInUse 2>&1")
                              .output;
  EXPECT_NE(out.find("blas kernels in use: [Haswell]"), std::string::npos) << out;
}

}  // namespace
}  // namespace diffuse
