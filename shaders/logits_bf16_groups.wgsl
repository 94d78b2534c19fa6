// Group accessors over bf16 words (shaders/logits_bf16.wgsl with the atomic
// words of logit_words_atomic*.wgsl): group g is elements 4·g … 4·g + 3, the
// halves of words 2·g and 2·g + 1. The row kernel calls them only for groups
// that lie wholly inside one row (and so inside the caller's slice), which one
// invocation owns: both halves of each word are computed by that invocation and
// stored with one whole-word store, no read-modify-write. Of a partial group at
// a row's end, store_gradients4_within stores whole the words inside the row
// and uses the atomic half-word store only for a word that straddles the row's
// boundary (shared with the neighbouring row, or with bytes outside the
// caller's slice): at most two words per row.

fn load_logits4(group: u32) -> vec4<f32> {
    let low = load_word(group * 2u);
    let high = load_word(group * 2u + 1u);
    return vec4<f32>(bf16_half(low, false), bf16_half(low, true), bf16_half(high, false), bf16_half(high, true));
}

fn store_gradients4(group: u32, values: vec4<f32>) {
    store_word(group * 2u, bf16_bits(values.x) | (bf16_bits(values.y) << 16u));
    store_word(group * 2u + 1u, bf16_bits(values.z) | (bf16_bits(values.w) << 16u));
}

// Slots first … end - 1 of group `group` (a partial group at a row's end).
fn store_gradients4_within(group: u32, values: vec4<f32>, first: u32, end: u32) {
    for (var word = 0u; word < 2u; word++) {
        let low = word * 2u;
        let has_low = low >= first && low < end;
        let has_high = low + 1u >= first && low + 1u < end;
        let low_bits = bf16_bits(values[low]);
        let high_bits = bf16_bits(values[low + 1u]);
        if has_low && has_high {
            store_word(group * 2u + word, low_bits | (high_bits << 16u));
        } else if has_low {
            store_half_word(group * 2u + word, 0u, low_bits);
        } else if has_high {
            store_half_word(group * 2u + word, 16u, high_bits);
        }
    }
}
