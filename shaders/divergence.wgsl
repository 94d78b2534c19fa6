// KL divergence (elementwise), entropy and the Keras probability cross-entropy
// (one row of C classes per group of invocations). Compiled appended to
// shaders/family.wgsl, whose bindings, Params, flags, tiles,
// reduce_partials and logarithms these kernels use (and the Kahan sums and trees
// of shaders/sums.wgsl).
//
// KL divergence (PyTorch KLDivLoss), input x = log q, element-wise:
//
//   target p:            loss = p·(log p - x)   (0 where p == 0: xlogy(0, 0) = 0;
//                                                 NaN where p < 0, as xlogy)
//                        d loss / dx = -p
//   log-target t = log p: loss = exp(t)·(t - x),  d loss / dx = -exp(t)
//                        (t - x itself where it is infinite and t > -inf: exp(t) > 0
//                        even where f32 underflows it)
//
//   reductions: sum; mean = sum / (N·C); batchmean = sum / N; the gradient
//   carries the same divisor (and the upstream value of its element, for none). log p - x is formed by log_difference, without
//   cancelling when x ≈ log p: an element keeps about 1.3e-8 / |log p - x|
//   relative accuracy (f32 rounding of the inputs themselves moves it by about
//   6e-8·|x| / |log p - x|).
//
// Entropy of a row, H(P) = -Σ_c p_c·log p_c (0·log 0 = 0):
//
//   from probabilities p:  H = Σ_c entr(p_c), entr(p) = -p·log p (0 at 0, -inf below 0)
//                          d H / d p_c = -(log p_c + 1)   (+inf at p_c = 0, as PyTorch)
//   from logits x:         P = softmax(x). With M = max_c x_c, e_c = exp(x_c - M),
//                          S = Σ_c e_c and D = Σ_c p_c·(M - x_c) = (1/S)·Σ_c e_c·(M - x_c),
//                          log p_c = (x_c - M) - log S, so
//                          H = log S + D                     (two non-negative terms)
//                          d H / d x_c = -p_c·(log p_c + H)  (d p_k / d x_c = p_k·([k == c] - p_c),
//                                        Σ_k p_k = 1)
//                                      = p_c·((M - x_c) - D).
//                          S is carried as count + rest (count: logits equal to M,
//                          each adds exactly 1) so log S = log1p(rest) keeps confident
//                          rows; e_c == 0 (x_c = -inf) adds nothing to D.
//
// Probability cross-entropy (Keras categorical_crossentropy, from_logits=False):
// a row of probabilities p is renormalised and clipped,
//
//   S = Σ_c p_c,  u_c = p_c / S,  q_c = clip(u_c, ε, 1 - ε),  ε = 1e-7,
//   loss = -Σ_c t_c·log q_c      (soft targets t; a class index y means t = onehot(y))
//
//   With m_c = [ε <= u_c <= 1 - ε] (the clip passes the gradient there, zero outside,
//   like TensorFlow's clip_by_value), d loss / d u_c = -m_c·t_c / u_c and
//   d u_c / d p_j = ([c == j] - u_c) / S:
//
//   d loss / d p_j = Σ_c (-m_c·t_c / u_c)·([c == j] - u_c) / S
//                  = T / S - m_j·t_j / p_j,     T = Σ_c m_c·t_c.
//
//   A row where some u_c is NaN (S = 0, a NaN, or an infinite p_c: inf / inf) has
//   a NaN loss and a NaN gradient row, as Keras: its clip keeps NaN and
//   -Σ_c t_c·log q_c takes 0·log NaN = NaN even where t_c = 0. WGSL's clamp of NaN
//   returns a bound on GPUs (which gave -log ε = 16.118), so such rows are counted
//   explicitly (is_nan on the bits) and made NaN.
//
// NaN inputs elsewhere (KL, entropy) are likewise tested with is_nan before any
// comparison, since GPUs fold `NaN != 0.0` and the like as if NaN were a number.
//
// Row kernels: THREADS_PER_ROW consecutive invocations own a row; a workgroup holds
// ROWS_PER_WORKGROUP rows. Each invocation accumulates its strided slice of the
// row with Kahan compensation and a fixed-order tree in workgroup memory combines
// the row (deterministic). The row's loss goes to partials[first_index + row];
// the gradient is written times gradient_factor(row) (shaders/family.wgsl: the
// upstream gradient, over N for the mean; one upstream value per row for none),
// loaded once per row. A row kernel gathers what its gradient entries depend on
// besides their own input (a RowGradient: the row's statistics and that factor)
// and hands it to store_row_gradient, which the storage defines
// (shaders/family_entries.wgsl: entry by entry; shaders/family_half_words.wgsl:
// whole 32-bit words), each entry from row_gradient_entry.

