// diffuse train-classifier: train the feature network used by `diffuse eval`.
#include <unistd.h>

#include <cstdio>
#include <memory>
#include <sstream>

#include "commands.h"
#include "core/error.h"
#include "core/progress.h"
#include "core/runtime.h"
#include "eval/classifier.h"

namespace cmd_train_classifier {

struct Args {
  diffuse::ClassifierTrainOptions o;
  std::string out, widths = "16,48,96", device = "cpu";
  int threads = 0;
  bool quiet = false;
};

std::vector<int> parse_widths(const std::string& s) {
  std::vector<int> w;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) {
    try {
      size_t pos = 0;
      int v = std::stoi(item, &pos);
      if (pos != item.size() || v < 1) throw std::invalid_argument(item);
      w.push_back(v);
    } catch (const std::exception&) {
      throw diffuse::Error("--widths " + s + ": expected positive integers separated by commas");
    }
  }
  if (w.empty()) throw diffuse::Error("--widths " + s + ": expected positive integers separated by commas");
  return w;
}

void run(Args& a) {
  diffuse::cli::apply_threads(a.threads);
  auto& o = a.o;
  o.model.widths = parse_widths(a.widths);
  o.device = diffuse::parse_device(a.device);
  std::fprintf(stderr, "%s\n", diffuse::runtime_summary().c_str());
  std::unique_ptr<diffuse::Progress> bar;
  o.progress_every = 10;
  if (!a.quiet) {
    o.progress = [&](const diffuse::ClassifierProgress& p) {
      if (!bar) bar = std::make_unique<diffuse::Progress>(p.steps_per_epoch * p.epochs, "train-classifier", "step");
      char text[128];
      std::snprintf(text, sizeof text, "epoch %d/%d loss %.4f acc %.2f %%", p.epoch, p.epochs, p.loss,
                    100 * p.accuracy);
      int64_t done = (p.epoch - 1) * p.steps_per_epoch + p.step;
      bar->update(done, text, static_cast<double>(a.o.batch_size), "img");
      if (p.epoch_end) {
        std::string test =
            p.test_accuracy >= 0 ? ", test acc " + std::to_string(100 * p.test_accuracy).substr(0, 5) + " %" : "";
        std::fprintf(stderr, "%sepoch %d/%d: loss %.4f, train acc %.2f %%%s, %.0f img/s, %s elapsed, ETA %s\n",
                     bar && isatty(2) ? "\r\033[K" : "", p.epoch, p.epochs, p.loss, 100 * p.accuracy, test.c_str(),
                     p.images_per_s, diffuse::format_duration(p.elapsed_s).c_str(),
                     diffuse::format_duration(p.eta_s).c_str());
      }
    };
  }
  auto r = diffuse::train_classifier(o);
  diffuse::save_classifier(r.net, a.out);
  std::printf(
      "wrote %s: %lld parameters, test accuracy %.2f %% (top-5 %.2f %%) on %lld images, %s wall, %.0f s CPU, %lld "
      "steps\n",
      a.out.c_str(), static_cast<long long>(r.net->num_parameters()), 100 * r.test_accuracy, 100 * r.test_top5_accuracy,
      static_cast<long long>(r.test_images), diffuse::format_duration(r.train_seconds).c_str(), r.cpu_seconds,
      static_cast<long long>(r.steps));
}

void register_cmd(CLI::App& app) {
  auto a = std::make_shared<Args>();
  auto* cmd = app.add_subcommand(
      "train-classifier", "Train the feature network (a small CNN classifier) used by `diffuse eval` for FID/KID");
  cmd->add_option("--data", a->o.data,
                  "fashion-mnist, mnist, emoji, a folder of IDX files, or an image folder (class = subfolder)")
      ->capture_default_str();
  cmd->add_option("--out", a->out, "Output folder (config.json + model.safetensors)")->required();
  cmd->add_option("--epochs", a->o.epochs, "Passes over the training split")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  cmd->add_option("--batch-size", a->o.batch_size, "Images per step")
      ->capture_default_str()
      ->check(CLI::Range(2, 65536));
  cmd->add_option("--lr", a->o.lr, "Peak learning rate (AdamW; warm-up then cosine decay)")->capture_default_str();
  cmd->add_option("--weight-decay", a->o.weight_decay, "AdamW weight decay")->capture_default_str();
  cmd->add_option("--label-smoothing", a->o.label_smoothing, "Cross-entropy label smoothing")->capture_default_str();
  cmd->add_option("--pad", a->o.pad, "Random-crop padding in pixels (0 = off)")->capture_default_str();
  cmd->add_flag("!--no-flip", a->o.flip, "Disable random horizontal flips");
  cmd->add_option("--widths", a->widths, "Channels per stage, comma-separated")->capture_default_str();
  cmd->add_option("--convs-per-stage", a->o.model.convs_per_stage, "3x3 convolutions per stage")
      ->capture_default_str()
      ->check(CLI::Range(1, 16));
  cmd->add_option("--feature-dim", a->o.model.feature_dim, "Width of the penultimate (feature) layer")
      ->capture_default_str()
      ->check(CLI::Range(2, 65536));
  cmd->add_option("--dropout", a->o.model.dropout, "Dropout before the feature layer and the head")
      ->capture_default_str()
      ->check(CLI::Range(0.0, 0.99));
  cmd->add_option("--seed", a->o.seed, "Seed for initialisation, data order and augmentation")->capture_default_str();
  cmd->add_option("--limit", a->o.limit, "Use only the first N training images (0 = all)")->capture_default_str();
  cmd->add_flag("--eval-every-epoch", a->o.eval_every_epoch, "Report test accuracy after every epoch");
  cmd->add_option("--device", a->device, "cpu, cuda, cuda:N or auto")->capture_default_str();
  cmd->add_flag("--quiet", a->quiet, "No progress output");
  diffuse::cli::add_threads_option(cmd, &a->threads);
  cmd->callback([a] { run(*a); });
}

DIFFUSE_COMMAND(65, "train-classifier", register_cmd);

}  // namespace cmd_train_classifier
