// The lanes of shaders/vector_lanes.wgsl with the gradient stored over the
// logits (appended after logit_words_in_place.wgsl): loads and stores on the one
// writable array at BINDING_LOGITS.

fn load_word_lane(index: u32, lane: u32) -> f32 {
    return logits[index][lane];
}

fn store_word_lane(index: u32, lane: u32, value: f32) {
    logits[index][lane] = value;
}
