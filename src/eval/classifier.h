#pragma once
// The feature network for quality metrics: a small CNN classifier trained by this project
// (Inception weights are not available here, and are the wrong tool for 28x28 greyscale data).
// Its penultimate layer is the feature space of FID, KID and precision/recall; its logits give
// class agreement. Stored as a folder: config.json + model.safetensors.
#include <torch/torch.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "nn/linear.h"
#include "train/dataset.h"

namespace diffuse {

struct ClassifierConfig {
  int in_channels = 1;
  int image_size = 28;
  int num_classes = 10;
  std::vector<int> widths = {16, 48, 96};  // channels per stage; 2x2 max-pool between stages
  int convs_per_stage = 2;                 // 3x3 conv + BatchNorm + ReLU each
  int head_pool = 3;                       // adaptive average pool to head_pool^2 cells, flattened (1 = global)
  int feature_dim = 128;                   // penultimate width = feature space dimension
  double dropout = 0.1;                    // before the feature layer and before the head
  std::vector<std::string> class_names;    // size num_classes (may be empty: classes are indices)
  std::string dataset;                     // what it was trained on (informational)

  std::string to_json() const;
  // Parses and validates; throws diffuse::Error naming `source` and the bad field.
  static ClassifierConfig from_json(const std::string& text, const std::string& source = "config.json");
};

class ClassifierImpl : public torch::nn::Module {
 public:
  explicit ClassifierImpl(ClassifierConfig cfg);
  // x: [N, C, image_size, image_size] float in [-1, 1] (already prepared) -> [N, feature_dim].
  torch::Tensor features(const torch::Tensor& x);
  // The activations at the end of each convolutional stage (after its last conv + BN + ReLU):
  // widths.size() maps [N, widths[s], image_size / 2^s, image_size / 2^s]. The perceptual
  // distance (eval/perceptual.h) compares images on them.
  std::vector<torch::Tensor> stage_outputs(const torch::Tensor& x);
  // Penultimate features -> logits [N, num_classes].
  torch::Tensor head(const torch::Tensor& features);
  torch::Tensor logits(const torch::Tensor& x) { return head(features(x)); }
  torch::Tensor forward(const torch::Tensor& x) { return logits(x); }
  const ClassifierConfig& config() const { return cfg_; }
  int64_t num_parameters() const;

 private:
  ClassifierConfig cfg_;
  std::vector<torch::nn::Conv2d> convs_;
  std::vector<torch::nn::BatchNorm2d> norms_;
  nn::Linear fc_{nullptr};
  torch::nn::BatchNorm1d fc_norm_{nullptr};
  nn::Linear out_{nullptr};
};
TORCH_MODULE(Classifier);

// Writes config.json and model.safetensors (atomically) into `dir` (created if needed).
void save_classifier(const Classifier& net, const std::string& dir);
// Loads a classifier folder strictly (missing/unexpected/mis-shaped weights are errors).
Classifier load_classifier(const std::string& dir, torch::Device device = torch::kCPU);

// Converts images to the classifier's input: uint8 [0, 255] or float [-1, 1], [N, C, H, W].
// Channels must match (diffuse::Error otherwise). Sizes: equal -> unchanged; larger by an even
// margin of at most a quarter of the size (e.g. 32 px for a 28 px network, the padding the
// dataset loader adds) -> centre crop; otherwise, when `allow_resize`, centre-crop to a square and
// resize (bilinear, antialiased), else diffuse::Error. `what` names the source in errors.
torch::Tensor prepare_classifier_input(const torch::Tensor& images, const ClassifierConfig& cfg, bool allow_resize,
                                       const std::string& what = "images");
// Whether images of `size` x `size` can be fed without resizing (equal or centre-croppable).
bool classifier_accepts_size(const ClassifierConfig& cfg, int size);

// The folder name under which images of a class are saved: characters outside [A-Za-z0-9 ._+-]
// become '_', and a leading '.' (or an empty name) gets a '_' in front. map_classes accepts it.
std::string class_folder_name(const std::string& class_name);

// Embeddings of a set of images.
struct Embedding {
  torch::Tensor features;  // float32 [N, feature_dim], CPU
  torch::Tensor logits;    // float32 [N, num_classes], CPU
  torch::Tensor predicted() const { return logits.argmax(1); }
};

// Inference wrapper: eval mode, no grad, batching, input preparation, device placement.
// Cheap to copy (shares the network). Const methods are safe to call from one thread at a time.
class FeatureNet {
 public:
  FeatureNet() = default;
  explicit FeatureNet(Classifier net, std::string source = "");
  static FeatureNet load(const std::string& dir, torch::Device device = torch::kCPU);

