//! The form every loop of a kernel must have (test only). The pipelines are
//! compiled without naga's forced loop bound under `ShaderChecks::Trusted`
//! (src/gpu/shader_checks.rs), which is sound only while no loop can run
//! forever; [`loop_faults`] holds a WGSL source to a form that cannot, and
//! [`assert_valid_wgsl`](super::pipeline::assert_valid_wgsl) applies it to every
//! composed kernel source the unit tests build, as the test below does to every
//! file of shaders/:
//!
//! - no `loop`, `while` or `continuing`: every loop is a `for`;
//! - the update moves one counter one way: `i++`, `i += step` with a step made
//!   of positive constants, or `i /= 2u`;
//! - the condition bounds that counter the same way: `i < bound` or
//!   `i + offset < bound` for a rising counter (never `<=`, which a bound of
//!   u32::MAX would never end), `i > 0u` for a halving one;
//! - the body never writes the counter (nor takes its address).
//!
//! No counter can step past its bound by wrapping around: every bound is an
//! element count of one binding or a row length (below 2^31 for the smallest,
//! 16-bit, elements of a binding of at most 4 GiB) and every step is at most a
//! few thousand.

/// Constants (and the `let step = …` of the shaders) a rising step may be made of.
const POSITIVE_NAMES: [&str; 3] = ["WORKGROUP_SIZE", "THREADS_PER_ROW", "LOADS_IN_FLIGHT"];

/// `source` without `//` and `/* */` comments (line breaks kept).
fn without_comments(source: &str) -> String {
    let mut code = String::with_capacity(source.len());
    let mut rest = source;
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix("//") {
            rest = after.find('\n').map_or("", |end| &after[end..]);
        } else if let Some(after) = rest.strip_prefix("/*") {
            rest = after.find("*/").map_or("", |end| &after[end + 2..]);
        } else {
            let next = rest.chars().next().unwrap_or(' ');
            code.push(next);
            rest = &rest[next.len_utf8()..];
        }
    }
    code
}

fn is_identifier_char(character: char) -> bool {
    character.is_ascii_alphanumeric() || character == '_'
}

/// Byte offsets where the identifier `name` stands as a whole word in `code`.
fn word_offsets(code: &str, name: &str) -> Vec<usize> {
    code.match_indices(name)
        .map(|(offset, _)| offset)
        .filter(|&offset| {
            let before = code[..offset].chars().next_back();
            let after = code[offset + name.len()..].chars().next();
            !before.is_some_and(is_identifier_char) && !after.is_some_and(is_identifier_char)
        })
        .collect()
}

/// The text between the bracket at `open` and its match, and the offset after the match.
fn bracketed(code: &str, open: usize) -> Option<(&str, usize)> {
    let (opening, closing) = match code[open..].chars().next()? {
        '(' => ('(', ')'),
        '{' => ('{', '}'),
        _ => return None,
    };
    let mut depth = 0usize;
    for (offset, character) in code[open..].char_indices() {
        if character == opening {
            depth += 1;
        } else if character == closing {
            depth -= 1;
            if depth == 0 {
                return Some((&code[open + 1..open + offset], open + offset + 1));
            }
        }
    }
    None
}

/// Whether `expression` is a product of positive constants, `step` (when every
/// `let step` of the shader is one) and literals above zero.
fn is_positive_step(expression: &str, step_is_positive: bool) -> bool {
    expression.split('*').all(|factor| {
        let factor = factor.trim();
        POSITIVE_NAMES.contains(&factor)
            || (factor == "step" && step_is_positive)
            || factor.trim_end_matches('u').parse::<u32>().is_ok_and(|value| value > 0)
    })
}

/// Whether the body of a loop writes `counter` (or takes its address).
fn writes(body: &str, counter: &str) -> bool {
    word_offsets(body, counter).into_iter().any(|offset| {
        let before = body[..offset].trim_end();
        let after = body[offset + counter.len()..].trim_start();
        before.ends_with('&')
            || after.starts_with("++")
            || after.starts_with("--")
            || ["+=", "-=", "*=", "/=", "%=", "&=", "|=", "^=", "<<=", ">>="]
                .iter()
                .any(|operator| after.starts_with(operator))
            || (after.starts_with('=') && !after.starts_with("=="))
    })
}

/// Why the loop `for (header) { body }` might not end, if it might.
fn loop_fault(header: &str, body: &str, step_is_positive: bool) -> Option<String> {
    let parts: Vec<&str> = header.split(';').map(str::trim).collect();
    let [init, condition, update] = parts[..] else {
        return Some(format!("a header of {} parts", parts.len()));
    };
    let (counter, rising) = if let Some(counter) = update.strip_suffix("++") {
        (counter.trim(), true)
    } else if let Some((counter, step)) = update.split_once("+=") {
        if !is_positive_step(step, step_is_positive) {
            return Some(format!("a step `{}` not made of positive constants", step.trim()));
        }
        (counter.trim(), true)
    } else if let Some((counter, divisor)) = update.split_once("/=") {
        if divisor.trim() != "2u" {
            return Some(format!("a division by `{}`", divisor.trim()));
        }
        (counter.trim(), false)
    } else {
        return Some(format!("an update `{update}` that is not `++`, `+= step` or `/= 2u`"));
    };
    if !counter.chars().all(is_identifier_char) || counter.is_empty() {
        return Some(format!("an update of `{counter}`, not of one variable"));
    }
    if !init.is_empty() && !init.starts_with(&format!("var {counter} ")) {
        return Some(format!("an initializer `{init}` that does not declare `{counter}`"));
    }
    let bounded = if rising {
        let Some((left, _bound)) = condition.split_once('<') else {
            return Some(format!("a condition `{condition}` without `<`"));
        };
        let left = left.trim();
        !condition.contains("<=")
            && !condition.contains("||")
            && (left == counter || left.starts_with(&format!("{counter} + ")))
    } else {
        condition == format!("{counter} > 0u")
    };
    if !bounded {
        return Some(format!("a condition `{condition}` that does not bound `{counter}`"));
    }
    if writes(body, counter) {
        return Some(format!("a body that writes `{counter}`"));
    }
    None
}

