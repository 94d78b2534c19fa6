// The vocabulary-sharded categorical cross-entropy: one shard holds classes
// [start, start + K) of a vocabulary of C, its logits are rows × K (row-major).
// Two kernels, one workgroup per row; the combination between them runs on the
// host (src/cpu/sharded.rs), or across devices as an all-reduce.
//
// Transformed logits x'_c = t·tanh(s·x_c / t) (softcap t, logit scale s; s·x_c
// without softcap), class weights w (1 without), smoothing ε, z-loss z.
//
// shard_stats: the shard's per-row statistics (planes STAT_* of row_data):
//
//   m      = max_c x'_c                     over the shard's classes
//   count  = #{c : x'_c = m}                each adds exp(0) = 1 exactly
//   rest   = Σ_{x'_c ≠ m} exp(x'_c − m)     (NaN when a logit is NaN)
//   x'_y, and 1, when the row's target y is in the shard (else 0 and 0)
//   D      = Σ_c w_c·(m − x'_c) ≥ 0         (terms with x'_c = m add nothing)
//
// Combination (host): M = max_s m_s over the shards; each shard's sums are
// rescaled to M (count → 0 and rest → (count + rest)·exp(m_s − M) where
// m_s < M; D → D + W_s·(M − m_s) with W_s = Σ w_c over the shard) and added:
//
//   L    = ln(count + rest)   (ln_1p(rest) when count = 1: confident rows)
//   lse  = M + L
//   loss = (1−ε)·w_y·((M − x'_y) + L) + (ε/C)·(D + W·L) + z·lse²
//
// (the smoothing term Σ_c w_c·(lse − x'_c) = D + W·L is a sum of non-negative
// terms: nothing cancels, even for logits offset by 1e4).
//
// shard_gradient: with p_c = exp((x'_c − M) − L) = softmax(x')_c and
// d lse / d x'_c = p_c,
//
//   d loss / d x'_c = (1−ε)·w_y·(p_c − [c = y]) + (ε/C)·Σ_k w_k·(p_c − [c = k]) + 2·z·lse·p_c
//                   = (A + 2·z·lse)·p_c − (ε/C)·w_c − (1−ε)·w_y·[c = y],
//   A = (1−ε)·w_y + (ε/C)·W,
//   d L / d x_c = scale · d loss / d x'_c · d x'_c / d x_c,
//   d x'_c / d x_c = s·(1 − (x'_c / t)²) with softcap, s without,
//
// scale = 1/Σ w_y (mean) or 1. The host folds scale into the per-row
// coefficients (planes COEFFICIENT_* of row_data): M, L,
// other = scale·((ε/C)·W + 2·z·lse), target = scale·(1−ε)·w_y (so that
// scale·(A + 2·z·lse) = other + target), smoothing = scale·ε/C, and `rest` when
// one logit alone attains M (else −1); a mean over a zero divisor makes them
// NaN (PyTorch's 0/0).
//
// A confident row's target (the unique maximum, x'_y = M) has
// p_y = 1/(1 + rest), so its entry is computed as
//   other·p_y − target·rest·p_y − smoothing·w_y      (p_y − 1 = −rest·p_y exactly)
// instead of (other + target)·p_y − target, which is 0 in f32 once rest < 6e-8.
// Rows whose target is ignored (TARGET_IGNORED) write exact zeros.
//
// The prelude (src/gpu/kernels/sharded.rs) defines WORKGROUP_SIZE and declares
// `ShardParams`, the BINDING_* numbers, the STAT_* / COEFFICIENT_* planes and
// the TARGET_* codes (src/gpu/kernels/contract.rs); shaders/sums.wgsl follows it
// (kahan_add, tree_sum, tree_scratch). No atomics: the order of every addition
// is fixed, so two runs give the same bits.

