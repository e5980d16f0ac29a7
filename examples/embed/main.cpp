// Embeds diffuse: load a model, generate with a progress line, save a PNG with its parameters.
//   embed MODEL_DIR OUT.png [CLASS_OR_PROMPT] [SEED]
#include <diffuse/diffuse.h>

#include <cstdio>
#include <fstream>
#include <string>

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: %s MODEL_DIR OUT.png [CLASS_OR_PROMPT] [SEED]\n", argv[0]);
    return 2;
  }
  try {
    diffuse::Model model = diffuse::Model::load(argv[1]);
    diffuse::GenerationRequest req;  // unset fields: the model's recommended settings
    if (argc > 3) req.prompt = argv[3];
    req.seed = argc > 4 ? std::stoll(argv[4]) : 0;
    req.n = 1;
    diffuse::GenerateHooks hooks;
    hooks.progress = [](const diffuse::ProgressInfo& p) {
      std::fprintf(stderr, "\rstep %d/%d, ETA %.1f s", p.step, p.total, p.eta_s);
    };
    diffuse::GenerationResult res = model.generate(req, hooks);
    std::fprintf(stderr, "\n");
    std::ofstream(argv[2], std::ios::binary) << diffuse::encode_image(res.images[0], "png", res.infotexts[0]);
    std::printf("%s: %s\n", argv[2], res.infotexts[0].c_str());
  } catch (const diffuse::RequestError& e) {
    for (const auto& f : e.errors) std::fprintf(stderr, "error: %s: %s\n", f.field.c_str(), f.message.c_str());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
