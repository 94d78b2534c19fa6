// Split-row categorical cross-entropy: rows longer than one workgroup's on-chip
// share are cut into S slices of SLICE_SIZE = WORKGROUP_SIZE × VEC4S_PER_INVOCATION × 4
// logits, one workgroup per slice, and every logit is read from memory once
// (the fused kernel of cross_entropy.wgsl reads a row twice when it does not fit
// its row cache). The math is that kernel's, with its functions (this file is
// compiled after it): x'_c = transform(x_c), and for a row split into slices
// s = 0 … S-1 of statistics (M_s, argmax_s, count_s, rest_s, D_s, mass_s) over
// their own maxima M_s (add_logit, the workgroup reductions):
//
//   M     = max_s M_s                      (better_argmax: ties to the smaller class)
//   count + rest, D, mass = Σ_{s = 0 … S-1} rescaled_sums(slice s, M)   (in this order)
//   lse   = M + log(count + rest)
//
// which is exactly the algebra that folds one workgroup's invocations together
// (D moved to a larger maximum is D - (M - M_s)·mass_s, terms of one sign).
// The loss, z-term, lse and argmax are then write_row_losses (slice 0's, which
// also reports a bad class target: its words into the row outputs, the row
// into the status block, as the fused kernel does) and the gradient
// gradient_entry of row_gradient_of: the same formulas, hence the same
// derivation (d loss / d x'_c = (A + 2·z·lse)·p_c - T_c, times d x'/d x, the
// scale and the upstream gradient; see cross_entropy.wgsl's header).
//
// One slice's workgroup (split_rows):
//   1. loads its logits into registers (a function-scope array of
//      VEC4S_PER_INVOCATION vec4s per invocation, loops of constant bounds),
//      transformed; the slice holding the target also reads x'_y first;
//   2. reduces them to the slice's statistics and publishes them, with x'_y in
//      the target's slice, as its record in `partials`;
//   3. polls the records of its row's S slices (at most spin_limit times;
//      for the loss alone, slice 0 only: the other slices are done);
//   4. with all of them: combines them in slice order and writes its own
//      slice's gradient (slice 0 also the row outputs); else it marks its slice
//      pending and leaves without writing anything.
// split_repair, dispatched next on the same grid, returns at once for a slice
// that is not pending; a pending slice counts itself in
// status[STATUS_REPAIRED_SLICES] (how often the waits failed, for the host to
// read), loads its logits again and does step 4 with the records, all of which
// exist once split_rows has finished. Both paths
// run the same combination on the same records, so the bits do not depend on
// which one a slice took.
//
// Publication without acquire/release: WGSL has no ordering between memory
// locations across workgroups, so nothing here relies on "flag then data".
// `partials` is zero-filled by the host (clear_buffer) and every statistic is
// published with atomicStore as (bits ^ WORD_KEY), WORD_KEY being a NaN pattern
// that no published value has (NaNs are stored as the canonical 0x7fc00000;
// argmax is a class index below 2^31 or NO_INDEX), so no published word is 0
// (the started mark and the pending flag are 1).
// A reader polls each word it needs with atomicLoad until that word is non-zero:
// coherence of a single location makes each word visible eventually, and a word
// read non-zero is the published one (each is written once per call). The
// started mark only shortens a wait; nothing is read on its strength.
//
// Forward progress: workgroups are numbered row-major, slice fastest, so a row's
// slices are consecutive, and a workgroup only ever waits for its own row's. A
// poller never waits without bound (spin_limit polls; UNSTARTED_POLL_LIMIT for a
// slice that has not marked itself started), so no schedule can hang: on an
// adapter that runs one workgroup at a time (a software adapter), every slice
// but the last of a row times out and is finished by split_repair (slow, but
// correct); on a GPU where all of a row's slices are resident they find each
// other's records within a few polls. In place, a slice writes only its own
// logits' gradient, after reading them, and the target logit is read by its
// slice before its reductions and published; a pending slice writes nothing,
// so split_repair reads its logits intact.
//
// The prelude (src/gpu/kernels/cross_entropy/split.rs) is the fused kernel's,
// compiled for whole-workgroup rows without a row cache, plus VEC4S_PER_INVOCATION,
// SLICE_SIZE, `SplitParams` and the split_bindings constants.

