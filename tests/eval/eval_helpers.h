#pragma once
// Shared eval-test helpers, defined in classifier_test.cpp and evaluate_test.cpp.
#include <cstdint>
#include <string>
#include <vector>

#include "eval/classifier.h"
#include "models/unet2d.h"
#include "tiny_unet.h"

namespace diffuse::test {
// Writes `per_class` PNGs of `size` px into dir/<class>/ for each class name ("" = dir itself):
// class k has a bright bar (vertical for even k, horizontal for odd k) plus noise.
void write_image_folder(const std::string& dir, const std::vector<std::string>& classes, int per_class, int size = 12,
                        uint64_t seed = 0, int channels = 1);
// A small random-initialised classifier (widths {4, 8}, feature_dim 6) with non-trivial BatchNorm statistics.
Classifier tiny_classifier(const std::vector<std::string>& classes, int size = 12, int channels = 1,
                           const std::string& dataset = "", uint64_t seed = 0);
// Training options for a tiny classifier (widths {4, 8}, one conv per stage, 2x2 head pool,
// 8 features) on `data`.
ClassifierTrainOptions tiny_train_options(const std::string& data);
}  // namespace diffuse::test
