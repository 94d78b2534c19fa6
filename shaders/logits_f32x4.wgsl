// Logits and gradient as f32, four to a vec4. Rows of a multiple of 4 logits that
// start at a multiple of 4 (LogitAccess::Groups) have only whole groups, each
// in one row and one invocation. Other contiguous rows (LogitAccess::MaskedGroups)
// have whole groups in their body and at most two partial groups at their ends,
// which they share with the neighbouring rows: those entries are read and
// written one lane at a time (load_logit, store_gradient, through
// shaders/vector_lanes*.wgsl), never as whole words. The words come from
// shaders/logit_words*.wgsl, as in logits_f32.wgsl; the bindings cover whole
// vec4s (the host rounds them up and keeps this storage for buffers with room).

alias LogitWord = vec4<f32>;

fn load_logit(element: u32) -> f32 {
    return load_word_lane(element >> 2u, element & 3u);
}

// Logits 4·group … 4·group + 3.
fn load_logits4(group: u32) -> vec4<f32> {
    return load_word(group);
}

fn store_gradients4(group: u32, values: vec4<f32>) {
    store_word(group, values);
}

fn store_gradient(element: u32, value: f32) {
    store_word_lane(element >> 2u, element & 3u, value);
}
