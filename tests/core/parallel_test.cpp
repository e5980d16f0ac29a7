// parallel_chunks: every item once, from several threads whose tensor operations stay on
// themselves, and the first error rethrown after the rest ran.
#include "core/parallel.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <atomic>
#include <mutex>
#include <set>
#include <stdexcept>
#include <thread>
#include <vector>

namespace diffuse {
namespace {

TEST(ParallelChunks, CoversEveryItemOnceFromSeveralThreads) {
  const auto caller = std::this_thread::get_id();
  const int before = at::get_num_threads();
  for (int threads : {1, 2, 3}) {
    std::vector<std::atomic<int>> seen(100);
    std::mutex mu;
    std::set<std::thread::id> ids;
    std::vector<int> counts;  // ATen's thread count inside each chunk
    parallel_chunks(
        100, 7,
        [&](int64_t b, int64_t e) {
          EXPECT_LT(b, e);
          for (int64_t i = b; i < e; ++i) seen[static_cast<size_t>(i)]++;
          std::lock_guard<std::mutex> lock(mu);
          ids.insert(std::this_thread::get_id());
          counts.push_back(at::get_num_threads());
        },
        threads);
    for (const auto& s : seen) EXPECT_EQ(s.load(), 1);
    EXPECT_EQ(ids.size(), static_cast<size_t>(threads));
    EXPECT_TRUE(ids.count(caller));                                              // the calling thread takes a chunk
    for (int c : counts) EXPECT_EQ(c, threads > 1 ? 1 : at::get_num_threads());  // alone when split
    EXPECT_EQ(at::get_num_threads(), before);                                    // the caller's count back
  }
}

TEST(ParallelChunks, FewItemsUseFewerThreadsAndNoneRunNothing) {
  std::set<std::thread::id> ids;
  std::mutex mu;
  parallel_chunks(
      3, 16,
      [&](int64_t b, int64_t e) {
        EXPECT_EQ(b, 0);
        EXPECT_EQ(e, 3);
        std::lock_guard<std::mutex> lock(mu);
        ids.insert(std::this_thread::get_id());
      },
      4);
  EXPECT_EQ(ids.size(), 1u);  // one chunk of at least `grain` items
  bool called = false;
  parallel_chunks(
      0, 1, [&](int64_t, int64_t) { called = true; }, 4);
  EXPECT_FALSE(called);
}

TEST(ParallelChunks, RethrowsTheFirstErrorAfterEveryChunkRan) {
  std::atomic<int> ran{0};
  EXPECT_THROW(parallel_chunks(
                   4, 1,
                   [&](int64_t b, int64_t) {
                     ++ran;
                     if (b == 3) throw std::runtime_error("item 3 is corrupt");
                   },
                   4),
               std::runtime_error);
  EXPECT_EQ(ran.load(), 4);
}

}  // namespace
}  // namespace diffuse
