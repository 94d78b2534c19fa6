// The halves of f16 words (IEEE half precision, two per 32-bit word), as
// shaders/logits_half_words.wgsl, logits_half_words_x4.wgsl,
// logits_half_word_groups.wgsl and family_half_words.wgsl read and write them,
// with core WGSL only (no `enable f16;`, no Features::SHADER_F16): loads widen
// exactly; stores round to nearest, NaN stays a quiet NaN and a value beyond
// the largest f16 (after rounding) becomes ±inf, as f16(value) would.
// shaders/half_words_bf16.wgsl defines the same two for bf16.

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
