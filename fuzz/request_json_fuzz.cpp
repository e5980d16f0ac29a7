// HTTP request bodies into generation requests: the native JSON (GenerationRequest::from_json)
// and the A1111 payloads; a request read once survives a JSON round trip unchanged.
#include <cstdlib>
#include <nlohmann/json.hpp>

#include "diffuse/request.h"
#include "fuzz_util.h"
#include "server/a1111_request.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string body = diffuse::fuzz::as_string(data, size);
  try {
    const auto r = diffuse::GenerationRequest::from_json(body);
    (void)r.validate();
    (void)diffuse::check_limits(r, diffuse::RequestLimits());
    if (diffuse::GenerationRequest::from_json(r.to_json()) != r) std::abort();  // round trip
  } catch (const diffuse::RequestError&) {
  }
  try {
    const auto j = nlohmann::json::parse(body);
    for (bool img2img : {false, true}) {
      std::string model;
      try {
        (void)diffuse::server::from_a1111(j, model, img2img).validate();
      } catch (const diffuse::Error&) {
      }
    }
  } catch (const nlohmann::json::exception&) {
  }
  return 0;
}