@group(1) @binding(BINDING_SPLIT_PARAMS) var<uniform> split: SplitParams;
@group(1) @binding(BINDING_PARTIALS) var<storage, read_write> partials: array<atomic<u32>>;

// The words of a slice's record (RECORD_WORDS of them, from the prelude).
const RECORD_MAX: u32 = 0u;
const RECORD_ARGMAX: u32 = 1u;
const RECORD_COUNT: u32 = 2u;
const RECORD_REST: u32 = 3u;
const RECORD_SPREAD_DOT: u32 = 4u;
const RECORD_SPREAD_MASS: u32 = 5u;
// x'_y, written only by the slice that holds the target class.
const RECORD_TARGET_LOGIT: u32 = 6u;
// Written first thing by the slice's workgroup: it is running.
const RECORD_STARTED: u32 = 7u;
const_assert RECORD_STARTED + 1u == RECORD_WORDS;
// Polls a slice makes for another that has not even started before it gives
// up: a slice not yet running is not resident beside this one (workgroups start
// in order on the adapters that matter), and waiting for it would mostly be
// spent. A started slice is waited for up to spin_limit polls.
const UNSTARTED_POLL_LIMIT: u32 = 16u;

// What clear_buffer leaves in a word nobody has published yet.
const EMPTY_WORD: u32 = 0u;
// A NaN with payload 1: no published value has these bits (see the header).
const WORD_KEY: u32 = 0x7fc00001u;
const CANONICAL_NAN: u32 = 0x7fc00000u;

fn encode_word(bits: u32) -> u32 {
    return bits ^ WORD_KEY;
}

fn decode_word(word: u32) -> u32 {
    return word ^ WORD_KEY;
}

fn encode_float(value: f32) -> u32 {
    let bits = bitcast<u32>(value);
    return encode_word(select(bits, CANONICAL_NAN, (bits & 0x7fffffffu) > 0x7f800000u));
}

fn decode_float(word: u32) -> f32 {
    return bitcast<f32>(decode_word(word));
}

// The slice a workgroup handles: row-major, slice fastest.
struct SliceId {
    row: u32,
    slice: u32,
    // Index of the slice in the chunk: its record and pending flag.
    index: u32,
    // Element of the row's first logit in the logits binding.
    row_start: u32,
}

fn slice_id(ids: ThreadIds) -> SliceId {
    let index = ids.workgroup_id.x + ids.workgroup_id.y * ids.num_workgroups.x;
    let row = index / split.slices;
    return SliceId(row, index % split.slices, index, params.logits_offset + row * params.classes);
}

fn record_base(slice_index: u32) -> u32 {
    return split.records_offset + slice_index * RECORD_WORDS;
}

fn pending_flag(slice_index: u32) -> u32 {
    return split.pending_offset + slice_index;
}

// Class of entry k of vec4 j of invocation `local` in slice `slice`: the
// invocations take consecutive vec4s, so every load is coalesced.
fn class_at(slice: u32, j: u32, local: u32, k: u32) -> u32 {
    return slice * SLICE_SIZE + (j * WORKGROUP_SIZE + local) * 4u + k;
}

alias SliceLogits = array<vec4<f32>, VEC4S_PER_INVOCATION>;

// An invocation's transformed logits of its slice (0 past the row's end).
fn load_slice(row_start: u32, slice: u32, local: u32) -> SliceLogits {
    let classes = params.classes;
    var xs: SliceLogits;
    for (var j = 0u; j < VEC4S_PER_INVOCATION; j++) {
        let first = class_at(slice, j, local, 0u);
        var raw = vec4<f32>(0.0);
        if GROUPED && first < classes {
            raw = load_logits4((row_start + first) / 4u);
        } else {
            for (var k = 0u; k < 4u; k++) {
                if first + k < classes {
                    raw[k] = load_logit(row_start + first + k);
                }
            }
        }
        xs[j] = vec4<f32>(transform(raw.x), transform(raw.y), transform(raw.z), transform(raw.w));
    }
    return xs;
}

