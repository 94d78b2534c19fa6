// Class-index targets: reading one row's target from the raw 32-bit words of an
// i64, i32 or u32 array, comparing it with ignore_index (an i64 given as two
// words) and checking it against [0, classes). Shared by cross_entropy.wgsl and
// reduce.wgsl, which both bind the words as `targets: array<u32>`. The TARGET_* format codes come from the
// prelude (src/gpu/kernels/contract.rs).

// decode_target results that are not classes.
const IGNORED_TARGET: u32 = 0xfffffffeu;
const INVALID_TARGET: u32 = 0xffffffffu;

// The row's target as the (low, high) words of an i64.
fn target_words(first_word: u32, row: u32, format: u32) -> vec2<u32> {
    switch format {
        case TARGET_I64: {
            return vec2<u32>(targets[first_word + 2u * row], targets[first_word + 2u * row + 1u]);
        }
        case TARGET_I32: {
            let low = targets[first_word + row];
            return vec2<u32>(low, select(0u, 0xffffffffu, bitcast<i32>(low) < 0));
        }
        default: {
            return vec2<u32>(targets[first_word + row], 0u);
        }
    }
}

// The class, IGNORED_TARGET or INVALID_TARGET.
fn decode_target(words: vec2<u32>, classes: u32, ignore_words: vec2<u32>) -> u32 {
    if all(words == ignore_words) {
        return IGNORED_TARGET;
    }
    return select(INVALID_TARGET, words.x, words.y == 0u && words.x < classes);
}