@group(0) @binding(BINDING_PARAMS) var<uniform> params: ShardParams;
@group(0) @binding(BINDING_LOGITS) var<storage, read> logits: array<f32>;
// One word per row of the call: the target's index in the shard, or a TARGET_* code.
@group(0) @binding(BINDING_LOCAL_TARGETS) var<storage, read> local_targets: array<u32>;
// The shard's class weights (has_weights), indexed by the class in the shard.
@group(0) @binding(BINDING_CLASS_WEIGHTS) var<storage, read> class_weights: array<f32>;
// Planes of plane_stride rows: STAT_* (written by shard_stats) or COEFFICIENT_*
// (read by shard_gradient).
@group(0) @binding(BINDING_ROW_DATA) var<storage, read_write> row_data: array<f32>;
@group(0) @binding(BINDING_GRADIENT) var<storage, read_write> gradient: array<f32>;

// Not constants, so that no compiler folds them away.
fn nan_value() -> f32 {
    return bitcast<f32>(0x7fc00000u + params.rows * 0u);
}

fn negative_infinity() -> f32 {
    return bitcast<f32>(0xff800000u + params.rows * 0u);
}

// From the bits: GPUs fold comparisons with NaN as if it were a number.
fn is_nan(v: f32) -> bool {
    return (bitcast<u32>(v) & 0x7fffffffu) > 0x7f800000u;
}

fn class_weight(class_index: u32) -> f32 {
    if params.has_weights != 0u {
        return class_weights[class_index];
    }
    return 1.0;
}

// x': the logit after scaling and soft-capping.
fn transform(logit: f32) -> f32 {
    let scaled = logit * params.logit_scale;
    if params.has_softcap != 0u {
        return softcap_transform(scaled, params.softcap);
    }
    return scaled;
}

// d x' / d x at a transformed logit x'.
fn transform_derivative(transformed: f32) -> f32 {
    if params.has_softcap != 0u {
        let ratio = transformed / params.softcap;
        return params.logit_scale * (1.0 - ratio * ratio);
    }
    return params.logit_scale;
}

// Where row `row` of the chunk sits in row_data's plane `plane`.
fn row_slot(plane: u32, row: u32) -> u32 {
    return plane * params.plane_stride + params.first_row + row;
}

// One workgroup per row of the chunk.
struct RowIds {
    @builtin(workgroup_id) workgroup_id: vec3<u32>,
    @builtin(num_workgroups) num_workgroups: vec3<u32>,
    @builtin(local_invocation_index) local_index: u32,
}

// The chunk's row of this workgroup (maybe past the chunk's end).
fn chunk_row(ids: RowIds) -> u32 {
    return ids.workgroup_id.x + ids.workgroup_id.y * ids.num_workgroups.x;
}

// Index of the row's first logit (and gradient entry) in the bound window.
fn row_start(row: u32) -> u32 {
    return params.logits_offset + row * params.classes;
}

// Maximum over the workgroup by a fixed-order tree in tree_scratch (shaders/sums.wgsl).
fn workgroup_max(value: f32, local_index: u32) -> f32 {
    tree_scratch[local_index] = vec4<f32>(value, 0.0, 0.0, 0.0);
    workgroupBarrier();
    for (var stride = WORKGROUP_SIZE / 2u; stride > 0u; stride /= 2u) {
        if local_index < stride {
            tree_scratch[local_index].x = max(tree_scratch[local_index].x, tree_scratch[local_index + stride].x);
        }
        workgroupBarrier();
    }
    let total = tree_scratch[0].x;
    workgroupBarrier();
    return total;
}

