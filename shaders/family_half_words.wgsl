// The family kernels' 16-bit gradient in 32-bit words (shaders/family.wgsl;
// bf16, and f16 on adapters without Features::SHADER_F16), two entries per
// word (element e is the low half of word e/2 when e is even, the high half
// when odd; shaders/logits_half_words.wgsl, half_bits from
// shaders/half_words_bf16.wgsl or half_words_f16.wgsl), stored a whole word at a time by
// the one invocation that holds both its halves, with plain stores
// (shaders/logit_words.wgsl): no atomics, no read-modify-write of a word another
// invocation writes. Every binding window starts at a whole word, so an
// element's half is that of its index in the caller's slice.
//
// Elementwise kernels (bce_elements, kl_elements): invocation j computes
// elements tile_start + k·W + j, block k = 0 … ELEMENTS_PER_INVOCATION - 1
// (shaders/element_tiles.wgsl; W = WORKGROUP_SIZE), so the two halves of a word
// come from invocations 2m and 2m + 1 of one block. store_gradient (through
// store_half_word below) puts each entry's bits in block_halves, at the
// element's place in its block; after the block (store_element_block: one
// barrier) invocation m < W/2 stores word m of the block whole. The loss sums
// are untouched: every invocation adds the same elements in the same order as
// with any other storage. Tiles (and chunks, runs of whole tiles) start at
// multiples of TILE_ELEMENTS, even elements, so no word spans two tiles. After
// an odd element count the call's last word holds one entry; its high half
// (past the call's elements, inside the caller's slice) is read and kept, and
// no invocation writes it. Two sets of W slots alternate between even and odd
// blocks: block k + 2 writes the set that block k's stores read only after
// block k + 1's barrier, which every invocation reaches after those reads.
//
// Row kernels (entropy_rows, probability_cross_entropy_rows): a row of C
// entries from element s stores the words wholly inside it, both halves
// computed by one lane (lane ℓ: the row's inner words ℓ, ℓ + THREADS_PER_ROW,
// …). A word straddles a row boundary when s is odd (the row's first entry in
// its high half, the previous row's last in its low half) or s + C is odd (the
// row's last entry in its low half). The call's first row starts at element 0
// of its slice and chunk windows start at whole words, so s has the parity of
// the global row · C: for even C no word straddles; for odd C each row has one
// entry in a straddling word, its first (odd rows) or its last (even rows). The
// row kernel records that entry's gradient (f32) in losses[first_index + row]
// (the `losses` binding, which a row kernel writes nothing else to, holds a
// scratch buffer of one f32 per row for such calls), and write_straddling_words,
// dispatched after each chunk's rows, stores each straddling word once, whole:
// an odd row writes the word at its start (low half: the previous row's entry,
// recorded by it, in this chunk or an earlier one; high half: its own); the
// call's last row, if even, writes the word at its end, keeping the high half
// past the call's elements. A chunk's last row leaves the word it shares with
// the next chunk's first row to that chunk's pass. The row kernels only read
// the logits (the family has no in-place gradient), so nothing reads a
// straddling word before it is written.

// The words are plain u32 (shaders/logit_words.wgsl's LogitWord).
alias LogitWord = u32;

// Two sets of one slot per invocation: the 16-bit bits of the entries of the
// elementwise kernels' current (and previous) block.
var<workgroup> block_halves: array<u32, 2u * WORKGROUP_SIZE>;

// store_gradient's store of one half (shaders/logits_half_words.wgsl), called only by
// the elementwise kernels: the bits go to the element's slot of its block.
fn store_half_word(index: u32, shift: u32, bits: u32) {
    let element = index * 2u + shift / 16u - params.input_offset;
    block_halves[element % (2u * WORKGROUP_SIZE)] = bits;
}

// After block `block` of the tile at `tile_start`: word m of the block
// (elements 2m and 2m + 1 of it) stored whole by invocation m (see the top).
fn store_element_block(tile_start: u32, block: u32, local_index: u32) {
    if !has_flag(FLAG_WRITE_GRADIENT) {
        return;
    }
    workgroupBarrier();
    let low = tile_start + block * WORKGROUP_SIZE + 2u * local_index;
    if local_index < WORKGROUP_SIZE / 2u && low < params.count {
        let slot = (block % 2u) * WORKGROUP_SIZE + 2u * local_index;
        let word = (params.input_offset + low) / 2u;
        var high = load_gradient_word(word) >> 16u;
        if low + 1u < params.count {
            high = block_halves[slot + 1u];
        }
        store_word(word, block_halves[slot] | (high << 16u));
    }
}

// A row kernel's gradient: its inner words whole, and its entry in a
// straddling word recorded for write_straddling_words (see the top).
fn store_row_gradient(gradient: RowGradient) {
    let start = gradient.place.start;
    let end = start + gradient.place.length;
    for (var word = (start + 1u) / 2u + gradient.place.lane; word < end / 2u; word += THREADS_PER_ROW) {
        let c = word * 2u - start;
        let low = half_bits(row_gradient_entry(gradient, c));
        store_word(word, low | (half_bits(row_gradient_entry(gradient, c + 1u)) << 16u));
    }
    if gradient.place.lane == 0u && (start % 2u == 1u || end % 2u == 1u) {
        let c = select(gradient.place.length - 1u, 0u, start % 2u == 1u);
        losses[params.first_index + gradient.place.row] = row_gradient_entry(gradient, c);
    }
}

// One invocation per row of the chunk: the straddling word at an odd row's
// start, and the one at the end of the call's last row (see the top).
@compute @workgroup_size(WORKGROUP_SIZE)
fn write_straddling_words(@builtin(global_invocation_id) id: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let row = id.x + id.y * groups.x * WORKGROUP_SIZE;
    if row >= params.count {
        return;
    }
    let start = params.input_offset + row * params.classes;
    let end = start + params.classes;
    let global_row = params.first_index + row;
    let entry = half_bits(losses[global_row]);
    // An odd start is never the call's first row's (global row 0 starts at element 0).
    if start % 2u == 1u && global_row > 0u {
        store_word(start / 2u, half_bits(losses[global_row - 1u]) | (entry << 16u));
    } else if end % 2u == 1u && has_flag(FLAG_FINAL_CHUNK) && row + 1u == params.count {
        let word = end / 2u;
        store_word(word, (load_gradient_word(word) & 0xffff0000u) | entry);
    }
}
