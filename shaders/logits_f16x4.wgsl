// Logits and gradient as f16, four to a vec4<f16> (8 bytes; the vectorised row
// kernel, as in logits_f32x4.wgsl). Arithmetic stays f32: loads widen, stores
// round to nearest. The words come from shaders/logit_words*.wgsl.

alias LogitWord = vec4<f16>;

fn load_logit(element: u32) -> f32 {
    return f32(load_word(element >> 2u)[element & 3u]);
}

fn load_logits4(group: u32) -> vec4<f32> {
    return vec4<f32>(load_word(group));
}

fn store_gradients4(group: u32, values: vec4<f32>) {
    store_word(group, vec4<f16>(values));
}

// One entry; only correct while the invocation owns the entry's whole group.
// The GROUPED kernel over this storage (LogitAccess::Groups: no partial groups)
// stores whole groups; this serves its entry-by-entry branch, which GROUPED
// compiles out.
fn store_gradient(element: u32, value: f32) {
    var word = load_gradient_word(element >> 2u);
    word[element & 3u] = f16(value);
    store_word(element >> 2u, word);
}
