// Row reductions through workgroup memory: THREADS_PER_ROW consecutive
// invocations share a row, and each row's values are folded by a fixed-order
// tree inside its own segment of the scratch arrays. Used for every row width
// on adapters without subgroup operations, and for rows narrower than the
// workgroup everywhere. The sum is tree_sum of shaders/sums.wgsl (included with
// this file).
//
//   reduce_row_argmax(v, i) = (max v, smallest i holding it) over the row's invocations
//   reduce_row_sum4(v)      = sum of v over the row's invocations (four lanes)
//
// Every invocation of the workgroup must call these from uniform control flow;
// each returns its row's result to every invocation of the row.

struct ThreadIds {
    @builtin(workgroup_id) workgroup_id: vec3<u32>,
    @builtin(num_workgroups) num_workgroups: vec3<u32>,
    @builtin(local_invocation_index) local_index: u32,
}

var<workgroup> scratch_max: array<ArgMax, WORKGROUP_SIZE>;

fn reduce_row_argmax(value: ArgMax, ids: ThreadIds) -> ArgMax {
    let lane = ids.local_index % THREADS_PER_ROW;
    scratch_max[ids.local_index] = value;
    workgroupBarrier();
    for (var stride = THREADS_PER_ROW / 2u; stride > 0u; stride /= 2u) {
        if lane < stride {
            scratch_max[ids.local_index] = better_argmax(scratch_max[ids.local_index], scratch_max[ids.local_index + stride]);
        }
        workgroupBarrier();
    }
    let result = scratch_max[ids.local_index - lane];
    workgroupBarrier();
    return result;
}

fn reduce_row_sum4(value: vec4<f32>, ids: ThreadIds) -> vec4<f32> {
    return tree_sum(value, ids.local_index, THREADS_PER_ROW);
}