@compute @workgroup_size(WORKGROUP_SIZE)
fn shard_stats(ids: RowIds) {
    let row = chunk_row(ids);
    if row >= params.rows {
        return;
    }
    let local_index = ids.local_index;
    let start = row_start(row);
    // NaN logits are left out of the maximum and make `rest` NaN.
    var local_max = negative_infinity();
    for (var c = local_index; c < params.classes; c += WORKGROUP_SIZE) {
        let x = transform(logits[start + c]);
        if !is_nan(x) {
            local_max = max(local_max, x);
        }
    }
    let row_max = workgroup_max(local_max, local_index);
    // Lanes: count, rest, spread, NaN logits.
    var state = kahan_zero();
    for (var c = local_index; c < params.classes; c += WORKGROUP_SIZE) {
        let x = transform(logits[start + c]);
        var term = vec4<f32>(1.0, 0.0, 0.0, 0.0);
        if is_nan(x) {
            term = vec4<f32>(0.0, 0.0, 0.0, 1.0);
        } else if x != row_max {
            term = vec4<f32>(0.0, exp(x - row_max), class_weight(c) * (row_max - x), 0.0);
        }
        state = kahan_add(state, term);
    }
    let totals = tree_sum(state.sum, local_index, WORKGROUP_SIZE);
    if local_index == 0u {
        let target_class = local_targets[params.first_row + row];
        var target_logit = 0.0;
        var target_count = 0.0;
        if target_class < params.classes {
            target_logit = transform(logits[start + target_class]);
            target_count = 1.0;
        }
        row_data[row_slot(STAT_MAX, row)] = row_max;
        row_data[row_slot(STAT_MAX_COUNT, row)] = totals.x;
        row_data[row_slot(STAT_REST, row)] = select(totals.y, nan_value(), totals.w > 0.0);
        row_data[row_slot(STAT_TARGET_LOGIT, row)] = target_logit;
        row_data[row_slot(STAT_TARGET_COUNT, row)] = target_count;
        row_data[row_slot(STAT_SPREAD, row)] = totals.z;
    }
}

@compute @workgroup_size(WORKGROUP_SIZE)
fn shard_gradient(ids: RowIds) {
    let row = chunk_row(ids);
    if row >= params.rows {
        return;
    }
    let local_index = ids.local_index;
    let start = row_start(row);
    let target_class = local_targets[params.first_row + row];
    if target_class == TARGET_IGNORED {
        for (var c = local_index; c < params.classes; c += WORKGROUP_SIZE) {
            gradient[start + c] = 0.0;
        }
        return;
    }
    let row_max = row_data[row_slot(COEFFICIENT_MAX, row)];
    let ln_sum_exp = row_data[row_slot(COEFFICIENT_LN_SUM_EXP, row)];
    let other_scale = row_data[row_slot(COEFFICIENT_OTHER, row)];
    let smoothing_scale = row_data[row_slot(COEFFICIENT_SMOOTHING, row)];
    let target_scale = row_data[row_slot(COEFFICIENT_TARGET, row)];
    let confident_rest = row_data[row_slot(COEFFICIENT_CONFIDENT_REST, row)];
    // A row whose maximum is not finite (a +inf logit, or only -inf) or that
    // holds a NaN (the host then sends L = NaN): a NaN gradient row, as the
    // unsharded loss and the CPU give. exp of NaN is not reliably NaN on GPUs.
    if (bitcast<u32>(row_max) & 0x7fffffffu) >= 0x7f800000u || is_nan(ln_sum_exp) {
        for (var c = local_index; c < params.classes; c += WORKGROUP_SIZE) {
            gradient[start + c] = nan_value();
        }
        return;
    }
    for (var c = local_index; c < params.classes; c += WORKGROUP_SIZE) {
        let x = transform(logits[start + c]);
        let probability = exp((x - row_max) - ln_sum_exp);
        let smoothing_term = smoothing_scale * class_weight(c);
        var d_transformed = (other_scale + target_scale) * probability - smoothing_term;
        if c == target_class {
            if confident_rest >= 0.0 && x == row_max {
                let p_target = 1.0 / (1.0 + confident_rest);
                d_transformed = other_scale * p_target - target_scale * confident_rest * p_target - smoothing_term;
            } else {
                d_transformed -= target_scale;
            }
        }
        gradient[start + c] = d_transformed * transform_derivative(x);
    }
}
