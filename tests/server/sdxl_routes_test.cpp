// SDXL on the server: A1111's refiner_checkpoint / refiner_switch_at on txt2img and img2img
// (names and A1111 titles, the same pixels as the library's base -> refiner handoff, PNG
// parameters with A1111's refiner keys), its errors, and sd-models listing base and refiner.
#include <gtest/gtest.h>
#include <httplib.h>

#include <nlohmann/json.hpp>

#include "core/base64.h"
#include "core/image.h"
#include "diffuse/diffuse.h"
#include "fixtures.h"
#include "running_server.h"
#include "sd_tiny_text.h"
#include "sdxl_tiny.h"
#include "server/server.h"

namespace diffuse {
namespace {

using json = nlohmann::json;

// The tiny SDXL base, its refiner and the tiny SD 1.x model.
struct XlServed {
  test::TempDir dir;
  std::string base, refiner;
  std::unique_ptr<test::RunningServer> run;

  XlServed() {
    base = test::tiny_sdxl_folder(dir / "sdxl");
    refiner = test::tiny_sdxl_refiner(dir / "sdxl_refiner");
    server::ServerOptions o;
    o.models = server::find_models({base, refiner, test::tiny_sd_folder(dir / "sd_tiny")}, "");
    run = std::make_unique<test::RunningServer>(o);
  }
};

XlServed& xl_served() {
  static XlServed s;
  return s;
}

json xl_body(const httplib::Result& r) { return json::parse(r->body); }

httplib::Result post(const std::string& path, const json& j) {
  auto c = xl_served().run->client();
  return c.Post(path, j.dump(), "application/json");
}

json txt2img(const std::string& model, int steps = 4) {
  return {{"prompt", "a red cube"},
          {"negative_prompt", "blurry"},
          {"steps", steps},
          {"width", 32},
          {"height", 32},
          {"seed", 4},
          {"override_settings", {{"sd_model_checkpoint", model}}}};
}

json with_refiner(json j, const std::string& refiner) {
  j["refiner_checkpoint"] = refiner;
  return j;
}

TEST(SdxlServer, SdModelsListsBaseAndRefiner) {
  auto c = xl_served().run->client();
  auto r = c.Get("/sdapi/v1/sd-models");
  ASSERT_EQ(r->status, 200);
  std::vector<std::string> titles;
  for (const auto& m : xl_body(r)) titles.push_back(m["title"]);
  EXPECT_EQ(titles, (std::vector<std::string>{"sdxl", "sdxl_refiner", "sd_tiny"}));
  // and the native list says which is which
  const json models = xl_body(c.Get("/api/v1/models"))["models"];
  json archs = json::object();
  for (const auto& m : models) archs[m["name"].get<std::string>()] = m["architecture"];
  EXPECT_EQ(archs, json({{"sdxl", "SDXL"}, {"sdxl_refiner", "SDXL refiner"}, {"sd_tiny", "SD1"}}));
}

// The refiner named by its A1111 title runs the steps after the switch: the pixels of the
// library's handoff, and the PNG carries A1111's keys, which png-info reads back.
TEST(SdxlServer, Txt2imgRefinerCheckpointHandsOverAtTheSwitch) {
  json req = txt2img("sdxl [0123abcd]");
  req["refiner_checkpoint"] = "sdxl_refiner.safetensors [89ab]";
  req["refiner_switch_at"] = 0.5;
  auto r = post("/sdapi/v1/txt2img", req);
  ASSERT_EQ(r->status, 200) << r->body;
  const std::string png = base64_decode(xl_body(r)["images"][0], "image");
  const std::string params = png_parameters(png);
  EXPECT_NE(params.find("Refiner: sdxl_refiner, Refiner switch at: 0.5"), std::string::npos) << params;
  EXPECT_EQ(json::parse(xl_body(r)["info"].get<std::string>())["sd_model_name"], "sdxl");

  GenerationRequest q;
  q.prompt = "a red cube";
  q.negative_prompt = "blurry";
  q.steps = 4;
  q.width = q.height = 32;
  q.seed = 4;
  q.refiner = xl_served().refiner;
  q.refiner_switch = 0.5;
  Model lib = Model::load(xl_served().base);
  const auto handoff = lib.generate(q).images[0].clamp(-1, 1);
  const auto got = decode_image(png, 3, "png");
  EXPECT_TRUE(torch::equal(got, to_tensor(to_image(handoff))));
  q.refiner.clear();  // the base alone draws another image
  EXPECT_FALSE(torch::equal(got, to_tensor(to_image(lib.generate(q).images[0].clamp(-1, 1)))));

  auto info = post("/sdapi/v1/png-info", {{"image", base64_encode(png)}});
  ASSERT_EQ(info->status, 200) << info->body;
  EXPECT_EQ(xl_body(info)["parameters"]["refiner"], "sdxl_refiner");
  EXPECT_EQ(xl_body(info)["parameters"]["refiner_switch"], 0.5);
  auto native = post("/api/v1/infotext", {{"infotext", params}});
  EXPECT_EQ(xl_body(native)["request"]["refiner"], "sdxl_refiner");
}

TEST(SdxlServer, Img2imgTakesTheRefinerToo) {
  json req = txt2img("sdxl", 6);  // strength 0.7: 4 steps, the last after the switch at 0.8
  req["init_images"] = {base64_encode(encode_image(torch::zeros({3, 32, 32}), "png"))};
  req["denoising_strength"] = 0.7;
  req["refiner_checkpoint"] = "sdxl_refiner";
  auto r = post("/sdapi/v1/img2img", req);
  ASSERT_EQ(r->status, 200) << r->body;
  const std::string params = xl_body(r)["info"].get<std::string>();
  EXPECT_NE(params.find("Refiner: sdxl_refiner, Refiner switch at: 0.8"), std::string::npos) << params;
  // "None", as A1111's refiner picker says, is no refiner
  req["refiner_checkpoint"] = "None";
  r = post("/sdapi/v1/img2img", req);
  ASSERT_EQ(r->status, 200) << r->body;
  EXPECT_EQ(xl_body(r)["info"].get<std::string>().find("Refiner"), std::string::npos);
}

std::pair<std::string, std::string> error_of(const httplib::Result& r) {
  const json e = xl_body(r)["error"];
  return {e["field"].get<std::string>(), e["message"].get<std::string>()};
}

TEST(SdxlServer, RefinerErrorsNameTheA1111Fields) {
  json req = txt2img("sdxl", 2);
  req["refiner_checkpoint"] = "nothing";
  auto r = post("/sdapi/v1/txt2img", req);
  EXPECT_EQ(r->status, 400);
  auto [field, message] = error_of(r);
  EXPECT_EQ(field, "refiner_checkpoint");
  EXPECT_NE(message.find("no model named 'nothing'"), std::string::npos) << message;

  req["refiner_checkpoint"] = "sdxl_refiner";
  req["refiner_switch_at"] = 1.5;
  r = post("/sdapi/v1/txt2img", req);
  EXPECT_EQ(r->status, 400);
  EXPECT_EQ(error_of(r).first, "refiner_switch_at");
  req.erase("refiner_switch_at");

  // an SD 1.x model is no base for a refiner, nor a refiner
  r = post("/sdapi/v1/txt2img", with_refiner(txt2img("sd_tiny", 2), "sdxl_refiner"));
  EXPECT_EQ(r->status, 400);
  std::tie(field, message) = error_of(r);
  EXPECT_EQ(field, "refiner_checkpoint");
  EXPECT_NE(message.find("a refiner continues an SDXL base model (this model is SD1)"), std::string::npos) << message;
  r = post("/sdapi/v1/txt2img", with_refiner(txt2img("sdxl", 2), "sd_tiny"));
  EXPECT_EQ(r->status, 400);
  std::tie(field, message) = error_of(r);
  EXPECT_EQ(field, "refiner_checkpoint");
  EXPECT_NE(message.find("sd_tiny is SD1, not an SDXL model that can refine"), std::string::npos) << message;
  // nor is a refiner a base
  r = post("/sdapi/v1/txt2img", with_refiner(txt2img("sdxl_refiner", 2), "sdxl_refiner"));
  EXPECT_EQ(r->status, 400);
  EXPECT_EQ(error_of(r).first, "refiner_checkpoint");
}

}  // namespace
}  // namespace diffuse
