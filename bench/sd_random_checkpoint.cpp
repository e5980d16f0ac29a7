// Writes a random Stable Diffusion 1.5 single-file checkpoint (LDM names) for benchmarks: every
// name, shape and dtype of a key list such as tests/fixtures/sd15_keys.tsv, fp16 weights as
// in the released pruned-emaonly file (see pipelines/random_checkpoint.h for the values).
//
// Usage: sd_random_checkpoint KEYS.tsv OUT.safetensors [--seed N]
#include <cstdio>
#include <string>

#include "pipelines/random_checkpoint.h"

int main(int argc, char** argv) {
  if (argc != 3 && !(argc == 5 && std::string(argv[3]) == "--seed")) {
    std::fprintf(stderr, "usage: %s KEYS.tsv OUT.safetensors [--seed N]\n", argv[0]);
    return 2;
  }
  try {
    const uint64_t bytes = diffuse::write_random_checkpoint(argv[1], argv[2], argc == 5 ? std::stoull(argv[4]) : 0);
    std::printf("wrote %s: %.2f GB\n", argv[2], static_cast<double>(bytes) / 1e9);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "sd_random_checkpoint: %s\n", e.what());
    return 1;
  }
  return 0;
}
