// Row reductions with subgroup operations (Features::SUBGROUP), for kernels in
// which the whole workgroup shares one row (THREADS_PER_ROW == WORKGROUP_SIZE):
// each subgroup reduces in registers, its first lane writes one partial to
// workgroup memory, and every invocation folds the partials in subgroup order.
//
//   reduce_row_argmax(v, i) = (max v, smallest i holding it) over the workgroup
//   reduce_row_sum4(v)      = sum of v over the workgroup (four lanes)
//
// Every invocation of the workgroup must call these from uniform control flow;
// each returns the result to every invocation. MAX_SUBGROUPS (from the prelude)
// is WORKGROUP_SIZE divided by the adapter's smallest subgroup size.

struct ThreadIds {
    @builtin(workgroup_id) workgroup_id: vec3<u32>,
    @builtin(num_workgroups) num_workgroups: vec3<u32>,
    @builtin(local_invocation_index) local_index: u32,
    @builtin(subgroup_invocation_id) lane: u32,
    @builtin(subgroup_id) subgroup_id: u32,
    @builtin(num_subgroups) num_subgroups: u32,
}

var<workgroup> scratch_max: array<ArgMax, MAX_SUBGROUPS>;
var<workgroup> scratch_sum4: array<vec4<f32>, MAX_SUBGROUPS>;

fn reduce_row_argmax(value: ArgMax, ids: ThreadIds) -> ArgMax {
    let subgroup_max = subgroupMax(value.value);
    let subgroup_index = subgroupMin(select(NO_INDEX, value.index, value.value == subgroup_max));
    if ids.lane == 0u {
        scratch_max[ids.subgroup_id] = ArgMax(subgroup_max, subgroup_index);
    }
    workgroupBarrier();
    var result = scratch_max[0];
    for (var index = 1u; index < ids.num_subgroups; index++) {
        result = better_argmax(result, scratch_max[index]);
    }
    workgroupBarrier();
    return result;
}

fn reduce_row_sum4(value: vec4<f32>, ids: ThreadIds) -> vec4<f32> {
    let subgroup_sum = subgroupAdd(value);
    if ids.lane == 0u {
        scratch_sum4[ids.subgroup_id] = subgroup_sum;
    }
    workgroupBarrier();
    var result = scratch_sum4[0];
    for (var index = 1u; index < ids.num_subgroups; index++) {
        result += scratch_sum4[index];
    }
    workgroupBarrier();
    return result;
}
