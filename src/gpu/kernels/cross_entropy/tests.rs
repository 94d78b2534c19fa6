use super::super::pipeline::assert_valid_wgsl;
use super::bind_groups::ignore_words;
use super::*;

#[test]
fn chunks_cover_every_row_once_within_the_binding() {
    let shape = Shape::new(1003, 77);
    let max_binding = 4096;
    let chunks = plan_chunks(
        shape,
        LogitType::F32,
        TargetType::I64,
        max_binding,
        256,
        Starts::default(),
    )
    .expect("plan");
    assert_eq!(chunks.first().map(|chunk| chunk.first), Some(0));
    let mut next_row = 0;
    for chunk in &chunks {
        assert_eq!(chunk.first, next_row);
        next_row += chunk.count;
        for window in [chunk.inputs, chunk.targets] {
            assert_eq!(window.byte_offset % 256, 0);
            assert!(window.byte_size <= max_binding);
        }
    }
    assert_eq!(next_row, 1003);
    assert_eq!(chunks.len(), 1003usize.div_ceil(((4096 - 256) / (77 * 4)) as usize));
}

#[test]
fn nd_chunks_hold_whole_blocks() {
    let shape = Shape::nd(10, 5, &[3, 4]).expect("shape");
    let chunks = plan_chunks(shape, LogitType::F32, TargetType::I64, 1024, 32, Starts::default()).expect("plan");
    assert!(
        chunks
            .iter()
            .all(|chunk| chunk.first % 12 == 0 && chunk.count % 12 == 0)
    );
    assert_eq!(chunks.iter().map(|chunk| chunk.count).sum::<u64>(), 120);
}

#[test]
fn a_row_larger_than_a_binding_is_an_error() {
    let result = plan_chunks(
        Shape::new(2, 1 << 20),
        LogitType::F32,
        TargetType::U32,
        1 << 20,
        256,
        Starts::default(),
    );
    assert!(matches!(result, Err(Error::TooLarge(_))));
}

#[test]
fn vector_groups_only_for_aligned_rows_of_a_multiple_of_four_and_masked_groups_for_other_contiguous_rows() {
    let chunked = |shape: Shape, logit_type, f32_vectors| {
        let chunks = plan_chunks(shape, logit_type, TargetType::I64, 4096, 32, Starts::default()).expect("plan");
        assert!(chunks.len() > 1, "{shape:?} is split");
        logit_access(shape, logit_type, &chunks, &[], f32_vectors)
    };
    for f32_vectors in [false, true] {
        for logit_type in [LogitType::F32, LogitType::F16, LogitType::Bf16] {
            assert_eq!(
                chunked(Shape::new(1000, 1000), logit_type, f32_vectors),
                LogitAccess::Groups
            );
            assert_eq!(
                chunked(Shape::new(1000, 4), logit_type, f32_vectors),
                LogitAccess::Groups
            );
            // Contiguous rows not in aligned groups of 4: 16-bit types in groups
            // with masked edges (whole words); f32 too where the context takes
            // vectors for them, else entry by entry.
            let unaligned = if logit_type == LogitType::F32 && !f32_vectors {
                LogitAccess::Entries
            } else {
                LogitAccess::MaskedGroups
            };
            assert_eq!(chunked(Shape::new(1000, 1001), logit_type, f32_vectors), unaligned);
            assert_eq!(chunked(Shape::new(1000, 6), logit_type, f32_vectors), unaligned);
            let nd = Shape::nd(100, 4, &[8]).expect("shape");
            assert_eq!(chunked(nd, logit_type, f32_vectors), LogitAccess::Entries);
        }
    }
}

#[test]
fn vector_windows_widen_to_whole_vec4s_only_inside_the_buffer() {
    let window = |byte_offset, byte_size| Window {
        byte_offset,
        byte_size,
        first_word: 3,
    };
    let mut windows = [window(0, 20), window(256, 36)];
    assert!(widen_to_vectors(&mut windows, 304));
    assert_eq!(windows, [window(0, 32), window(256, 48)]);
    // 256 + 48 = 304 bytes do not fit a buffer of 300: nothing changes.
    let mut windows = [window(0, 20), window(256, 36)];
    assert!(!widen_to_vectors(&mut windows, 300));
    assert_eq!(windows, [window(0, 20), window(256, 36)]);
}

