//! A pre-pass that turns fastjson's legacy output into standard JSON.
//!
//! fastjson writes a `Map<Long, String>` (the route data's `brokerAddrs`) with **unquoted**
//! integer keys, `{0:"10.0.0.1:10911",1:"10.0.0.2:10911"}`, unless asked for standard JSON
//! (protocol notes 4.14). serde_json rejects that, so [`quote_bare_integer_keys`] quotes such keys
//! first; serde then reads the quoted keys into integer-keyed maps as usual.

use std::borrow::Cow;

/// JSON insignificant whitespace.
fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

/// Calls `found(start, end)` for every bare integer object key in `input`, in order.
///
/// A bare key is an optionally negative run of ASCII digits that follows `{` or `,` (outside any
/// string, whitespace skipped) and is itself followed by optional whitespace and `:`. Strings are
/// tracked with their backslash escapes so that text inside string values is never matched.
fn for_each_bare_key(input: &[u8], mut found: impl FnMut(usize, usize)) {
    let len = input.len();
    let mut i = 0;
    let mut in_string = false;
    // True right after `{` or `,` (outside strings), until the next significant byte.
    let mut expect_key = false;
    while i < len {
        let b = input[i];
        if in_string {
            match b {
                // Skip the escaped byte (for `\uXXXX` the hex digits are plain bytes anyway).
                b'\\' => i += 2,
                b'"' => {
                    in_string = false;
                    i += 1;
                }
                _ => i += 1,
            }
            continue;
        }
        match b {
            b'"' => {
                in_string = true;
                expect_key = false;
                i += 1;
            }
            b'{' | b',' => {
                expect_key = true;
                i += 1;
            }
            _ if is_ws(b) => i += 1,
            b'-' | b'0'..=b'9' if expect_key => {
                expect_key = false;
                let start = i;
                let mut j = if b == b'-' { i + 1 } else { i };
                let digits = j;
                while j < len && input[j].is_ascii_digit() {
                    j += 1;
                }
                let end = j;
                if end > digits {
                    let mut k = end;
                    while k < len && is_ws(input[k]) {
                        k += 1;
                    }
                    if k < len && input[k] == b':' {
                        found(start, end);
                    }
                }
                // `end > start` always (at least the sign or one digit was consumed).
                i = end.max(start + 1);
            }
            _ => {
                expect_key = false;
                i += 1;
            }
        }
    }
}

/// Quotes bare (optionally negative) integer object keys, fastjson's legacy `{0:"addr"}` form.
///
/// Returns the input unchanged ([`Cow::Borrowed`], no allocation) when there is nothing to quote,
/// which is the case for all standard JSON. Otherwise the result is exactly
/// `input.len() + 2 * keys` bytes long, allocated once. Text inside strings (values or keys,
/// with `\"` escapes) is never touched, so a value such as `"{1:x,2:y}"` survives as is. The
/// function never panics, whatever the bytes; invalid JSON stays invalid and is left for the
/// JSON parser to report.
pub fn quote_bare_integer_keys(input: &[u8]) -> Cow<'_, [u8]> {
    let mut keys = 0usize;
    for_each_bare_key(input, |_, _| keys += 1);
    if keys == 0 {
        return Cow::Borrowed(input);
    }
    let mut out = Vec::with_capacity(input.len().saturating_add(keys.saturating_mul(2)));
    let mut copied = 0;
    for_each_bare_key(input, |start, end| {
        if let (Some(before), Some(key)) = (input.get(copied..start), input.get(start..end)) {
            out.extend_from_slice(before);
            out.push(b'"');
            out.extend_from_slice(key);
            out.push(b'"');
            copied = end;
        }
    });
    if let Some(rest) = input.get(copied..) {
        out.extend_from_slice(rest);
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(s: &str) -> String {
        String::from_utf8(quote_bare_integer_keys(s.as_bytes()).into_owned()).unwrap()
    }

    #[test]
    fn standard_json_is_borrowed() {
        let input = br#"{"brokerAddrs":{"0":"a","1":"b"},"n":[1,2,-3],"x":{"y":-1}}"#;
        assert!(matches!(
            quote_bare_integer_keys(input),
            Cow::Borrowed(b) if b == input
        ));
        assert!(matches!(quote_bare_integer_keys(b""), Cow::Borrowed(_)));
    }

    #[test]
    fn quotes_bare_keys() {
        assert_eq!(
            q(r#"{"brokerAddrs":{0:"10.0.0.1:10911",1:"10.0.0.2:10911"}}"#),
            r#"{"brokerAddrs":{"0":"10.0.0.1:10911","1":"10.0.0.2:10911"}}"#
        );
        assert_eq!(q("{ -12 : 1 ,\n 7\t:2}"), "{ \"-12\" : 1 ,\n \"7\"\t:2}");
        assert_eq!(q("{123:true}"), r#"{"123":true}"#);
    }

    #[test]
    fn leaves_values_and_strings_alone() {
        // Numbers after `,` in arrays are not keys.
        assert_eq!(q("[1,2,{3:4}]"), r#"[1,2,{"3":4}]"#);
        // Text that looks like a key inside a string value, also with escaped quotes.
        let s = r#"{"v":"{1:\"x\",2:y}","w":"a\\",5:"z"}"#;
        assert_eq!(q(s), r#"{"v":"{1:\"x\",2:y}","w":"a\\","5":"z"}"#);
        // A bare non-integer or a number not followed by `:` is left for the parser.
        assert_eq!(q("{1.5:2}"), "{1.5:2}");
        assert_eq!(q("{-:2}"), "{-:2}");
        assert_eq!(q("{12"), "{12");
        assert_eq!(q("{\"unterminated"), "{\"unterminated");
        assert_eq!(q("\"\\"), "\"\\");
    }
}
