// One entry (lane) of a vec4<f32> storage word, read or written alone, with a
// separate gradient (vector_lanes_in_place.wgsl: the gradient over the logits).
// Appended after shaders/logit_words.wgsl for the f32 vector storage
// (logits_f32x4.wgsl), whose row kernel reaches a row's partial groups of 4 entry
// by entry (LogitAccess::MaskedGroups).
//
// A lane store must write that lane's 4 bytes and nothing else, because the
// other lanes of the word may belong to the neighbouring row, which another
// workgroup writes at the same time. WGSL allows a write to a vector component
// to access the whole vector, and Metal does read-modify-write it; the SPIR-V
// (Vulkan) and HLSL (DX12) that naga writes for `gradient[index][lane] = value`
// store the one f32 (an access chain to the component, then a scalar store), so
// the host picks this storage only on those backends (cross_entropy.rs,
// `lane_stores`); a unit test there checks naga's SPIR-V. A lane load reads only
// its lane.

fn load_word_lane(index: u32, lane: u32) -> f32 {
    return logits[index][lane];
}

fn store_word_lane(index: u32, lane: u32, value: f32) {
    gradient[index][lane] = value;
}
