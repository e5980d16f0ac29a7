#pragma once
// Text normalisation of the CLIP tokenizer over Unicode code points: UTF-8 decoding, the parts
// of ftfy.fix_text (6.1.1, default settings) that matter for prompts, Python's str.lower(),
// `\s` and the \p{L} / \p{N} classes of the CLIP pre-tokenizer regex.
//
// ftfy coverage: unescape_html ("auto": skipped from the first line containing '<'; the common
// named entities and all numeric ones), remove_terminal_escapes, fix_encoding (whole-line mojibake
// only: a line whose characters all encode to latin-1 or sloppy windows-1252 and whose bytes are
// valid UTF-8 with a multi-byte sequence of a typical mojibake lead byte (Â Ã Å Î Ï Ð Ñ × Ø Ù, or a
// 3- or 4-byte sequence) is decoded, else each such sequence inside the line is; ftfy's badness
// heuristic is not reproduced), fix_c1_controls, fix_latin_ligatures, fix_character_width,
// uncurl_quotes, fix_line_breaks, remove_control_chars and NFC (recomposition of canonical pairs in
// the order given; marks in non-canonical order are not reordered first).
#include <string>

namespace diffuse::clip_text {

// Invalid UTF-8 bytes decode to U+FFFD.
std::u32string utf8_decode(const std::string& s);
std::string utf8_encode(const std::u32string& s);

bool is_letter(char32_t c);  // \p{L}
bool is_number(char32_t c);  // \p{N}
bool is_space(char32_t c);   // Python's str.isspace()

// ftfy.fix_text with its default configuration (see the coverage note above).
std::u32string fix_text(const std::u32string& text);
// CLIP's whitespace_clean: every run of whitespace -> one space, then strip.
std::u32string whitespace_clean(const std::u32string& text);
// Python's str.lower() (including final sigma and U+0130).
std::u32string lower(const std::u32string& text);
// Canonical composition (see the note above).
std::u32string nfc(const std::u32string& text);

}  // namespace diffuse::clip_text
