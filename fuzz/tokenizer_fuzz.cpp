// The CLIP tokenizer (built-in OpenAI vocabulary) and the prompt-weight parser on any bytes.
#include "core/error.h"
#include "fuzz_util.h"
#include "models/clip_tokenizer.h"
#include "pipelines/prompt_weights.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const diffuse::CLIPTokenizer tok = diffuse::CLIPTokenizer::builtin();
  const std::string text = diffuse::fuzz::as_string(data, size);
  const auto padded = tok.tokenize(text, 77, true);
  if (padded.size() != 77) std::abort();
  (void)tok.tokenize(text, 1 << 20, false);
  try {  // a malformed weight is refused with diffuse::Error
    for (const auto& f : diffuse::parse_prompt_attention(text)) (void)f;
    (void)diffuse::prompt_chunks(tok, text);
  } catch (const diffuse::Error&) {
  }
  return 0;
}
