//! JSON nesting depth, measured without recursion.
//!
//! Parsers that recurse (serde_json's `Value`, most standard clients) refuse or overflow on
//! deeply nested input, and serde_json's raw values skip its depth check entirely. This scan
//! runs over the bytes once with a counter, so it costs no stack however deep the input is.

/// Deepest nesting accepted in a request body (arrays and objects), as docs/http.md promises.
pub const MAX_BODY_DEPTH: usize = 128;

/// Deepest nesting accepted in an event payload. Lower than [`MAX_BODY_DEPTH`], so every
/// document that embeds a payload (an inbox page `{"events":[{"payload":…}]}`, an event, a
/// webhook body) stays within the 128 levels that standard JSON parsers accept.
pub const MAX_PAYLOAD_DEPTH: usize = 100;

/// Whether `text` nests arrays and objects more than `max` levels deep. Brackets inside
/// strings do not count. The input need not be valid JSON (this runs before parsing); the
/// scan stops at the first level beyond `max`, and an unterminated string ends it (nothing
/// after it counts).
///
/// Every request body and every event payload goes through it, so string contents — most
/// of a typical document's bytes — are skipped with `memchr` (to the next quote or
/// backslash) rather than looked at byte by byte.
pub fn nested_deeper_than(text: &[u8], max: usize) -> bool {
    let mut depth = 0usize;
    let mut i = 0;
    while let Some(&b) = text.get(i) {
        i += 1;
        match b {
            b'"' => match string_end(text, i) {
                Some(after) => i = after,
                None => return false,
            },
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

/// The index just past the quote that closes the string whose contents start at `from`, or
/// `None` if the string never closes.
fn string_end(text: &[u8], mut from: usize) -> Option<usize> {
    loop {
        let rest = text.get(from..)?;
        let at = from + memchr::memchr2(b'"', b'\\', rest)?;
        if text[at] == b'"' {
            return Some(at + 1);
        }
        // A backslash escapes the byte after it (which may be a quote or a backslash).
        from = at + 2;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nested(n: usize) -> String {
        format!("{}{}", "[".repeat(n), "]".repeat(n))
    }

    #[test]
    fn counts_arrays_and_objects_but_not_strings() {
        assert!(!nested_deeper_than(b"1", 0));
        assert!(nested_deeper_than(b"[]", 0));
        assert!(!nested_deeper_than(nested(128).as_bytes(), 128));
        assert!(nested_deeper_than(nested(129).as_bytes(), 128));
        assert!(!nested_deeper_than(br#"{"a":"[[[[{{{{\"[[["}"#, 1));
        assert!(nested_deeper_than(br#"{"a":"\\",  "b":[{}]}"#, 2));
        assert!(!nested_deeper_than(br#"[[1],[2],[3],{"x":[]}]"#, 3));
        assert!(nested_deeper_than(br#"[[1],[2],[3],{"x":[]}]"#, 2));
    }

    #[test]
    fn a_million_levels_cost_no_stack() {
        assert!(nested_deeper_than(nested(1_000_000).as_bytes(), 128));
        assert!(nested_deeper_than("{\"a\":".repeat(1_000_000).as_bytes(), 128));
    }

    /// The byte-by-byte scan this one replaced, as the reference.
    fn reference(text: &[u8], max: usize) -> bool {
        let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
        for &b in text {
            if in_string {
                if escaped {
                    escaped = false;
                } else if b == b'\\' {
                    escaped = true;
                } else if b == b'"' {
                    in_string = false;
                }
                continue;
            }
            match b {
                b'"' => in_string = true,
                b'[' | b'{' => {
                    depth += 1;
                    if depth > max {
                        return true;
                    }
                }
                b']' | b'}' => depth = depth.saturating_sub(1),
                _ => {}
            }
        }
        false
    }

    #[test]
    fn agrees_with_the_byte_by_byte_scan_on_random_input() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(17);
        let alphabet = b"[]{}\"\\a,:";
        for _ in 0..20_000 {
            let len = rng.gen_range(0..40);
            let text: Vec<u8> =
                (0..len).map(|_| alphabet[rng.gen_range(0..alphabet.len())]).collect();
            for max in 0..4 {
                assert_eq!(
                    nested_deeper_than(&text, max),
                    reference(&text, max),
                    "{:?} at most {max}",
                    String::from_utf8_lossy(&text)
                );
            }
        }
    }
}
