//! The library costs its users only what it computes with: its `[dependencies]`
//! are exactly these; what only the `xent` command needs (clap, npyz, serde_json,
//! plotters, …) belongs to cli/Cargo.toml.

/// The names in the `[dependencies]` table of a Cargo manifest.
fn dependency_names(manifest: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut inside = false;
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            inside = line == "[dependencies]";
            continue;
        }
        if inside && !line.is_empty() && !line.starts_with('#') {
            let name = line.split(['=', '.']).next().unwrap_or_default().trim();
            names.push(name.to_owned());
        }
    }
    names.sort();
    names
}

#[test]
fn the_library_depends_only_on_what_it_computes_with() {
    let manifest = include_str!("../Cargo.toml");
    assert_eq!(
        dependency_names(manifest),
        [
            "bytemuck",
            "futures-intrusive",
            "half",
            "pollster",
            "rayon",
            "thiserror",
            "wgpu"
        ],
        "a new library dependency reaches every user of the crate: is it needed by the library itself?"
    );
    assert!(
        !manifest.contains("[target."),
        "no platform-specific dependency tables either"
    );
}

#[test]
fn the_command_line_keeps_its_own_dependencies() {
    let manifest = include_str!("../cli/Cargo.toml");
    let names = dependency_names(manifest);
    for name in ["clap", "npyz", "serde_json", "plotters", "xent"] {
        assert!(
            names.iter().any(|candidate| candidate == name),
            "cli/Cargo.toml lacks {name}"
        );
    }
}