#[test]
fn slices_are_bound_aligned_down_with_their_first_element_inside() {
    let shape = Shape::new(10, 8);
    let starts = Starts {
        logits: 1000,
        targets: 36,
    };
    let chunks = plan_chunks(shape, LogitType::Bf16, TargetType::I64, 1 << 20, 256, starts).expect("plan");
    assert_eq!(chunks.len(), 1);
    // Byte 1000 is 256 · 3 + 232: bf16 element 116 of a binding at 768.
    assert_eq!((chunks[0].inputs.byte_offset, chunks[0].inputs.first_word), (768, 116));
    assert_eq!((chunks[0].targets.byte_offset, chunks[0].targets.first_word), (0, 9));
    assert_eq!(
        logit_access(shape, LogitType::Bf16, &chunks, &[chunks[0].inputs], false),
        LogitAccess::Groups
    );
    // A gradient at an element offset of 2 mod 4: groups aligned in the
    // bindings, with masked edges.
    let gradient = logit_rows_window(1004, 0, 10, shape, LogitType::Bf16, 256);
    assert_eq!(gradient.first_word, 118);
    assert_eq!(
        logit_access(shape, LogitType::Bf16, &chunks, &[gradient], false),
        LogitAccess::MaskedGroups
    );
}

#[test]
fn narrow_rows_share_a_workgroup() {
    assert_eq!(threads_per_row(1, 256), 4);
    assert_eq!(threads_per_row(32, 256), 4);
    assert_eq!(threads_per_row(33, 256), 16);
    assert_eq!(threads_per_row(512, 256), 64);
    assert_eq!(threads_per_row(513, 256), 256);
    assert_eq!(threads_per_row(262_144, 256), 256);
    // A workgroup of 64 has no 64-wide narrow variant: such rows take it whole.
    assert_eq!(threads_per_row(512, 64), 64);
    assert_eq!(threads_per_row(100, 64), 16);
    assert_eq!(threads_per_row(513, 1024), 1024);
}

#[test]
fn row_cache_fits_beside_the_scratch() {
    assert_eq!(row_cache_size(16_384, 256), 2048);
    assert_eq!(row_cache_size(32_768, 256), 4096);
    assert_eq!(row_cache_size(49_152, 256), 8192);
    assert_eq!(row_cache_size(1024, 256), 1);
    assert_eq!(row_cache_size(49_152, 1024), 4096);
}

#[test]
fn every_row_kernel_variant_is_valid_wgsl_without_atomic_half_words() {
    // f16 as `f16`, and as halves of words (no SHADER_F16: no `enable f16;`,
    // which WGSL needs before any use of the type, so such a source would not parse).
    let element_types = [
        (LogitType::F32, false),
        (LogitType::F16, false),
        (LogitType::F16, true),
        (LogitType::Bf16, false),
    ];
    for (logit_type, f16_words) in element_types {
        for access in [LogitAccess::Entries, LogitAccess::MaskedGroups, LogitAccess::Groups] {
            for gradient in [GradientMode::Skip, GradientMode::Separate, GradientMode::InPlace] {
                for (subgroups, threads_per_row) in [(true, 256), (false, 256), (false, 16)] {
                    for features in [OptionFeatures::default(), every_option()] {
                        for row_cache in [0, 2048] {
                            let key = RowKernelKey {
                                threads_per_row,
                                access,
                                row_cache,
                                logit_type,
                                gradient,
                                features,
                            };
                            for backward in [false, true] {
                                let source = RowKernelConfig {
                                    backward,
                                    f16_words,
                                    ..config(key, subgroups)
                                }
                                .source();
                                assert_valid_wgsl(&source);
                                assert_eq!(
                                    source.starts_with("enable f16;"),
                                    logit_type == LogitType::F16 && !f16_words
                                );
                                assert!(
                                    !source.contains("atomicAnd") && !source.contains("atomicOr"),
                                    "{key:?}: a half word stored with atomics"
                                );
                            }
                        }
                    }
                }
            }
        }
    }
    assert_valid_wgsl(&reduce_source());
}

/// The features of a kernel compiled for every option.
fn every_option() -> OptionFeatures {
    OptionFeatures {
        weights: true,
        logit_scale: true,
        softcap: true,
        spread: true,
        upstream_values: true,
    }
}

