// The row cache's functions for a streamed row kernel (USE_ROW_CACHE false: rows
// too long for the workgroup memory), so that cross_entropy.wgsl compiles
// unchanged; the kernel never calls them, and no workgroup array is declared,
// so none is reserved. Cached kernels get shaders/row_cache.wgsl instead.

fn cache_logit(index: u32, transformed: f32) {}

fn cached_logit(index: u32) -> f32 {
    return 0.0;
}