/// Every fault of `source`'s loops, as `line: why`.
pub(crate) fn loop_faults(source: &str) -> Vec<String> {
    let code = without_comments(source);
    let line_of = |offset: usize| code[..offset].matches('\n').count() + 1;
    let mut faults = Vec::new();
    for keyword in ["loop", "while", "continuing"] {
        for offset in word_offsets(&code, keyword) {
            faults.push(format!("{}: `{keyword}`", line_of(offset)));
        }
    }
    let lets_of_step: Vec<&str> = code
        .match_indices("let step =")
        .map(|(offset, text)| {
            let rest = &code[offset + text.len()..];
            rest[..rest.find(';').unwrap_or(rest.len())].trim()
        })
        .collect();
    let step_is_positive = lets_of_step.iter().all(|value| is_positive_step(value, false));
    for offset in word_offsets(&code, "for") {
        let open = offset + code[offset..].find('(').unwrap_or(0);
        let fault = match bracketed(&code, open) {
            None => Some("a header without its `)`".to_string()),
            Some((header, after_header)) => {
                let open_body = after_header + code[after_header..].len() - code[after_header..].trim_start().len();
                match bracketed(&code, open_body) {
                    None => Some("a body that is not a `{ … }` block".to_string()),
                    Some((body, _)) => loop_fault(header, body, step_is_positive),
                }
            }
        };
        if let Some(fault) = fault {
            faults.push(format!("{}: {fault}", line_of(offset)));
        }
    }
    faults
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::path::Path;

    use super::{loop_faults, without_comments, word_offsets};

    #[test]
    fn every_shader_loop_ends_by_its_form() {
        let directory = Path::new(env!("CARGO_MANIFEST_DIR")).join("shaders");
        let mut paths: Vec<_> = fs::read_dir(&directory)
            .expect("shaders/")
            .map(|entry| entry.expect("a shaders/ entry").path())
            .filter(|path| path.extension().is_some_and(|extension| extension == "wgsl"))
            .collect();
        paths.sort();
        assert!(paths.len() >= 20, "found only {} shaders", paths.len());
        let mut loops = 0;
        let mut faults = Vec::new();
        for path in &paths {
            let source = fs::read_to_string(path).expect("a shader's text");
            loops += word_offsets(&without_comments(&source), "for").len();
            let name = path
                .file_name()
                .map(|name| name.to_string_lossy().into_owned())
                .unwrap_or_default();
            faults.extend(loop_faults(&source).into_iter().map(|fault| format!("{name}:{fault}")));
        }
        assert!(loops >= 40, "found only {loops} loops");
        assert!(faults.is_empty(), "loops that might not end:\n{}", faults.join("\n"));
    }

    #[test]
    fn the_check_passes_the_forms_that_end_and_names_every_other() {
        let ending = "
            let step = THREADS_PER_ROW;
            // a comment: loop while
            for (var c = lane; c < n; c += LOADS_IN_FLIGHT * step) { total += x[c]; }
            for (; j + 3u * step < whole; j += 4u * step) { f(j); }
            for (var k = 0u; k < 4u; k++) { sum += v[k]; }
            for (var stride = WORKGROUP_SIZE / 2u; stride > 0u; stride /= 2u) { g(stride); }
        ";
        assert_eq!(loop_faults(ending), Vec::<String>::new());
        let faults = [
            ("loop { if done { break; } }", "1: `loop`"),
            ("while (i < n) { i++; }", "1: `while`"),
            (
                "for (var i = 0u; i <= n; i++) { }",
                "1: a condition `i <= n` that does not bound `i`",
            ),
            (
                "for (var i = 0u; i < n; i--) { }",
                "1: an update `i--` that is not `++`, `+= step` or `/= 2u`",
            ),
            (
                "for (var i = 0u; i < n; i += s) { }",
                "1: a step `s` not made of positive constants",
            ),
            (
                "for (var i = 0u; i < n; i += 0u) { }",
                "1: a step `0u` not made of positive constants",
            ),
            ("for (var i = 0u; n > i; i++) { }", "1: a condition `n > i` without `<`"),
            (
                "for (var i = 0u; j < n; i++) { }",
                "1: a condition `j < n` that does not bound `i`",
            ),
            ("for (var i = n; i > 0u; i /= 3u) { }", "1: a division by `3u`"),
            ("for (var i = 0u; i < n; i++) { i = 0u; }", "1: a body that writes `i`"),
            ("for (var i = 0u; i < n; i++) { f(&i); }", "1: a body that writes `i`"),
            (
                "for (var j = 0u; i < n; i++) { }",
                "1: an initializer `var j = 0u` that does not declare `i`",
            ),
            (
                "let step = s;\nfor (var i = 0u; i < n; i += step) { }",
                "2: a step `step` not made of positive constants",
            ),
        ];
        for (source, fault) in faults {
            assert_eq!(loop_faults(source), vec![fault.to_string()], "{source}");
        }
        // Reading a counter, or comparing it, is not writing it.
        assert_eq!(
            loop_faults("for (var i = 0u; i < n; i++) { if i == 3u { out[i] = 1u; } }"),
            Vec::<String>::new()
        );
    }
}
