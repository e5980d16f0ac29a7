#include <gtest/gtest.h>
#include <torch/torch.h>

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  torch::manual_seed(0);
  at::set_num_threads(1);  // ctest runs binaries in parallel on few cores
  return RUN_ALL_TESTS();
}
