// Logits and gradient as f16 read and written as halves of 32-bit words, like
// shaders/logits_bf16.wgsl (element e is the low half of word e/2 when e is
// even, the high half when odd), so that a group of 4 loads as two whole words
// and is stored as two (shaders/logits_half_word_groups.wgsl); the words are
// plain (shaders/logit_words*.wgsl), and the half words at a row's boundary are
// left to the straddling-word pass (shaders/straddling_words.wgsl). Used for
// contiguous f16 rows not in aligned groups of 4;
// aligned rows use logits_f16x4.wgsl, N-d rows logits_f16.wgsl. Arithmetic stays
// f32: loads widen exactly; stores round to nearest, NaN stays a quiet NaN and
// a value beyond the largest f16 (after rounding) becomes ±inf, as f16(value).

fn word_half(word: u32, high: bool) -> f32 {
    return unpack2x16float(word)[u32(high)];
}

fn half_bits(value: f32) -> u32 {
    // NaN by its bits: compilers may fold `value != value` to false.
    if (bitcast<u32>(value) & 0x7fffffffu) > 0x7f800000u {
        return 0x7e00u;
    }
    if abs(value) >= 65520.0 {
        return select(0x7c00u, 0xfc00u, value < 0.0);
    }
    // Values between the largest f16 and the rounding boundary round down to it.
    return pack2x16float(vec2<f32>(clamp(value, -65504.0, 65504.0), 0.0)) & 0xffffu;
}

fn load_logit(element: u32) -> f32 {
    return word_half(load_word(element >> 1u), (element & 1u) == 1u);
}

fn store_gradient(element: u32, value: f32) {
    store_half_word(element >> 1u, (element & 1u) * 16u, half_bits(value));
}