// KERAS_EPSILON (the clip of probabilities) comes from the prelude: the CPU's value.

// Maximum over the row's invocations (NaN inputs make the row NaN later anyway),
// in tree_sum's scratch (shaders/sums.wgsl).
fn row_max(value: f32, local_index: u32) -> f32 {
    let lane = local_index % THREADS_PER_ROW;
    tree_scratch[local_index] = vec4<f32>(value, 0.0, 0.0, 0.0);
    workgroupBarrier();
    for (var stride = THREADS_PER_ROW / 2u; stride > 0u; stride /= 2u) {
        if lane < stride {
            let other = tree_scratch[local_index + stride].x;
            tree_scratch[local_index].x = max(tree_scratch[local_index].x, other);
        }
        workgroupBarrier();
    }
    let total = tree_scratch[local_index - lane].x;
    workgroupBarrier();
    return total;
}

struct RowIds {
    @builtin(workgroup_id) workgroup_id: vec3<u32>,
    @builtin(num_workgroups) num_workgroups: vec3<u32>,
    @builtin(local_invocation_index) local_index: u32,
}

// Where an invocation works: its row (maybe past the end), lane and row start.
struct RowPlace {
    row: u32,
    lane: u32,
    in_range: bool,
    // Columns this invocation visits: the row's C, or 0 past the end.
    length: u32,
    start: u32,
}

fn row_place(ids: RowIds) -> RowPlace {
    let row = workgroup_index(ids.workgroup_id, ids.num_workgroups) * ROWS_PER_WORKGROUP
        + ids.local_index / THREADS_PER_ROW;
    let in_range = row < params.count;
    let length = select(0u, params.classes, in_range);
    let start = params.input_offset + select(0u, row * params.classes, in_range);
    return RowPlace(row, ids.local_index % THREADS_PER_ROW, in_range, length, start);
}

// What a row kernel's gradient entries depend on besides their own input; the
// fields another kernel does not use are 0.
struct RowGradient {
    // ROW_ENTROPY_OF_PROBABILITIES, ROW_ENTROPY_OF_LOGITS or ROW_PROBABILITY_CROSS_ENTROPY.
    kernel: u32,
    place: RowPlace,
    // gradient_factor(row).
    factor: f32,
    // Entropy of logits: M.
    maximum: f32,
    // Entropy of logits: S; probability cross-entropy: Σ_c p_c.
    total: f32,
    // Entropy of logits: D.
    mean_gap: f32,
    // Probability cross-entropy: T / S, the row's class index (class targets), and
    // whether the row is NaN.
    through_total: f32,
    class_index: u32,
    undefined_row: bool,
}

const ROW_ENTROPY_OF_PROBABILITIES: u32 = 0u;
const ROW_ENTROPY_OF_LOGITS: u32 = 1u;
const ROW_PROBABILITY_CROSS_ENTROPY: u32 = 2u;

fn row_gradient(kernel: u32, place: RowPlace) -> RowGradient {
    return RowGradient(kernel, place, gradient_factor(place.row), 0.0, 0.0, 0.0, 0.0, 0u, false);
}

// The gradient entry of column c of the row `gradient` describes (see the top).
fn row_gradient_entry(gradient: RowGradient, c: u32) -> f32 {
    let x = load_logit(gradient.place.start + c);
    if gradient.kernel == ROW_ENTROPY_OF_PROBABILITIES {
        return entropy_slope(x) * gradient.factor;
    }
    if gradient.kernel == ROW_ENTROPY_OF_LOGITS {
        let gap = gradient.maximum - x;
        let probability = exp(-gap) / gradient.total;
        // p = 0 (x = -inf, a masked class): p·(gap - D) → 0, not 0·inf = NaN. NaN stays NaN.
        let entry = select(probability * (gap - gradient.mean_gap), 0.0, probability == 0.0);
        return entry * gradient.factor;
    }
    let t = target_weight(gradient.place, c, gradient.class_index);
    var slope = gradient.through_total;
    if t != 0.0 && inside_clip(x / gradient.total) {
        slope -= t / x;
    }
    return select(slope * gradient.factor, nan_value(), gradient.undefined_row);
}

