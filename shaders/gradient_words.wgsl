// The gradient of N-d rows of 16-bit words (bf16, and f16 without
// Features::SHADER_F16; logits [N, C, d1, …]: row r = (n, s) holds
// element n·C·S + c·S + s of class c), written a whole 32-bit word at a time
// without atomics. Appended after the plain words of shaders/logit_words.wgsl
// (or logit_words_in_place.wgsl) and shaders/deferred_half_words.wgsl.
//
// The two halves of a word are neighbouring elements: rows s and s + 1 of one
// class, or across the S wrap the last row of class c and the first of class
// c + 1 (or of the next block), or an element outside the caller's slice or
// outside the chunk; so no row owns a word. The row kernel therefore stores no
// gradient entry: it records each row's GradientSums (record_gradient_sums in
// shaders/cross_entropy.wgsl), and after each chunk's rows the pass below runs
// one invocation per word of the chunk's gradient window. For each half of its
// word that lies in the chunk, an invocation finds the element's row and
// class, rebuilds the row's RowGradient from the recorded sums with the same
// row_gradient_of, reloads the logit, and computes gradient_entry of the same
// x'_c: the same arithmetic as a gradient pass in the row kernel, so the same
// bits (see the derivation at the top of shaders/cross_entropy.wgsl). A half
// outside the chunk keeps the bits it has, so bytes outside the caller's slice
// are left as they are. A word shared by two chunks (C·S odd, or the slice at
// an odd element) is written by both chunks' passes, each with its own half
// and the other half as it finds it: the chunks run in order, so the later
// pass finds the earlier one's half written and, in place, its own logit still
// there. An invocation reads both logits of its word before it writes it, and
// no other invocation of the pass touches that word, so the gradient may be
// stored over the logits.

@compute @workgroup_size(WORKGROUP_SIZE)
fn write_gradient_words(@builtin(global_invocation_id) id: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let word = params.gradient_offset / 2u + id.x + id.y * groups.x * WORKGROUP_SIZE;
    if word * 2u >= chunk_gradient_end() {
        return;
    }
    let old = load_gradient_word(word);
    let low = gradient_half_bits(word * 2u, old & 0xffffu);
    let high = gradient_half_bits(word * 2u + 1u, old >> 16u);
    store_word(word, low | (high << 16u));
}

// The element of the gradient's binding past the chunk's last one.
fn chunk_gradient_end() -> u32 {
    return params.gradient_offset + params.rows * params.classes;
}

// The gradient bits of element `element` of the gradient's binding, or `kept`
// when the element is not the chunk's.
fn gradient_half_bits(element: u32, kept: u32) -> u32 {
    if element < params.gradient_offset || element >= chunk_gradient_end() {
        return kept;
    }
    let local = element - params.gradient_offset;
    let block = params.classes * params.spatial;
    let within = local % block;
    let class_index = within / params.spatial;
    let row = (local / block) * params.spatial + within % params.spatial;
    let target_class = row_target(row);
    let row_gradient = row_gradient_of(row, recorded_gradient_sums(row), target_class);
    let logit = params.logits_offset + local;
    return half_bits(gradient_entry(row_gradient, gradient_logit(row_gradient, logit, 0u), class_index, logit));
}

// The GradientSums that record_gradient_sums recorded for row `row`.
fn recorded_gradient_sums(row: u32) -> GradientSums {
    let row_max = bitcast<f32>(read_row_output(PLANE_ROW_MAX, row));
    var spread_mass = 0.0;
    if USE_SPREAD {
        spread_mass = bitcast<f32>(read_row_output(PLANE_SPREAD_MASS, row));
    }
    let lse = bitcast<f32>(read_row_output(PLANE_LSE, row));
    let signed_sum_bits = read_row_output(PLANE_SUM_EXP, row);
    let signed_sum = bitcast<f32>(signed_sum_bits);
    if (signed_sum_bits >> 31u) == 1u {
        return GradientSums(row_max, -signed_sum, false, 0.0, spread_mass, lse);
    }
    return GradientSums(row_max, 1.0 + signed_sum, true, signed_sum, spread_mass, lse);
}
