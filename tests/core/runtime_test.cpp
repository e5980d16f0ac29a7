// Runtime settings: which compute dtype "auto" stands for on a CPU with and without native bf16;
// helper threads that run their tensor operations alone.
#include "core/runtime.h"

#include <gtest/gtest.h>

#include <chrono>
#include <filesystem>
#include <thread>

namespace diffuse {
namespace {

const char* kCpuinfoAvx512Bf16 =
    "processor\t: 0\nmodel name\t: AMD EPYC\n"
    "flags\t\t: fpu sse2 avx2 avx512f avx512bw avx512_bf16 avx512_vnni\n\n"
    "processor\t: 1\nflags\t\t: fpu sse2 avx2 avx512f avx512bw avx512_bf16 avx512_vnni\n";
const char* kCpuinfoAmx = "processor\t: 0\nflags\t\t: avx512f amx_bf16 amx_tile amx_int8\n";
const char* kCpuinfoAvx2 = "processor\t: 0\nflags\t\t: fpu sse2 avx2 fma f16c\nbugs\t\t: avx512_bf16_fake\n";

TEST(Runtime, NativeBf16ComesFromTheCpuFlags) {
  EXPECT_TRUE(cpuinfo_has_native_bf16(kCpuinfoAvx512Bf16));
  EXPECT_TRUE(cpuinfo_has_native_bf16(kCpuinfoAmx));
  // whole flag names on "flags" lines only: avx512bw is not avx512_bf16, other lines do not count
  EXPECT_FALSE(cpuinfo_has_native_bf16(kCpuinfoAvx2));
  EXPECT_FALSE(cpuinfo_has_native_bf16("flags\t\t: avx512bf16x avx512bw\n"));
  EXPECT_FALSE(cpuinfo_has_native_bf16(""));
}

TEST(Runtime, AutoDtypeIsBf16OnlyOnACpuWithNativeBf16) {
  const torch::Device cpu(torch::kCPU), cuda(torch::kCUDA, 0);
  EXPECT_EQ(resolve_dtype("auto", cpu, /*native_bf16=*/true), "bf16");
  EXPECT_EQ(resolve_dtype("auto", cpu, /*native_bf16=*/false), "fp32");
  EXPECT_EQ(resolve_dtype("auto", cuda, /*native_bf16=*/true), "fp32");  // CUDA keeps fp32 unless asked
  for (const char* d : {"fp32", "bf16", "fp16"}) {
    EXPECT_EQ(resolve_dtype(d, cpu, true), d);
    EXPECT_EQ(resolve_dtype(d, cpu, false), d);
  }
  // this machine: as its /proc/cpuinfo says
  EXPECT_EQ(resolve_dtype("auto", cpu), cpu_has_native_bf16() ? "bf16" : "fp32");
}

int threads_of_this_process() {
  int n = 0;
  for (const auto& e : std::filesystem::directory_iterator("/proc/self/task")) n += e.is_directory() ? 1 : 0;
  return n;
}

// The threads a new thread's first large tensor operation (parallel inside ATen) starts.
// Waits (up to a second) until the process's threads stop coming and going: the OpenMP team of
// a helper that has ended leaves after it, so counting at once could see it go.
void wait_for_thread_count_to_settle() {
  int last = threads_of_this_process(), same = 0;
  for (int i = 0; i < 100 && same < 5; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
    const int now = threads_of_this_process();
    same = now == last ? same + 1 : 0;
    last = now;
  }
}

int threads_started_by_a_helpers_operation(bool alone) {
  int started = -1;
  wait_for_thread_count_to_settle();
  std::thread([&] {
    if (alone) use_one_thread_here();
    const int before = threads_of_this_process();
    auto x = torch::ones({1 << 22});
    x.mul_(2.0);
    started = threads_of_this_process() - before;
  }).join();
  return started;
}

TEST(Runtime, AHelperThreadRunsItsTensorOperationsAlone) {
  const int before = at::get_num_threads();
  set_threads(2);
  int plain = 0, helper = 0;
  std::thread([&] { plain = at::get_num_threads(); }).join();
  std::thread([&] {
    use_one_thread_here();
    helper = at::get_num_threads();
  }).join();
  EXPECT_EQ(plain, 2);  // a thread otherwise starts with the process's count
  EXPECT_EQ(helper, 1);
  EXPECT_EQ(at::get_num_threads(), 2);  // the calling thread keeps its own
  // Without it, the helper's operation starts an OpenMP team of its own (one more thread).
  EXPECT_EQ(threads_started_by_a_helpers_operation(false), 1);
  EXPECT_EQ(threads_started_by_a_helpers_operation(true), 0);
  set_threads(before);
}

TEST(Runtime, OneThreadHereLastsWhileAlive) {
  const int before = at::get_num_threads();
  set_threads(2);
  {
    OneThreadHere alone;
    EXPECT_EQ(at::get_num_threads(), 1);
  }
  EXPECT_EQ(at::get_num_threads(), 2);
  set_threads(before);
}

}  // namespace
}  // namespace diffuse
