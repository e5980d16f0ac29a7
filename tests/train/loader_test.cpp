#include "train/loader.h"

#include <gtest/gtest.h>

namespace diffuse {
namespace {

Dataset loader_test_data(int64_t n) {
  Dataset d;
  d.images = torch::arange(n * 4, torch::kInt64).remainder(251).to(torch::kUInt8).view({n, 1, 2, 2});
  d.labels = torch::arange(n, torch::kInt64).remainder(3);
  d.class_names = {"a", "b", "c"};
  return d;
}

TEST(BatchLoader, RanksTakeTheirSliceOfEveryGlobalBatch) {
  const Dataset data = loader_test_data(23);  // global batches straddle epochs
  BatchLoader whole(data, 12, 5, /*flip=*/true, 0, 2);
  BatchLoader r0(data, 4, 5, true, 0, 2, /*rank=*/0, /*world=*/3), r1(data, 4, 5, true, 0, 2, 1, 3),
      r2(data, 4, 5, true, 0, 2, 2, 3);
  bool flipped = false;
  for (int64_t step = 0; step < 7; ++step) {
    Batch w = whole.next();
    std::vector<Batch> parts = {r0.next(), r1.next(), r2.next()};
    std::vector<int64_t> idx;
    for (int r = 0; r < 3; ++r) {
      EXPECT_EQ(parts[r].step, step);
      idx.insert(idx.end(), parts[r].indices.begin(), parts[r].indices.end());
      EXPECT_TRUE(torch::equal(parts[r].images, w.images.narrow(0, 4 * r, 4))) << step << " rank " << r;
      EXPECT_TRUE(torch::equal(parts[r].labels, w.labels.narrow(0, 4 * r, 4)));
    }
    EXPECT_EQ(idx, w.indices);
    auto plain = data.images.index_select(0, torch::tensor(w.indices)).to(torch::kFloat32).div(127.5).sub(1.0);
    flipped = flipped || !torch::equal(plain, w.images);
  }
  EXPECT_TRUE(flipped);  // the flips were drawn (and split) too
  // Every epoch is a permutation: the first 23 rows of the global order hold each image once.
  BatchLoader again(data, 23, 5, false, 0);
  auto first = again.make(0).indices;
  std::sort(first.begin(), first.end());
  for (int64_t i = 0; i < 23; ++i) EXPECT_EQ(first[i], i);
}

}  // namespace
}  // namespace diffuse
