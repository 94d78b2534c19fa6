// The plain 32-bit words of the 16-bit storages whose row kernel leaves half
// words to a pass of its own (shaders/straddling_words.wgsl for contiguous
// rows, shaders/gradient_words.wgsl for N-d rows of 16-bit words), appended after
// shaders/logit_words.wgsl or logit_words_in_place.wgsl, which use LogitWord.

alias LogitWord = u32;

// A half word left to the pass: nothing is stored here.
fn store_half_word(index: u32, shift: u32, bits: u32) {}
