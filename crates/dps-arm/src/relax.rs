//! Tolerant JSON pre-processing: the ARM engine accepts comments and trailing commas.

/// Removes trailing commas before `}` or `]` and `//` and `/* */` comments, all outside of
/// strings, as the ARM engine tolerates them. Everything removed is replaced by spaces (newlines
/// inside block comments are kept), so the line and column numbers of the result match the input
/// and JSON errors point at the right place in the original text.
///
/// Strings are copied untouched, escapes included: `"a,}"` and `"http://x"` survive as they are.
pub fn relax_json(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    let mut in_string = false;
    while let Some(c) = chars.next() {
        if in_string {
            out.push(c);
            match c {
                '\\' => {
                    if let Some(escaped) = chars.next() {
                        out.push(escaped);
                    }
                }
                '"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => {
                in_string = true;
                out.push(c);
            }
            '/' if chars.peek() == Some(&'/') => {
                blank(&mut out, c);
                while let Some(&next) = chars.peek() {
                    if next == '\n' {
                        break;
                    }
                    blank(&mut out, next);
                    chars.next();
                }
            }
            '/' if chars.peek() == Some(&'*') => {
                blank(&mut out, c);
                if let Some(star) = chars.next() {
                    blank(&mut out, star);
                }
                let mut previous = '\0';
                for next in chars.by_ref() {
                    blank(&mut out, next);
                    if previous == '*' && next == '/' {
                        break;
                    }
                    previous = next;
                }
            }
            '}' | ']' => {
                drop_trailing_comma(&mut out);
                out.push(c);
            }
            _ => out.push(c),
        }
    }
    out
}

/// Writes the stand-in for a removed character: a newline stays a newline, anything else becomes
/// as many spaces as it had bytes.
fn blank(out: &mut String, c: char) {
    if c == '\n' || c == '\r' {
        out.push(c);
    } else {
        out.extend(std::iter::repeat_n(' ', c.len_utf8()));
    }
}

/// Outside of strings the last non-blank character written is structural, so a `,` there, right
/// before a closing `}` or `]`, is a trailing comma.
fn drop_trailing_comma(out: &mut String) {
    let trimmed = out.trim_end();
    if trimmed.ends_with(',') {
        let at = trimmed.len() - 1;
        out.replace_range(at..=at, " ");
    }
}

#[cfg(test)]
mod tests {
    use super::relax_json;

    #[test]
    fn trailing_commas_go() {
        assert_eq!(relax_json(r#"{"a": [1, 2,], "b": {"c": 1,},}"#), r#"{"a": [1, 2 ], "b": {"c": 1 } }"#);
    }

    #[test]
    fn comments_go_and_lines_stay() {
        let relaxed = relax_json("{\n  // note\n  \"a\": /* x\ny */ 1\n}");
        assert_eq!(relaxed, "{\n         \n  \"a\":     \n     1\n}");
        assert_eq!(relaxed.lines().count(), 5);
    }

    #[test]
    fn strings_are_untouched() {
        let text = r#"{"a": "a,}", "b": "http://x", "c": "/* no */", "d": "q\",]"}"#;
        assert_eq!(relax_json(text), text);
    }

    #[test]
    fn trailing_comma_before_comment() {
        assert_eq!(relax_json("[1, // one\n]"), "[1        \n]");
    }
}
