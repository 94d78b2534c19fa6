// Logits and gradient as bf16, two per 32-bit word (element e is the low half of
// word e/2 when e is even, the high half when odd). A bf16 is the top 16 bits of
// an f32: loading shifts it up; storing rounds the f32 to nearest-even on bit 16
// (NaN stays a quiet NaN). Two invocations may own the two halves of one word
// (a row boundary, or neighbouring classes), so a store clears and sets its half
// with atomicAnd / atomicOr, which commute with the other half's.
// LOGITS_WORD is `u32` (read-only logits) or `atomic<u32>` (in place, where
// GRADIENT_STORAGE is `logits`); LOAD_WORD reads a word of either. bf16_half and
// bf16_bits come from shaders/bf16.wgsl. Rows of a multiple of 4 logits use
// logits_bf16x4.wgsl instead, which stores whole words without atomics.

@group(0) @binding(BINDING_LOGITS) var<storage, LOGITS_ACCESS> logits: array<LOGITS_WORD>;
@group(0) @binding(BINDING_GRADIENT) var<storage, read_write> gradient: array<atomic<u32>>;

fn load_logit(element: u32) -> f32 {
    return bf16_half(LOAD_WORD(element >> 1u), (element & 1u) == 1u);
}

fn store_gradient(element: u32, value: f32) {
    let shift = (element & 1u) * 16u;
    atomicAnd(&GRADIENT_STORAGE[element >> 1u], ~(0xffffu << shift));
    atomicOr(&GRADIENT_STORAGE[element >> 1u], bf16_bits(value) << shift);
}
