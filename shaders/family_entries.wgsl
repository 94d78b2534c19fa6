// The family kernels' gradient stores (shaders/family.wgsl) for the storages
// whose entries store alone, one element per storage word (f32, f16:
// shaders/logits_f32.wgsl, logits_f16.wgsl with shaders/logit_words.wgsl):
// every entry is stored where it is computed, with store_gradient.
// shaders/family_half_words.wgsl defines the same two functions for bf16, whose
// entries share 32-bit words.

// The elementwise kernels' hook after block `block` of a tile
// (shaders/element_tiles.wgsl): the entries are stored already.
fn store_element_block(tile_start: u32, block: u32, local_index: u32) {}

// A row kernel's gradient (shaders/divergence.wgsl): lane ℓ stores columns
// ℓ, ℓ + THREADS_PER_ROW, … of its row.
fn store_row_gradient(gradient: RowGradient) {
    for (var c = gradient.place.lane; c < gradient.place.length; c += THREADS_PER_ROW) {
        store_gradient(gradient.place.start + c, row_gradient_entry(gradient, c));
    }
}
