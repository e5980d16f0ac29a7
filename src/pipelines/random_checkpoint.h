#pragma once
// Random-weight single-file checkpoints with a given key list, for tests and benchmarks of the
// single-file path at full size (e.g. the SD1.5 key list tests/fixtures/sd15_keys.tsv).
#include <cstdint>
#include <string>

namespace diffuse {

// Writes a safetensors file with every name, shape and dtype of `keys_tsv` (tab-separated name,
// [shape], count, dtype, ...; '#' lines are comments). Values keep activations finite and O(1):
// Linear/Conv/Embedding weights ~ N(0, 1/fan_in), 1-D weights (norms) 1, biases 0, position_ids
// 0..N-1, and the LDM schedule buffers of SD's scaled-linear betas (0.00085 .. 0.012). The file is
// written tensor by tensor (header first), so memory stays at one tensor rather than the whole
// model, and atomically. Returns the bytes of tensor data. Throws diffuse::Error naming the file.
uint64_t write_random_checkpoint(const std::string& keys_tsv, const std::string& out, uint64_t seed = 0);

}  // namespace diffuse
