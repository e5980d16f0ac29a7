// A1111 infotext parsing: read (and validated) or refused with RequestError.
#include <cstdlib>

#include "diffuse/request.h"
#include "fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  diffuse::GenerationRequest r;
  try {
    r = diffuse::GenerationRequest::from_infotext(diffuse::fuzz::as_string(data, size));
  } catch (const diffuse::RequestError&) {
    return 0;
  }
  (void)r.validate();
  return 0;
}
