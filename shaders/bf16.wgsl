// bf16 <-> f32 for the bf16 storages (through shaders/half_words_bf16.wgsl).
// A bf16 is the top 16 bits of an f32.

// The f32 of the bf16 in the low (high == false) or high half of `word`.
fn bf16_half(word: u32, high: bool) -> f32 {
    return bitcast<f32>(select(word << 16u, word & 0xffff0000u, high));
}

// The bf16 bits of `value`, rounded to nearest even on bit 16 (NaN stays a quiet NaN).
fn bf16_bits(value: f32) -> u32 {
    let bits = bitcast<u32>(value);
    if value != value {
        return 0x7fc0u;
    }
    return (bits + 0x7fffu + ((bits >> 16u) & 1u)) >> 16u;
}