#[test]
fn every_split_kernel_variant_is_valid_wgsl() {
    for logit_type in [LogitType::F32, LogitType::F16, LogitType::Bf16] {
        for access in [LogitAccess::Entries, LogitAccess::Groups] {
            for gradient in [GradientMode::Skip, GradientMode::Separate, GradientMode::InPlace] {
                for subgroups in [true, false] {
                    for features in [OptionFeatures::default(), every_option()] {
                        let key = RowKernelKey {
                            threads_per_row: 256,
                            access,
                            row_cache: 0,
                            logit_type,
                            gradient,
                            features,
                        };
                        for vec4s in crate::gpu::row_split::ROW_SPLIT_VEC4S_CHOICES {
                            assert_valid_wgsl(&split::split_source(&config(key, subgroups), vec4s));
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn ignore_index_words() {
    assert_eq!(ignore_words(-100), (0xffff_ff9c, 0xffff_ffff));
    assert_eq!(ignore_words(3), (3, 0));
}

/// The row kernel of `key` in workgroups of 256, with or without subgroups.
fn config(key: RowKernelKey, subgroups: bool) -> RowKernelConfig {
    RowKernelConfig {
        key,
        subgroups,
        min_subgroup_size: 4,
        workgroup_size: 256,
        backward: false,
        f16_words: false,
    }
}

/// Bytes of workgroup memory the module of `source` declares, and whether one
/// of its workgroup variables is the row cache.
fn workgroup_memory(source: &str) -> (u32, bool) {
    let module = wgpu::naga::front::wgsl::parse_str(source).expect("valid WGSL");
    let workgroup = module
        .global_variables
        .iter()
        .map(|(_, variable)| variable)
        .filter(|variable| variable.space == wgpu::naga::AddressSpace::WorkGroup);
    workgroup.fold((0, false), |(bytes, has_cache), variable| {
        let size = module.types[variable.ty].inner.size(module.to_ctx());
        (bytes + size, has_cache || variable.name.as_deref() == Some("row_cache"))
    })
}

#[test]
fn a_streamed_kernel_declares_no_row_cache_and_a_cached_one_declares_its_size() {
    let key = |row_cache, threads_per_row| RowKernelKey {
        threads_per_row,
        access: LogitAccess::MaskedGroups,
        row_cache,
        logit_type: LogitType::Bf16,
        gradient: GradientMode::Separate,
        features: OptionFeatures::default(),
    };
    for subgroups in [true, false] {
        let (streamed_bytes, streamed_has_cache) = workgroup_memory(&config(key(0, 256), subgroups).source());
        assert!(!streamed_has_cache, "a streamed kernel declares the row cache");
        let (cached_bytes, cached_has_cache) = workgroup_memory(&config(key(1024, 256), subgroups).source());
        assert!(cached_has_cache);
        // The cache adds exactly its floats to what the reductions declare.
        assert_eq!(cached_bytes, streamed_bytes + 4096, "subgroups {subgroups}");
    }
    // With subgroups a streamed kernel keeps only the reductions' scratch (one
    // slot per subgroup), not the 32 KiB of the largest row cache.
    let (bytes, _) = workgroup_memory(&config(key(0, 256), true).source());
    assert!(bytes <= 2048, "{bytes} bytes of workgroup memory");
}

#[test]
fn rows_are_cached_only_when_the_workgroup_s_rows_fit() {
    // 4 rows of 500 (2000 floats) fit a cache of 2048, rounded up to a power of two.
    assert_eq!(row_cache_floats(500, 4, 2048), 2048);
    assert_eq!(row_cache_floats(500, 4, 8192), 2048);
    assert_eq!(row_cache_floats(100, 16, 8192), 2048);
    assert_eq!(row_cache_floats(7, 64, 8192), 512);
    assert_eq!(row_cache_floats(8192, 1, 8192), 8192);
    // One float more than the cache holds: streamed.
    assert_eq!(row_cache_floats(8193, 1, 8192), 0);
    assert_eq!(row_cache_floats(513, 4, 2048), 0);
    assert_eq!(row_cache_floats(50_257, 1, 8192), 0);
    // No overflow for absurd shapes.
    assert_eq!(row_cache_floats(usize::MAX, 64, 8192), 0);
    assert_eq!(row_cache_floats(1 << 31, 4, 8192), 0);
}

/// The lane stores of shaders/vector_lanes*.wgsl must write one f32 each (the
/// neighbouring lanes may belong to another workgroup's row): in the SPIR-V
/// that naga writes for Vulkan, every store goes through a pointer to an f32
/// and no vec4 is loaded, so nothing reads and rewrites the whole vector.
#[test]
fn vector_f32_vectors_are_single_f32_stores_in_spirv() {
    use wgpu::naga::back::spv;
    use wgpu::naga::valid::{Capabilities, ValidationFlags, Validator};
    const OP_TYPE_FLOAT: u32 = 22;
    const OP_TYPE_VECTOR: u32 = 23;
    const OP_TYPE_POINTER: u32 = 32;
    const OP_LOAD: u32 = 61;
    const OP_STORE: u32 = 62;
    const OP_ACCESS_CHAIN: u32 = 65;
    // The bindings of shaders/logit_words*.wgsl, without their whole-word functions.
    let separate = "@group(0) @binding(1) var<storage, read> logits: array<vec4<f32>>;\n\
                    @group(0) @binding(3) var<storage, read_write> gradient: array<vec4<f32>>;";
    let in_place = "@group(0) @binding(1) var<storage, read_write> logits: array<vec4<f32>>;";
    for (bindings, lanes) in [
        (separate, source::VECTOR_LANES),
        (in_place, source::VECTOR_LANES_IN_PLACE),
    ] {
        let shader = format!(
            "{bindings}\n{lanes}\n\
             @compute @workgroup_size(64)\n\
             fn main(@builtin(global_invocation_id) id: vec3<u32>) {{\n\
                 store_word_lane(id.x >> 2u, id.x & 3u, load_word_lane(id.x >> 2u, (id.x + 1u) & 3u));\n\
             }}\n"
        );
        let module = wgpu::naga::front::wgsl::parse_str(&shader).expect("valid WGSL");
        let info = Validator::new(ValidationFlags::all(), Capabilities::all())
            .validate(&module)
            .expect("valid module");
        let binary = spv::write_vec(&module, &info, &spv::Options::default(), None).expect("SPIR-V");
        let mut instructions = Vec::new();
        let mut at = 5;
        while at < binary.len() {
            let count = (binary[at] >> 16) as usize;
            instructions.push(&binary[at..at + count.max(1)]);
            at += count.max(1);
        }
        let floats: Vec<u32> = instructions
            .iter()
            .filter(|words| words[0] & 0xffff == OP_TYPE_FLOAT)
            .map(|words| words[1])
            .collect();
        // Float vectors (the invocation id is a vector of u32).
        let vectors: Vec<u32> = instructions
            .iter()
            .filter(|words| words[0] & 0xffff == OP_TYPE_VECTOR && floats.contains(&words[2]))
            .map(|words| words[1])
            .collect();
        assert!(!vectors.is_empty(), "the storage's vec4<f32> type is declared");
        let pointee_of_pointer_type = |pointer_type: u32| {
            instructions
                .iter()
                .find(|words| words[0] & 0xffff == OP_TYPE_POINTER && words[1] == pointer_type)
                .map(|words| words[3])
        };
        let chain_type = |id: u32| {
            instructions
                .iter()
                .find(|words| words[0] & 0xffff == OP_ACCESS_CHAIN && words[2] == id)
                .map(|words| words[1])
        };
        let mut stores = 0;
        for words in &instructions {
            match words[0] & 0xffff {
                OP_STORE => {
                    let pointee = chain_type(words[1]).and_then(pointee_of_pointer_type);
                    let pointee = pointee.expect("a store through an access chain");
                    assert!(!vectors.contains(&pointee), "a whole vector is stored");
                    stores += 1;
                }
                OP_LOAD => assert!(!vectors.contains(&words[1]), "a whole vector is loaded"),
                _ => {}
            }
        }
        assert_eq!(stores, 1);
    }
}

#[test]
fn a_kernel_without_the_gradient_pass_keeps_no_row_cache() {
    assert_eq!(kernel_row_cache(true, 1000, 1, 8192), 1024);
    assert_eq!(kernel_row_cache(true, 9000, 1, 8192), 0);
    assert_eq!(kernel_row_cache(false, 1000, 1, 8192), 0);
}

#[test]
fn the_gradient_word_pass_covers_every_word_of_a_chunk() {
    // 15 halves from an odd element touch 8 words; from an even one, 8 too.
    assert_eq!(WordPass::GradientWords.invocations(3, 5), 8);
    assert_eq!(WordPass::GradientWords.invocations(2, 4), 5);
    assert_eq!(WordPass::Straddling.invocations(3, 5), 3);
    assert_eq!(
        WordPass::of(LogitType::Bf16, LogitAccess::Entries, false),
        Some(WordPass::GradientWords)
    );
    // f16 entries store their 2 bytes alone, unless they are halves of words.
    assert_eq!(WordPass::of(LogitType::F16, LogitAccess::Entries, false), None);
    assert_eq!(
        WordPass::of(LogitType::F16, LogitAccess::Entries, true),
        Some(WordPass::GradientWords)
    );
    assert_eq!(
        WordPass::of(LogitType::F16, LogitAccess::MaskedGroups, false),
        Some(WordPass::Straddling)
    );
    assert_eq!(WordPass::of(LogitType::F16, LogitAccess::Groups, true), None);
}
