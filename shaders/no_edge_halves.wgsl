// The row kernel's hook for the straddling-word pass (shaders/straddling_words.wgsl)
// in every storage that needs no such pass, because it stores each word where it
// is computed: nothing to record.

fn record_edge_halves(row: u32, first: f32, last: f32) {}
