// diffuse info: describe a model folder, a .safetensors file or a PNG's generation parameters.
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>

#include "commands.h"
#include "core/atomic_file.h"
#include "core/error.h"
#include "core/image.h"
#include "core/safetensors.h"
#include "core/strings.h"
#include "diffuse/diffuse.h"
#include "pipelines/forward.h"

namespace fs = std::filesystem;

namespace cmd_info {

void describe_safetensors(const std::string& path, bool all) {
  auto f = diffuse::safetensors::File::open(path);
  int64_t params = 0;
  std::map<std::string, int64_t> by_dtype;
  for (const auto& [name, info] : f.tensors()) {
    int64_t n = 1;
    for (auto d : info.shape) n *= d;
    params += n;
    by_dtype[info.dtype] += n;
  }
  std::printf("%s: %zu tensors, %.3fM elements (", path.c_str(), f.tensors().size(), params / 1e6);
  bool first = true;
  for (const auto& [dt, n] : by_dtype) {
    std::printf("%s%s %lld", first ? "" : ", ", dt.c_str(), static_cast<long long>(n));
    first = false;
  }
  std::printf(")\n");
  for (const auto& [k, v] : f.metadata()) std::printf("  metadata %s = %s\n", k.c_str(), v.c_str());
  size_t shown = 0;
  for (const auto& [name, info] : f.tensors()) {
    if (!all && shown++ >= 40) {
      std::printf("  ... %zu more (use --all)\n", f.tensors().size() - 40);
      break;
    }
    std::string shape;
    for (size_t i = 0; i < info.shape.size(); ++i) shape += (i ? ", " : "") + std::to_string(info.shape[i]);
    std::printf("  %-60s %-5s [%s]\n", name.c_str(), info.dtype.c_str(), shape.c_str());
  }
}

void describe_folder(const std::string& dir, bool all) {
  bool any = false;
  for (const char* cfg : {"model_index.json", "config.json", "class_names.json"}) {
    std::string p = dir + "/" + cfg;
    if (!fs::exists(p)) continue;
    any = true;
    std::printf("== %s\n%s\n", p.c_str(), nlohmann::json::parse(diffuse::read_file(p)).dump(2).c_str());
  }
  std::vector<fs::path> files;
  for (const auto& e : fs::recursive_directory_iterator(dir)) {
    if (e.path().string().find("/checkpoint") != std::string::npos) continue;
    if (e.is_regular_file() && (e.path().extension() == ".safetensors" || e.path().filename() == "config.json" ||
                                e.path().filename() == "scheduler_config.json"))
      files.push_back(e.path());
  }
  std::sort(files.begin(), files.end());
  for (const auto& p : files) {
    if (p.parent_path() == fs::path(dir) && p.filename() == "config.json") continue;
    any = true;
    if (p.extension() == ".safetensors") {
      describe_safetensors(p.string(), all);
    } else {
      std::printf("== %s\n%s\n", p.string().c_str(),
                  nlohmann::json::parse(diffuse::read_file(p.string())).dump(2).c_str());
    }
  }
  if (!any) throw diffuse::Error(dir + ": no model files (config.json, model_index.json, *.safetensors)");
  // Validate: the folder loads (configs parse, every weight is there with the shape its config implies).
  if (fs::exists(dir + "/model_index.json")) {
    const auto model = diffuse::Model::load(dir);
    const auto& i = model.info();
    std::printf("valid: %s %s pipeline, %dx%d, %.1f MB of weights%s\n", diffuse::to_string(i.kind).c_str(),
                i.network.c_str(), i.width, i.height, static_cast<double>(model.weight_bytes()) / 1e6,
                i.classes.empty() ? "" : (", " + std::to_string(i.classes.size()) + " classes").c_str());
  } else if (fs::exists(dir + "/config.json")) {
    std::printf("valid: %s\n", diffuse::check_network_folder(dir).c_str());
  }
}

void register_cmd(CLI::App& app) {
  auto path = std::make_shared<std::string>();
  auto all = std::make_shared<bool>(false);
  auto* cmd = app.add_subcommand("info", "Describe a model folder, a .safetensors file or a PNG's parameters");
  cmd->add_option("path", *path, "Model folder, .safetensors or .png")->required();
  cmd->add_flag("--all", *all, "List every tensor");
  cmd->callback([path, all] {
    const std::string& p = *path;
    if (fs::is_directory(p)) {
      describe_folder(p, *all);
    } else if (!fs::exists(p)) {
      throw diffuse::Error(p + ": no such file or folder");
    } else if (diffuse::ends_with(p, ".png") || diffuse::ends_with(p, ".PNG")) {
      auto text = diffuse::read_png_text(p);
      auto it = text.find("parameters");
      if (it == text.end()) throw diffuse::Error(p + ": no generation parameters in this PNG");
      std::printf("%s\n", it->second.c_str());
      for (const auto& [k, v] : text)
        if (k != "parameters") std::printf("%s: %s\n", k.c_str(), v.c_str());
    } else {
      describe_safetensors(p, *all);
    }
  });
}

DIFFUSE_COMMAND(50, "info", register_cmd);

}  // namespace cmd_info
