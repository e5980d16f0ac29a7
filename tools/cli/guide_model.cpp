// --guide-model DIR: autoguidance for class-conditional and unconditional models.
#include <filesystem>
#include <memory>
#include <string>

#include "commands.h"
#include "core/error.h"
#include "pipelines/pixel_pipeline.h"
#include "pipelines/sd_pipeline.h"

namespace diffuse::cli {

void add_guide_model_option(CLI::App* cmd, std::string* dir, bool* unconditional) {
  auto* guide = cmd->add_option("--guide-model", *dir,
                                "Autoguidance (Karras et al. 2024): guide with this weaker model folder (smaller or "
                                "less trained) instead of the unconditional branch; --guidance is its scale")
                    ->type_name("DIR");
  cmd->add_flag("--guide-unconditional", *unconditional,
                "Run the --guide-model on its null class: classifier-free guidance with the weaker model as the "
                "unconditional branch")
      ->needs(guide);
}

std::shared_ptr<const PixelPipeline> load_guide(const std::string& dir, const PixelPipeline& pipe) {
  if (std::filesystem::is_regular_file(dir) || SDPipeline::is_sd_folder(dir))
    throw Error("--guide-model " + dir + ": a Stable Diffusion checkpoint cannot guide this model");
  std::shared_ptr<PixelPipeline> guide;
  try {
    guide = std::make_shared<PixelPipeline>(PixelPipeline::load(dir, pipe.device));
  } catch (const Error& e) {
    throw Error(std::string("--guide-model: ") + e.what());
  }
  check_guide(pipe, *guide);
  return guide;
}

}  // namespace diffuse::cli
