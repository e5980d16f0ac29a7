#pragma once
// Training images held in memory as 8-bit tensors: IDX files (MNIST, Fashion-MNIST)
// and image folders (class = subfolder name, like torchvision's ImageFolder).
#include <torch/torch.h>

#include <string>
#include <vector>

namespace diffuse {

struct Dataset {
  torch::Tensor images;  // uint8 [N, C, H, W]
  torch::Tensor labels;  // int64 [N], undefined when unlabelled
  std::vector<std::string> class_names;
  std::vector<std::string> names;  // per-image names (emoji names); empty for other datasets
  std::string source;

  int64_t size() const { return images.defined() ? images.size(0) : 0; }
  int channels() const { return static_cast<int>(images.size(1)); }
  int image_size() const { return static_cast<int>(images.size(2)); }
  bool labelled() const { return labels.defined(); }
};

// Where the Debian package dataset-fashion-mnist puts its files ($DIFFUSE_FASHION_MNIST_DIR overrides).
std::string default_fashion_mnist_dir();
extern const std::vector<std::string> kFashionMnistClasses;

// `spec` is "fashion-mnist", "mnist", "emoji" (see train/emoji.h), a directory of IDX files
// (train-images-idx3-ubyte[.gz] ...), or an image folder. `split` is "train" or "test" (IDX only). `image_size` > 0
// resizes/centre-crops image folders and pads IDX images (with their background) to that size; 0 keeps the native size.
// `channels` 0 keeps the native channel count. Throws diffuse::Error naming the path.
Dataset load_dataset(const std::string& spec, const std::string& split = "train", int image_size = 0, int channels = 0);

// Reads one IDX file (optionally gzip-compressed) as a uint8 tensor with the file's dimensions.
torch::Tensor read_idx(const std::string& path);

}  // namespace diffuse
