// Logits and gradient as f32, four to a vec4 (the vectorised row kernel: rows of
// a multiple of 4 logits that start at a multiple of 4, so every vec4 belongs to
// one row and one invocation). The words come from shaders/logit_words*.wgsl, as
// in logits_f32.wgsl.

alias LogitWord = vec4<f32>;

fn load_logit(element: u32) -> f32 {
    return load_word(element >> 2u)[element & 3u];
}

// Logits 4·group … 4·group + 3.
fn load_logits4(group: u32) -> vec4<f32> {
    return load_word(group);
}

fn store_gradients4(group: u32, values: vec4<f32>) {
    store_word(group, values);
}

// One entry; only correct while the invocation owns the entry's whole group.
// The GROUPED kernel over this storage (LogitAccess::Groups: no partial groups)
// stores whole groups; this serves its entry-by-entry branch, which GROUPED
// compiles out.
fn store_gradient(element: u32, value: f32) {
    var word = load_gradient_word(element >> 2u);
    word[element & 3u] = value;
    store_word(element >> 2u, word);
}
