// diffuse tokenize: CLIP token ids of a prompt, as a JSON array.
#include <cstdio>
#include <filesystem>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "commands.h"
#include "core/error.h"
#include "models/clip_tokenizer.h"

namespace cmd_tokenize {

namespace fs = std::filesystem;

struct Args {
  std::string model;
  std::vector<std::string> text;
  bool no_pad = false;
};

// A pipeline folder (uses its tokenizer/), a tokenizer folder, or a bpe_simple_vocab file.
diffuse::CLIPTokenizer open_tokenizer(const std::string& model) {
  if (model.empty()) return diffuse::CLIPTokenizer::builtin();
  const fs::path p(model);
  if (fs::is_regular_file(p)) {
    const auto name = p.filename().string();
    if (name.size() > 4 && (name.substr(name.size() - 3) == ".gz" || name.substr(name.size() - 4) == ".txt"))
      return diffuse::CLIPTokenizer::from_bpe_file(model);
    throw diffuse::Error("--model " + model +
                         ": expected a pipeline folder, a tokenizer folder or a bpe_simple_vocab file");
  }
  if (!fs::is_directory(p)) throw diffuse::Error("--model " + model + " does not exist");
  if (fs::exists(p / "tokenizer" / "vocab.json"))
    return diffuse::CLIPTokenizer::from_folder((p / "tokenizer").string());
  if (fs::exists(p / "vocab.json")) return diffuse::CLIPTokenizer::from_folder(model);
  if (fs::exists(p / "model_index.json"))
    throw diffuse::Error("--model " + model + ": pipeline has no tokenizer (" +
                         (p / "tokenizer" / "vocab.json").string() + " does not exist)");
  throw diffuse::Error("--model " + model + ": no tokenizer found (looked for " +
                       (p / "tokenizer" / "vocab.json").string() + " and " + (p / "vocab.json").string() + ")");
}

void register_cmd(CLI::App& app) {
  auto a = std::make_shared<Args>();
  auto* cmd = app.add_subcommand("tokenize", "CLIP token ids of a prompt (77 padded ids as a JSON array)");
  cmd->add_option("--model", a->model,
                  "Pipeline folder (uses its tokenizer/), tokenizer folder (vocab.json + merges.txt) or "
                  "bpe_simple_vocab_16e6.txt.gz; default: the built-in OpenAI CLIP vocabulary");
  cmd->add_flag("--no-pad", a->no_pad, "Print the untruncated ids with start and end tokens, without padding");
  // The prompt is taken verbatim from the remaining arguments: an option would read "[a, b]" as a
  // list and drop its brackets and commas.
  cmd->allow_extras();
  cmd->footer("TEXT: the prompt (several arguments are joined with spaces; \"[a, b]\" is kept as written)");
  cmd->callback([a, cmd] {
    a->text = cmd->remaining();
    if (a->text.empty()) throw diffuse::Error("tokenize: give the prompt text");
    std::string text;
    for (size_t i = 0; i < a->text.size(); ++i) text += (i ? " " : "") + a->text[i];
    const auto tok = open_tokenizer(a->model);
    const auto ids = a->no_pad ? tok.tokenize(text, std::numeric_limits<int64_t>::max(), false)
                               : tok.tokenize(text, tok.model_max_length(), true);
    std::string out = "[";
    for (size_t i = 0; i < ids.size(); ++i) out += (i ? ", " : "") + std::to_string(ids[i]);
    std::printf("%s]\n", out.c_str());
  });
}

DIFFUSE_COMMAND(45, "tokenize", register_cmd);

}  // namespace cmd_tokenize
