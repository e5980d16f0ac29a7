#include "pipelines/batch.h"

#include "core/error.h"

namespace diffuse {

torch::Tensor batch_rows(const torch::Tensor& t, int n, int start, int end, const std::string& what) {
  if (!t.defined()) return t;
  if (t.size(0) == 1) {
    auto sizes = t.sizes().vec();
    sizes[0] = end - start;
    return t.expand(sizes);
  }
  if (t.size(0) != n)
    throw Error(what + ": batch " + std::to_string(t.size(0)) + ", expected 1 or " + std::to_string(n));
  return t.slice(0, start, end);
}

}  // namespace diffuse