  bool defined() const { return static_cast<bool>(net_); }
  const ClassifierConfig& config() const;
  Classifier module() const { return net_; }
  torch::Device device() const;
  const std::string& source() const { return source_; }
  int feature_dim() const { return config().feature_dim; }
  // A hash of the configuration and weights (hex), for cache keys.
  const std::string& fingerprint() const { return fingerprint_; }

  // images as for prepare_classifier_input. `progress(done, total)` after each batch.
  Embedding embed(const torch::Tensor& images, bool allow_resize = false, int batch_size = 500,
                  const std::function<void(int64_t, int64_t)>& progress = {}) const;
  torch::Tensor features(const torch::Tensor& images, bool allow_resize = false) const {
    return embed(images, allow_resize).features;
  }
  torch::Tensor logits(const torch::Tensor& images, bool allow_resize = false) const {
    return embed(images, allow_resize).logits;
  }
  // Maps class names (or decimal indices, or class_folder_name of a name) to this network's class
  // ids, ignoring case; -1 for unknown names.
  std::vector<int64_t> map_classes(const std::vector<std::string>& names) const;

 private:
  Classifier net_{nullptr};
  std::string source_;
  std::string fingerprint_;
};

// ---------------------------------------------------------------------------------------------
// Training.

// One split ("train" or "test") of a dataset spec (see load_dataset), at its native size: IDX
// datasets (fashion-mnist, mnist, IDX folders) use their own train/test files, emoji its own
// held-out split (every 10th emoji, 64 px; see train/emoji.h); image folders
// (labelled or not) hold out a deterministic share `holdout` of their images as "test".
// `channels` > 0 converts (1 -> 3 for IDX; any conversion for image folders).
Dataset load_split(const std::string& spec, const std::string& split, int channels = 0, double holdout = 0.1);

struct ClassifierProgress {
  int epoch = 0;  // 1-based
  int epochs = 0;
  int64_t step = 0;  // 1-based step within the epoch
  int64_t steps_per_epoch = 0;
  double loss = 0;      // running mean over the epoch
  double accuracy = 0;  // running training accuracy over the epoch (augmented data)
  double images_per_s = 0;
  double eta_s = 0;
  double elapsed_s = 0;
  bool epoch_end = false;
  double test_accuracy = -1;  // set at the end of an epoch when evaluated
};

struct ClassifierTrainOptions {
  std::string data = "fashion-mnist";
  ClassifierConfig model;  // in_channels, image_size, num_classes, class_names are filled from the data
  int epochs = 12;
  int batch_size = 128;
  double lr = 3e-3;  // peak; linear warm-up then cosine decay to 0
  double warmup_epochs = 0.5;
  double weight_decay = 0.05;
  double label_smoothing = 0.1;
  int pad = 2;        // random-crop padding (0 = off)
  bool flip = true;   // random horizontal flips
  uint64_t seed = 0;  // initialisation, shuffling and augmentation
  int64_t limit = 0;  // use only the first `limit` training images (0 = all), for quick tests
  bool eval_every_epoch = false;
  torch::Device device = torch::kCPU;
  std::function<void(const ClassifierProgress&)> progress;
  int progress_every = 50;  // steps between progress callbacks
};

struct ClassifierTrainResult {
  Classifier net{nullptr};
  double test_accuracy = 0;
  double test_top5_accuracy = 0;  // the label among the 5 highest logits
  int64_t test_images = 0;
  double train_seconds = 0;  // wall time of the training loop
  double cpu_seconds = 0;    // process CPU time spent (all threads)
  int64_t steps = 0;
};

ClassifierTrainResult train_classifier(const ClassifierTrainOptions& opt);

// Top-k accuracy of `net` on uint8 images with labels (k = 1: the predicted class is the label).
double classifier_accuracy(const FeatureNet& net, const torch::Tensor& images, const torch::Tensor& labels, int k = 1);

}  // namespace diffuse
