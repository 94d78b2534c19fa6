// Logits and gradient as f32, one per word. The words (bindings, loads and
// stores) come from shaders/logit_words.wgsl, or logit_words_in_place.wgsl when
// the gradient overwrites the logits.

alias LogitWord = f32;

fn load_logit(element: u32) -> f32 {
    return load_word(element);
}

fn store_gradient(element: u32, value: f32) {
    store_word(element, value);
}
