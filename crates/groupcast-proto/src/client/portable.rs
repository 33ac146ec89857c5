//! A check on JSON data before it is fanned out: [`json_is_portable`].
//!
//! Data enters as text that serde_json accepted; this adds the rules of
//! the strict decoders that subscribers use (Go's, Rust's), so no client
//! gets a push it cannot decode.

/// Whether a (syntactically valid) JSON text is one that strict decoders
/// accept too: every number fits a finite double, and every `\\u` escape
/// forms valid UTF-16 (no lone surrogates). The JSON grammar allows `1e999`
/// and `"\\udbbb"`, but Go's and Rust's decoders refuse a document that
/// contains them, so such data would break every subscriber that decodes the
/// push. Both were found by fuzzing the relay path. Iterative, O(n), no
/// nesting limit.
pub fn json_is_portable(json: &str) -> bool {
    let bytes = json.as_bytes();
    let hex4 = |at: usize| -> Option<u16> {
        let h = json.get(at..at + 4)?;
        u16::from_str_radix(h, 16).ok()
    };
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' {
                    if bytes[i] != b'\\' {
                        i += 1;
                        continue;
                    }
                    if bytes.get(i + 1) != Some(&b'u') {
                        i += 2;
                        continue;
                    }
                    let Some(unit) = hex4(i + 2) else {
                        return false;
                    };
                    i += 6;
                    match unit {
                        0xD800..=0xDBFF => {
                            // A high surrogate must be followed by a low one.
                            let low = (bytes.get(i) == Some(&b'\\')
                                && bytes.get(i + 1) == Some(&b'u'))
                            .then(|| hex4(i + 2))
                            .flatten();
                            match low {
                                Some(0xDC00..=0xDFFF) => i += 6,
                                _ => return false,
                            }
                        }
                        0xDC00..=0xDFFF => return false,
                        _ => {}
                    }
                }
                i += 1;
            }
            b'-' | b'0'..=b'9' => {
                let start = i;
                while i < bytes.len()
                    && matches!(bytes[i], b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9')
                {
                    i += 1;
                }
                match json[start..i].parse::<f64>() {
                    Ok(n) if n.is_finite() => {}
                    _ => return false,
                }
            }
            _ => i += 1,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn surrogates() {
        assert!(json_is_portable(r#""\ud83d\ude00 ok""#), "a valid pair");
        assert!(json_is_portable(r#""\u00e9\n\"\\""#));
        assert!(
            !json_is_portable(r#""5\udbbb""#),
            "found by the relay_payload fuzzer"
        );
        assert!(!json_is_portable(r#""\ude00""#), "lone low surrogate");
        assert!(
            !json_is_portable(r#""\ud83d\u0041""#),
            "high surrogate then a non-surrogate"
        );
        // Each case is also what serde_json itself decides.
        for ok in [r#""\ud83d\ude00""#, r#""x""#] {
            assert!(serde_json::from_str::<serde_json::Value>(ok).is_ok());
        }
        for bad in [r#""5\udbbb""#, r#""\ude00""#] {
            assert!(serde_json::from_str::<serde_json::Value>(bad).is_err());
        }
    }

    #[test]
    fn finite_numbers() {
        assert!(json_is_portable(
            r#"{"a":[1,-2.5e10,0.1],"s":"1e999 \" 9e9999"}"#
        ));
        assert!(json_is_portable("1.7976931348623157e308"));
        assert!(!json_is_portable("6E6666"));
        assert!(!json_is_portable(r#"{"a":[1,{"b":-1e400}]}"#));
        assert!(json_is_portable(r#""just a string with 1e999 inside""#));
        assert!(json_is_portable(&format!(
            "{}1{}",
            "[".repeat(50_000),
            "]".repeat(50_000)
        )));
    }
}
