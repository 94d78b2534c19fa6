// The deterministic sums every reduction uses, written once: a Kahan-compensated
// running sum and a fixed-order tree over workgroup memory. Both carry four f32
// lanes, each lane summed on its own (a scalar sum is lane x, the others 0): the
// order of every addition is fixed by the code, so two runs give the same bits
// on any adapter. Included by shaders/reduce.wgsl, family.wgsl (and so
// element_tiles.wgsl, binary_cross_entropy.wgsl and divergence.wgsl) and row_reduce_shared.wgsl;
// the prelude defines WORKGROUP_SIZE.

// Four Kahan-compensated running sums.
struct Kahan {
    sum: vec4<f32>,
    compensation: vec4<f32>,
}

fn kahan_zero() -> Kahan {
    return Kahan(vec4<f32>(0.0), vec4<f32>(0.0));
}

// An infinite (or NaN) sum, tested on the bits, keeps no compensation: (inf - s) - inf
// would be NaN and poison every later addition (a +inf total would become NaN).
fn kahan_add(state: Kahan, value: vec4<f32>) -> Kahan {
    let term = value - state.compensation;
    let next = state.sum + term;
    let special = (bitcast<vec4<u32>>(next) & vec4<u32>(0x7f800000u)) == vec4<u32>(0x7f800000u);
    return Kahan(next, select((next - state.sum) - term, vec4<f32>(0.0), special));
}

var<workgroup> tree_scratch: array<vec4<f32>, WORKGROUP_SIZE>;

// Sum of `value` over each run of `width` consecutive invocations (a power of two
// dividing WORKGROUP_SIZE; WORKGROUP_SIZE for the whole workgroup) by a
// fixed-order tree; every invocation gets its run's total. Call from uniform
// control flow.
fn tree_sum(value: vec4<f32>, local_index: u32, width: u32) -> vec4<f32> {
    let lane = local_index % width;
    tree_scratch[local_index] = value;
    workgroupBarrier();
    for (var stride = width / 2u; stride > 0u; stride /= 2u) {
        if lane < stride {
            tree_scratch[local_index] += tree_scratch[local_index + stride];
        }
        workgroupBarrier();
    }
    let total = tree_scratch[local_index - lane];
    workgroupBarrier();
    return total;
}