// An invocation's statistics of its share of the slice.
fn invocation_stats(xs: ptr<function, SliceLogits>, row_start: u32, slice: u32, local: u32) -> SliceStats {
    var stats = SliceStats(negative_infinity(), NO_INDEX, 0.0, 0.0, 0.0, 0.0);
    for (var j = 0u; j < VEC4S_PER_INVOCATION; j++) {
        for (var k = 0u; k < 4u; k++) {
            let c = class_at(slice, j, local, k);
            if c < params.classes {
                add_logit(&stats, (*xs)[j][k], c, row_start + c, USE_SPREAD, 0u);
            }
        }
    }
    return stats;
}

// The slice that holds the hard target class, or none (S never reaches this).
fn target_slice(target_class: u32) -> u32 {
    if target_class < params.classes {
        return target_class / SLICE_SIZE;
    }
    return NO_INDEX;
}

fn publish(slice_index: u32, best: ArgMax, sums: vec4<f32>) {
    let base = record_base(slice_index);
    atomicStore(&partials[base + RECORD_MAX], encode_float(best.value));
    atomicStore(&partials[base + RECORD_ARGMAX], encode_word(best.index));
    atomicStore(&partials[base + RECORD_COUNT], encode_float(sums.x));
    atomicStore(&partials[base + RECORD_REST], encode_float(sums.y));
    atomicStore(&partials[base + RECORD_SPREAD_DOT], encode_float(sums.z));
    atomicStore(&partials[base + RECORD_SPREAD_MASS], encode_float(sums.w));
}

// The records of the workgroup's row, gathered in workgroup memory.
var<workgroup> gathered: array<SliceStats, MAX_SLICES>;
var<workgroup> gathered_target: f32;
// Slices whose record was not (wholly) visible within the polls.
var<workgroup> missing_records: atomic<u32>;
// split_repair: the slice's pending flag, read once for the whole workgroup.
var<workgroup> slice_pending: u32;

// Polls slice `slice` of the row (and its x'_y when `with_target`) at most
// `polls` times; on success stores it in `gathered`.
fn gather_record(id: SliceId, slice: u32, with_target: bool, polls: u32) -> bool {
    let base = record_base(id.index - id.slice + slice);
    let needed = select(RECORD_TARGET_LOGIT, RECORD_TARGET_LOGIT + 1u, with_target);
    var words: array<u32, RECORD_WORDS>;
    var unstarted_polls = 0u;
    for (var poll = 0u; poll < polls; poll++) {
        var complete = true;
        for (var w = 0u; w < needed; w++) {
            if words[w] == EMPTY_WORD {
                words[w] = atomicLoad(&partials[base + w]);
                complete = complete && words[w] != EMPTY_WORD;
            }
        }
        if complete {
            gathered[slice] = SliceStats(
                decode_float(words[RECORD_MAX]),
                decode_word(words[RECORD_ARGMAX]),
                decode_float(words[RECORD_COUNT]),
                decode_float(words[RECORD_REST]),
                decode_float(words[RECORD_SPREAD_DOT]),
                decode_float(words[RECORD_SPREAD_MASS]),
            );
            if with_target {
                gathered_target = decode_float(words[RECORD_TARGET_LOGIT]);
            }
            return true;
        }
        if atomicLoad(&partials[base + RECORD_STARTED]) == EMPTY_WORD {
            unstarted_polls++;
            if unstarted_polls >= UNSTARTED_POLL_LIMIT {
                return false;
            }
        }
    }
    return false;
}

// Gathers the row's S records (each invocation polls every WORKGROUP_SIZE-th
// slice); true when all of them arrived. Called in uniform control flow.
fn gather_row(id: SliceId, local: u32, target_class: u32, polls: u32) -> bool {
    let with_target = target_slice(target_class);
    for (var slice = local; slice < split.slices; slice += WORKGROUP_SIZE) {
        if !gather_record(id, slice, slice == with_target, polls) {
            atomicAdd(&missing_records, 1u);
        }
    }
    workgroupBarrier();
    return atomicLoad(&missing_records) == 0u;
}

// The row's statistics from the gathered records, folded in slice order.
fn combine_gathered() -> RowTotals {
    var best = ArgMax(gathered[0].row_max, gathered[0].argmax);
    for (var slice = 1u; slice < split.slices; slice++) {
        best = better_argmax(best, ArgMax(gathered[slice].row_max, gathered[slice].argmax));
    }
    var sums = rescaled_sums(gathered[0], best.value);
    for (var slice = 1u; slice < split.slices; slice++) {
        sums += rescaled_sums(gathered[slice], best.value);
    }
    return row_totals(best, sums);
}

