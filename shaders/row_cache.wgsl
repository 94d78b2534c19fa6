// The row cache of a cached row kernel (USE_ROW_CACHE; concatenated only into
// kernels whose workgroup's rows fit, ROWS_PER_WORKGROUP × C ≤ ROW_CACHE_SIZE,
// decided on the host): the statistics pass keeps each transformed logit x'_c
// of the workgroup's rows on chip, the gradient pass reads it back instead of
// loading the logit from memory a second time. Streamed kernels get
// shaders/row_cache_streamed.wgsl instead, which declares no workgroup memory.

var<workgroup> row_cache: array<f32, ROW_CACHE_SIZE>;

fn cache_logit(index: u32, transformed: f32) {
    row_cache[index] = transformed;
}

fn cached_logit(index: u32) -> f32 {
    return row_cache[index];
}
