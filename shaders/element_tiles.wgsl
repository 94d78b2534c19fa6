// The tile loop of the elementwise kernels (bce_elements in
// shaders/binary_cross_entropy.wgsl, kl_elements in shaders/divergence.wgsl),
// written once. Compiled appended to shaders/family.wgsl, which describes the
// tiles and the fixed order of their sums; kahan_add and tree_sum come from
// shaders/sums.wgsl.

// Which loss an elementwise kernel sums: bce_element or kl_element.
const ELEMENT_BCE: u32 = 0u;
const ELEMENT_KL: u32 = 1u;

// The loss of `element` by the elementwise kernel `kernel` (and its gradient and
// per-element loss, as the flags ask).
fn element_loss(kernel: u32, element: u32) -> f32 {
    if kernel == ELEMENT_BCE {
        return bce_element(element);
    }
    return kl_element(element);
}

// One workgroup per tile of TILE_ELEMENTS elements: partials[tile] = the tile's
// loss sum by `kernel` (a constant: every invocation takes the same branches).
fn sum_element_tile(kernel: u32, workgroup_id: vec3<u32>, num_workgroups: vec3<u32>, local_index: u32) {
    let tile = workgroup_index(workgroup_id, num_workgroups);
    let tile_start = tile * TILE_ELEMENTS;
    // Whole workgroups past the end (of a 2-D dispatch) leave together: uniform.
    if tile_start >= params.count {
        return;
    }
    var state = kahan_zero();
    for (var k = 0u; k < ELEMENTS_PER_INVOCATION; k++) {
        let element = tile_start + k * WORKGROUP_SIZE + local_index;
        if element < params.count {
            state = kahan_add(state, vec4<f32>(element_loss(kernel, element), 0.0, 0.0, 0.0));
        }
        // The storage's hook (shaders/family_entries.wgsl, family_half_words.wgsl).
        store_element_block(tile_start, k, local_index);
    }
    let total = tree_sum(state.sum, local_index, WORKGROUP_SIZE).x;
    if local_index == 0u {
        partials[params.first_index / TILE_ELEMENTS + tile] = total;
    }
}
