// The deferred half words of 16-bit contiguous rows that are not in aligned
// groups of 4, appended after the plain words of shaders/logit_words.wgsl (or
// logit_words_in_place.wgsl) and shaders/deferred_half_words.wgsl: the row
// kernel stores only the words whose two halves are its own row's, whole and
// without atomics; a word that straddles a
// row's boundary (shared with the neighbouring row, or with bytes outside the
// caller's slice) is left as it is, the row's halves in it recorded
// (record_edge_halves, into PLANE_EDGE_HALVES), and the straddling-word pass
// below writes each such word once, whole, after the rows on both sides are done.
//
// Element e of the gradient's binding is the low half of word e/2 when e is
// even, the high half when odd. A row of C entries starting at element s
// shares word s/2 with what lies before it when s is odd (its first entry in
// the high half), and word (s + C - 1)/2 with what follows when s + C is odd
// (its last entry in the low half). Each such word is written once, whole, by
// the row whose first entry it holds (the later row): low half = the previous
// row's last entry (recorded by that row) or, before the call's first row, the
// word's own low half (bytes outside the caller's slice, kept); high half = the
// row's first entry. The call's last row also writes the word after it when it
// straddles, keeping that word's high half. Nothing else writes these words:
// the row kernel only reads them (both rows' logits, in place too), and this
// pass runs after each chunk's rows, so the previous row (this chunk's or an
// earlier one's) is done; a chunk's last row leaves the word it shares with the
// next chunk to that chunk's pass.

// The words are plain u32, and a half word that straddles a row's boundary
// is not stored (shaders/deferred_half_words.wgsl): the pass below gets it
// from record_edge_halves.

const EDGE_HALF_FIRST: u32 = 0u;
const EDGE_HALF_LAST: u32 = 16u;

// The row kernel's side: row `row`'s first and last entries' gradient bits,
// for the straddling words at its ends.
fn record_edge_halves(row: u32, first: f32, last: f32) {
    write_row_output(PLANE_EDGE_HALVES, row, half_bits(first) | (half_bits(last) << EDGE_HALF_LAST));
}

fn edge_half(global_row: u32, shift: u32) -> u32 {
    return (row_outputs[PLANE_EDGE_HALVES * params.plane_stride + global_row] >> shift) & 0xffffu;
}

@compute @workgroup_size(WORKGROUP_SIZE)
fn write_straddling_words(@builtin(global_invocation_id) id: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let row = id.x + id.y * groups.x * WORKGROUP_SIZE;
    if row >= params.rows {
        return;
    }
    let global_row = params.first_row + row;
    let start = params.gradient_offset + row * params.classes;
    if start % 2u == 1u {
        let word = start / 2u;
        var low = load_gradient_word(word) & 0xffffu;
        if global_row > 0u {
            low = edge_half(global_row - 1u, EDGE_HALF_LAST);
        }
        store_word(word, low | (edge_half(global_row, EDGE_HALF_FIRST) << 16u));
    }
    let end = start + params.classes;
    let last_row = has_flag(FLAG_LAST_CHUNK) && row + 1u == params.rows;
    if end % 2u == 1u && last_row {
        let word = (end - 1u) / 2u;
        let high = load_gradient_word(word) & 0xffff0000u;
        store_word(word, high | edge_half(global_row, EDGE_HALF_LAST));
    }
}
