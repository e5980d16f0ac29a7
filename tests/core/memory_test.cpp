// Memory policies: while large frees go back to the system, tensors of 2 MiB or more live in
// mappings of their own, aligned to 2 MiB and advised for huge pages, gone once freed; blocks
// taken through ATen's raw interface (oneDNN's buffers) of either size come back the same way;
// training keeps freed blocks in the heap and maps only blocks above 32 MiB itself.
#include "core/memory.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>

namespace diffuse {
namespace {

constexpr size_t kMiB = size_t{1} << 20;

// The VmFlags of the mapping of /proc/self/smaps that holds `p` ("" when no mapping holds it).
std::string mapping_flags(const void* p) {
  const auto addr = reinterpret_cast<uintptr_t>(p);
  std::ifstream f("/proc/self/smaps");
  std::string line;
  bool inside = false;
  while (std::getline(f, line)) {
    uintptr_t lo = 0, hi = 0;
    char dash = 0;
    std::istringstream head(line);
    if (head >> std::hex >> lo >> dash >> hi && dash == '-') {  // "lo-hi perms offset dev inode path"
      inside = lo <= addr && addr < hi;
      continue;
    }
    if (inside && line.rfind("VmFlags:", 0) == 0) return line.substr(8) + " ";
  }
  return "";
}

// Kernels built without transparent huge pages refuse the advice.
bool kernel_has_huge_pages() { return std::ifstream("/sys/kernel/mm/transparent_hugepage/enabled").good(); }

TEST(Memory, LargeTensorsGetHugePageMappingsOfTheirOwnWhileFreesGoBack) {
  return_large_frees_to_os();
  EXPECT_TRUE(large_tensors_get_huge_pages(2 * kMiB));
  EXPECT_FALSE(large_tensors_get_huge_pages(2 * kMiB - 1));

  auto big = torch::arange(static_cast<int64_t>(3 * kMiB / sizeof(float)), torch::kFloat32);  // 3 MiB
  const void* p = big.data_ptr();
  EXPECT_EQ(reinterpret_cast<uintptr_t>(p) % (2 * kMiB), 0u);
  const std::string flags = mapping_flags(p);
  ASSERT_FALSE(flags.empty());
  if (kernel_has_huge_pages()) {
    EXPECT_NE(flags.find(" hg "), std::string::npos) << "VmFlags:" << flags;  // MADV_HUGEPAGE
  }
  // the values are those of any other tensor
  EXPECT_EQ(big[0].item<float>(), 0.f);
  EXPECT_EQ(big[-1].item<float>(), static_cast<float>(big.numel() - 1));
  EXPECT_TRUE(torch::equal(big * 2, torch::arange(0, 2 * big.numel(), 2, torch::kFloat32)));

  big = torch::Tensor();
  EXPECT_EQ(mapping_flags(p), "") << "the mapping outlived its tensor";

  // below 2 MiB: glibc's blocks as before
  auto small = torch::ones({static_cast<int64_t>(kMiB / sizeof(float))});
  EXPECT_EQ(mapping_flags(small.data_ptr()).find(" hg "), std::string::npos);
}

TEST(Memory, RawBlocksOfEitherSizeAreFreedByTheirOwnAllocator) {
  return_large_frees_to_os();
  c10::Allocator* a = c10::GetAllocator(c10::DeviceType::CPU);
  for (size_t n : {size_t{64}, size_t{256} * 1024, 4 * kMiB, 4 * kMiB + 1}) {
    void* p = a->raw_allocate(n);
    ASSERT_NE(p, nullptr);
    static_cast<unsigned char*>(p)[0] = 1;
    static_cast<unsigned char*>(p)[n - 1] = 2;
    EXPECT_EQ(reinterpret_cast<uintptr_t>(p) % (2 * kMiB) == 0, n >= 2 * kMiB) << n;
    a->raw_deallocate(p);
    if (n >= 2 * kMiB) {
      EXPECT_EQ(mapping_flags(p), "") << n;
    }
  }
}

TEST(Memory, BlocksTakenBeforeThePolicyChangesAreFreedAfterIt) {
  return_large_frees_to_os();
  auto mapped = torch::zeros({static_cast<int64_t>(4 * kMiB)}, torch::kUInt8);
  const void* p = mapped.data_ptr();
  reuse_large_frees();
  EXPECT_FALSE(large_tensors_get_huge_pages(4 * kMiB));
  auto heap = torch::zeros({static_cast<int64_t>(4 * kMiB)}, torch::kUInt8);
  EXPECT_EQ(mapping_flags(heap.data_ptr()).find(" hg "), std::string::npos);
  mapped = torch::Tensor();
  EXPECT_EQ(mapping_flags(p), "");
  return_large_frees_to_os();
  heap = torch::Tensor();  // the heap's block, freed while tensors get mappings again
}

#if defined(__has_feature)
#if __has_feature(address_sanitizer)
#define DIFFUSE_TEST_ASAN 1
#endif
#endif
#if defined(__SANITIZE_ADDRESS__)
#define DIFFUSE_TEST_ASAN 1
#endif

// A freed block of 16 MiB: unmapped at once while large frees go back to the system, kept in the
// heap (still resident, and reused) while training keeps freed blocks.
TEST(Memory, TrainingKeepsFreedBlocksForTheNextStep) {
#ifdef DIFFUSE_TEST_ASAN
  GTEST_SKIP() << "the sanitizer's malloc replaces glibc's, whose policies this test checks";
#endif
  constexpr size_t n = 16 * kMiB;
  auto resident_after_free = [&] {
    auto* p = static_cast<volatile unsigned char*>(std::malloc(n));
    EXPECT_NE(p, nullptr);
    for (size_t i = 0; i < n; i += 4096) p[i] = 1;  // volatile: the block is used, not optimised away
    const int64_t with = current_rss_bytes();
    std::free(const_cast<unsigned char*>(p));
    return with - current_rss_bytes();  // what the free gave back
  };
  return_large_frees_to_os();
  EXPECT_GT(resident_after_free(), static_cast<int64_t>(n / 2));
  keep_freed_blocks_for_reuse();
  EXPECT_FALSE(large_tensors_get_huge_pages(4 * kMiB));
  resident_after_free();  // the heap grows to hold it once
  EXPECT_LT(resident_after_free(), static_cast<int64_t>(n / 8));
  return_large_frees_to_os();
}

// Above 32 MiB glibc maps and unmaps every block whatever its settings; a training run gives those
// huge-page mappings of their own (one fault per 2 MiB instead of per 4 KiB), and only those.
TEST(Memory, TrainingGivesBlocksAboveGlibcsMmapThresholdHugePages) {
  keep_freed_blocks_for_reuse();
  EXPECT_FALSE(large_tensors_get_huge_pages(32 * kMiB));
  EXPECT_TRUE(large_tensors_get_huge_pages(32 * kMiB + 1));
  auto big = torch::ones({static_cast<int64_t>(40 * kMiB / sizeof(float))});
  const void* p = big.data_ptr();
  EXPECT_EQ(reinterpret_cast<uintptr_t>(p) % (2 * kMiB), 0u);
  if (kernel_has_huge_pages()) {
    EXPECT_NE(mapping_flags(p).find(" hg "), std::string::npos) << "VmFlags:" << mapping_flags(p);
  }
  EXPECT_EQ(big.sum().item<float>(), static_cast<float>(big.numel()));
  big = torch::Tensor();
  EXPECT_EQ(mapping_flags(p), "") << "the mapping outlived its tensor";
  return_large_frees_to_os();
}

}  // namespace
}  // namespace diffuse