// ---------------------------------------------------------------- KL divergence

fn kl_element(element: u32) -> f32 {
    let index = params.input_offset + element;
    let x = load_logit(index);
    let t = targets[params.targets_offset + element];
    var loss: f32;
    var slope: f32;
    if has_flag(FLAG_LOG_TARGET) {
        let p = exp(t);
        let difference = t - x;
        // exp(t) > 0 for t > -inf, so an infinite t - x is the loss itself, even
        // where exp(t) underflows f32 (t < -87.3 with subnormals flushed, -103.3
        // without) and p·(t - x) would be 0·inf = NaN; the CPU's f64 gives it too.
        let infinite_difference = (bitcast<u32>(difference) & 0x7fffffffu) == 0x7f800000u;
        let positive_probability = !is_nan(t) && bitcast<u32>(t) != 0xff800000u;
        loss = select(p * difference, difference, infinite_difference && positive_probability);
        slope = -p;
    } else {
        slope = -t;
        if is_nan(t) || t < 0.0 {
            // xlogy(t, t) with t < 0 (or NaN) is NaN.
            loss = nan_value();
        } else if t > 0.0 {
            loss = t * log_difference(t, x);
        } else {
            loss = 0.0 - t * x;
        }
    }
    if has_flag(FLAG_WRITE_GRADIENT) {
        store_gradient(index, slope * gradient_factor(element));
    }
    if has_flag(FLAG_WRITE_LOSSES) {
        losses[index] = loss;
    }
    return loss;
}

// One workgroup per tile of TILE_ELEMENTS elements; writes the tile's loss sum
// (shaders/element_tiles.wgsl).
@compute @workgroup_size(WORKGROUP_SIZE)
fn kl_elements(
    @builtin(workgroup_id) workgroup_id: vec3<u32>,
    @builtin(num_workgroups) num_workgroups: vec3<u32>,
    @builtin(local_invocation_index) local_index: u32,
) {
    sum_element_tile(ELEMENT_KL, workgroup_id, num_workgroups, local_index);
}

// ---------------------------------------------------------------- entropy

// entr(p) = -p·log p, 0 at 0, -inf below 0 (torch.special.entr).
fn entr(p: f32) -> f32 {
    if is_nan(p) {
        return p;
    }
    if p > 0.0 {
        return -p * log_accurate(p);
    }
    if p == 0.0 {
        return 0.0;
    }
    return -infinity_value();
}

// d H / d p = -(log p + 1): +inf at p == 0; NaN for NaN and for p < 0 (log of a
// negative number), as PyTorch.
fn entropy_slope(p: f32) -> f32 {
    if is_nan(p) || p < 0.0 {
        return nan_value();
    }
    if p > 0.0 {
        return -log_difference(p, -1.0);
    }
    return infinity_value();
}

fn entropy_of_probabilities(place: RowPlace, ids: RowIds) {
    var state = kahan_zero();
    for (var c = place.lane; c < place.length; c += THREADS_PER_ROW) {
        state = kahan_add(state, vec4<f32>(entr(load_logit(place.start + c)), 0.0, 0.0, 0.0));
    }
    let total = tree_sum(state.sum, ids.local_index, THREADS_PER_ROW);
    if !place.in_range {
        return;
    }
    if place.lane == 0u {
        partials[params.first_index + place.row] = total.x;
    }
    if has_flag(FLAG_WRITE_GRADIENT) {
        store_row_gradient(row_gradient(ROW_ENTROPY_OF_PROBABILITIES, place));
    }
}

