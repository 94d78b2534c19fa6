// Group accessors over 16-bit halves in 32-bit words (shaders/logits_half_words.wgsl
// with shaders/half_words_bf16.wgsl or half_words_f16.wgsl), with
// the plain words of logit_words*.wgsl and straddling_words.wgsl (contiguous
// rows; N-d rows never take groups): group g is elements 4·g … 4·g + 3,
// the halves of words 2·g and 2·g + 1, read with word_half and written as
// half_bits, which the element storage defines. The row kernel calls them only
// for groups that lie wholly inside one row (and so inside the caller's slice),
// which one invocation owns: a group loads as two whole words, and both halves
// of each word are computed by that invocation and stored with one whole-word
// store, no read-modify-write. Of a partial group at a row's end,
// store_gradients4_within stores whole the words inside the row and uses the
// half-word store (deferred to the straddling-word pass) only for a
// word that straddles the row's boundary
// (shared with the neighbouring row, or with bytes outside the caller's
// slice): at most two words per row.

fn load_logits4(group: u32) -> vec4<f32> {
    let low = load_word(group * 2u);
    let high = load_word(group * 2u + 1u);
    return vec4<f32>(word_half(low, false), word_half(low, true), word_half(high, false), word_half(high, true));
}

fn store_gradients4(group: u32, values: vec4<f32>) {
    store_word(group * 2u, half_bits(values.x) | (half_bits(values.y) << 16u));
    store_word(group * 2u + 1u, half_bits(values.z) | (half_bits(values.w) << 16u));
}

// Slots first … end - 1 of group `group` (a partial group at a row's end).
fn store_gradients4_within(group: u32, values: vec4<f32>, first: u32, end: u32) {
    for (var word = 0u; word < 2u; word++) {
        let low = word * 2u;
        let has_low = low >= first && low < end;
        let has_high = low + 1u >= first && low + 1u < end;
        let low_bits = half_bits(values[low]);
        let high_bits = half_bits(values[low + 1u]);
        if has_low && has_high {
            store_word(group * 2u + word, low_bits | (high_bits << 16u));
        } else if has_low {
            store_half_word(group * 2u + word, 0u, low_bits);
        } else if has_high {
            store_half_word(group * 2u + word, 16u, high_bits);
        }
    }
}
