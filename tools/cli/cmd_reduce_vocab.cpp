// diffuse reduce-vocab: a text-to-image pipeline with its vocabulary cut down to its captions' tokens.
#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>

#include "commands.h"
#include "train/text_to_image.h"

namespace cmd_reduce_vocab {

namespace fs = std::filesystem;

struct Args {
  std::string model, data, out, caption_ext = ".txt";
};

uintmax_t folder_bytes(const std::string& dir) {
  uintmax_t n = 0;
  for (const auto& e : fs::recursive_directory_iterator(dir))
    if (e.is_regular_file()) n += e.file_size();
  return n;
}

void register_cmd(CLI::App& app) {
  auto a = std::make_shared<Args>();
  auto* cmd = app.add_subcommand(
      "reduce-vocab",
      "Copy a text-to-image pipeline with its tokenizer and text-encoder embeddings cut down to the tokens "
      "its training captions use (what `diffuse train --vocab captions` trains from the start); those "
      "captions encode exactly as before");
  cmd->add_option("--model", a->model, "StableDiffusionPipeline folder (e.g. one trained with --vocab clip)")
      ->required()
      ->check(CLI::ExistingDirectory);
  cmd->add_option("--data", a->data, "The captions it was trained on: emoji-captions or a captioned folder")
      ->required();
  cmd->add_option("--out", a->out, "New pipeline folder (must not exist)")->required();
  cmd->add_option("--caption-ext", a->caption_ext, "Extension of the caption files")->capture_default_str();
  cmd->callback([a] {
    const auto [before, after] = diffuse::reduce_pipeline_vocabulary(a->model, a->data, a->out, a->caption_ext);
    std::printf("%s: vocabulary %lld -> %lld tokens; text_encoder/ %.1f MB -> %.1f MB, pipeline %.1f MB\n",
                a->out.c_str(), static_cast<long long>(before), static_cast<long long>(after),
                static_cast<double>(folder_bytes(a->model + "/text_encoder")) / 1e6,
                static_cast<double>(folder_bytes(a->out + "/text_encoder")) / 1e6,
                static_cast<double>(folder_bytes(a->out)) / 1e6);
  });
}

DIFFUSE_COMMAND(47, "reduce-vocab", register_cmd);

}  // namespace cmd_reduce_vocab