// Step 4: the row outputs (slice 0) and the slice's gradient from the gathered records.
fn finish_slice(id: SliceId, local: u32, target_class: u32, xs: ptr<function, SliceLogits>) {
    let totals = combine_gathered();
    if id.slice == 0u && local == 0u {
        write_row_losses(id.row, totals, target_class, gathered_target);
    }
    if WRITE_GRADIENT {
        write_slice_gradient(id, local, row_gradient_of(id.row, gradient_sums(totals), target_class), xs);
    }
}

// The gradient of an invocation's logits, from its registers.
fn write_slice_gradient(id: SliceId, local: u32, row: RowGradient, xs: ptr<function, SliceLogits>) {
    let row_start = id.row_start;
    let gradient_row_start = params.gradient_offset + id.row * params.classes;
    for (var j = 0u; j < VEC4S_PER_INVOCATION; j++) {
        let first = class_at(id.slice, j, local, 0u);
        var values: vec4<f32>;
        for (var k = 0u; k < 4u; k++) {
            values[k] = gradient_entry(row, (*xs)[j][k], first + k, row_start + first + k);
        }
        if GROUPED && first < params.classes {
            store_gradients4((gradient_row_start + first) / 4u, values);
        } else {
            for (var k = 0u; k < 4u; k++) {
                if first + k < params.classes {
                    store_gradient(gradient_row_start + first + k, values[k]);
                }
            }
        }
    }
}

@compute @workgroup_size(WORKGROUP_SIZE)
fn split_rows(ids: ThreadIds) {
    let id = slice_id(ids);
    // Whole workgroups past the chunk's rows (the 2-d grid's tail) leave together.
    if id.row >= params.rows {
        return;
    }
    let local = ids.local_index;
    let row_start = id.row_start;
    let target_class = row_target(id.row);
    let holds_target = target_slice(target_class) == id.slice;
    // Before the reductions' barriers, after which in place gradients overwrite logits.
    var x_target = 0.0;
    if holds_target {
        x_target = transform(load_logit(row_start + target_class));
    }
    if local == 0u {
        atomicStore(&partials[record_base(id.index) + RECORD_STARTED], 1u);
        atomicStore(&missing_records, 0u);
    }
    var xs = load_slice(row_start, id.slice, local);
    let stats = invocation_stats(&xs, row_start, id.slice, local);
    let best = reduce_row_argmax(ArgMax(stats.row_max, stats.argmax), ids);
    let sums = reduce_row_sum4(rescaled_sums(stats, best.value), ids);
    if local == 0u {
        if holds_target {
            atomicStore(&partials[record_base(id.index) + RECORD_TARGET_LOGIT], encode_float(x_target));
        }
        publish(id.index, best, sums);
    }
    storageBarrier();
    // The loss alone: only slice 0 writes anything (the row outputs), so the
    // row's other slices are done once published (id.slice is the workgroup's).
    if !WRITE_GRADIENT && id.slice != 0u {
        return;
    }
    if gather_row(id, local, target_class, split.spin_limit) {
        finish_slice(id, local, target_class, &xs);
    } else if local == 0u {
        atomicStore(&partials[pending_flag(id.index)], 1u);
    }
}

@compute @workgroup_size(WORKGROUP_SIZE)
fn split_repair(ids: ThreadIds) {
    let id = slice_id(ids);
    if id.row >= params.rows {
        return;
    }
    let local = ids.local_index;
    if local == 0u {
        slice_pending = atomicLoad(&partials[pending_flag(id.index)]);
        atomicStore(&missing_records, 0u);
    }
    if workgroupUniformLoad(&slice_pending) == 0u {
        return;
    }
    if local == 0u {
        atomicAdd(&status[STATUS_REPAIRED_SLICES], 1u);
    }
    let target_class = row_target(id.row);
    var xs = load_slice(id.row_start, id.slice, local);
    // split_rows has finished: every record is there at the first poll.
    if gather_row(id, local, target_class, 1u) {
        finish_slice(id, local, target_class, &xs);
    }
}
