// The partial groups at a contiguous row's ends, for storages whose entries
// store without touching their neighbours (f32 and f16 words, and the vector
// storages, whose row kernel has no partial groups): slots first … end - 1 of
// group `group`, entry by entry. bf16 words have their own in
// shaders/logits_half_word_groups.wgsl.

fn store_gradients4_within(group: u32, values: vec4<f32>, first: u32, end: u32) {
    for (var k = first; k < end; k++) {
        store_gradient(group * 4u + k, values[k]);
    }
}