fn entropy_of_logits(place: RowPlace, ids: RowIds) {
    var local_max = -infinity_value();
    for (var c = place.lane; c < place.length; c += THREADS_PER_ROW) {
        local_max = max(local_max, load_logit(place.start + c));
    }
    let maximum = row_max(local_max, ids.local_index);
    // (count, rest, Σ e·(M - x)) with Kahan compensation.
    var state = kahan_zero();
    for (var c = place.lane; c < place.length; c += THREADS_PER_ROW) {
        let gap = maximum - load_logit(place.start + c);
        if gap == 0.0 {
            state = kahan_add(state, vec4<f32>(1.0, 0.0, 0.0, 0.0));
        } else {
            let e = exp(-gap);
            // e == 0 (x = -inf): p = 0 adds nothing (0·inf would be NaN). NaN stays NaN.
            let weighted = select(e * gap, 0.0, e == 0.0);
            state = kahan_add(state, vec4<f32>(0.0, e, weighted, 0.0));
        }
    }
    let sums = tree_sum(state.sum, ids.local_index, THREADS_PER_ROW);
    if !place.in_range {
        return;
    }
    let count = sums.x;
    let rest = sums.y;
    let total = count + rest;
    var log_total = log_accurate(total);
    if count == 1.0 && rest <= 1.0 {
        log_total = log1p_series(rest);
    }
    let mean_gap = sums.z / total;
    if place.lane == 0u {
        partials[params.first_index + place.row] = log_total + mean_gap;
    }
    if has_flag(FLAG_WRITE_GRADIENT) {
        var gradient = row_gradient(ROW_ENTROPY_OF_LOGITS, place);
        gradient.maximum = maximum;
        gradient.total = total;
        gradient.mean_gap = mean_gap;
        store_row_gradient(gradient);
    }
}

@compute @workgroup_size(WORKGROUP_SIZE)
fn entropy_rows(ids: RowIds) {
    let place = row_place(ids);
    if has_flag(FLAG_PROBABILITIES) {
        entropy_of_probabilities(place, ids);
    } else {
        entropy_of_logits(place, ids);
    }
}

// ---------------------------------------------------------------- probability cross-entropy

// The target weight t_c of column c: the soft target, or [c == class] for class targets.
fn target_weight(place: RowPlace, c: u32, class_index: u32) -> f32 {
    if has_flag(FLAG_CLASS_TARGETS) {
        return select(0.0, 1.0, c == class_index);
    }
    return targets[params.targets_offset + place.row * params.classes + c];
}

// [ε <= u <= 1 - ε]: the clip passes the gradient.
fn inside_clip(u: f32) -> bool {
    return u >= KERAS_EPSILON && u <= 1.0 - KERAS_EPSILON;
}

@compute @workgroup_size(WORKGROUP_SIZE)
fn probability_cross_entropy_rows(ids: RowIds) {
    let place = row_place(ids);
    var class_index = 0u;
    if has_flag(FLAG_CLASS_TARGETS) && place.in_range {
        class_index = bitcast<u32>(targets[params.targets_offset + place.row]);
    }
    var mass = kahan_zero();
    for (var c = place.lane; c < place.length; c += THREADS_PER_ROW) {
        mass = kahan_add(mass, vec4<f32>(load_logit(place.start + c), 0.0, 0.0, 0.0));
    }
    let total = tree_sum(mass.sum, ids.local_index, THREADS_PER_ROW).x;
    // (Σ -t·log q, T = Σ m·t, count of NaN u)
    var state = kahan_zero();
    for (var c = place.lane; c < place.length; c += THREADS_PER_ROW) {
        let t = target_weight(place, c, class_index);
        let u = load_logit(place.start + c) / total;
        let undefined = is_nan(u);
        let q = clamp(u, KERAS_EPSILON, 1.0 - KERAS_EPSILON);
        let passed = select(0.0, t, inside_clip(u) && !undefined);
        // t == 0 adds nothing (q >= ε, so log q is finite); a NaN t stays NaN.
        let term = select(-t * log_accurate(q), 0.0, t == 0.0 && !is_nan(t));
        state = kahan_add(state, vec4<f32>(select(term, 0.0, undefined), passed, select(0.0, 1.0, undefined), 0.0));
    }
    let sums = tree_sum(state.sum, ids.local_index, THREADS_PER_ROW);
    if !place.in_range {
        return;
    }
    // Some u is NaN: the whole row is NaN (see the top). So is a row whose class
    // index lies outside [0, C) (a host call rejects it first; a device-resident
    // call cannot).
    let bad_class = has_flag(FLAG_CLASS_TARGETS) && class_index >= params.classes;
    let undefined_row = sums.z != 0.0 || bad_class;
    if place.lane == 0u {
        partials[params.first_index + place.row] = select(sums.x, nan_value(), undefined_row);
    }
    if has_flag(FLAG_WRITE_GRADIENT) {
        var gradient = row_gradient(ROW_PROBABILITY_CROSS_ENTROPY, place);
        gradient.total = total;
        gradient.through_total = sums.y / total;
        gradient.class_index = class_index;
        gradient.undefined_row = undefined_row;
        store_row_gradient(gradient);
    }
}
