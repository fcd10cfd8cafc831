//! Writing JSON text byte-for-byte the way Python's `json.dumps(..., ensure_ascii=False,
//! separators=(",", ":"))` does, so the Rust encoder and the pure-Python twin agree exactly.

/// Escape for each byte: 0 = copy as is, `u` = `\u00XX`, anything else = backslash + that byte.
static ESCAPES: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut b = 0;
    while b < 0x20 {
        table[b] = b'u';
        b += 1;
    }
    table[0x08] = b'b';
    table[0x09] = b't';
    table[0x0a] = b'n';
    table[0x0c] = b'f';
    table[0x0d] = b'r';
    table[b'"' as usize] = b'"';
    table[b'\\' as usize] = b'\\';
    table
};

const HEX: &[u8; 16] = b"0123456789abcdef";

/// The string to write holds U+0000, which PostgreSQL jsonb cannot store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HasNul;

/// Appends `text` as a quoted JSON string. Non-ASCII stays UTF-8; only `"`, `\` and control
/// characters are escaped (lowercase hex, like Python). Refuses U+0000.
pub fn write_str(out: &mut Vec<u8>, text: &[u8]) -> Result<(), HasNul> {
    write_escaped(out, text, true)
}

/// Like [`write_str`] but escapes U+0000 as `\u0000` instead of refusing it; used for dict keys
/// the core builds itself (dependency slugs), which are decoded, not stored.
pub fn write_str_any(out: &mut Vec<u8>, text: &[u8]) {
    let _ = write_escaped(out, text, false);
}

fn write_escaped(out: &mut Vec<u8>, text: &[u8], reject_nul: bool) -> Result<(), HasNul> {
    out.reserve(text.len() + 2);
    out.push(b'"');
    let mut run_start = 0;
    for (i, &b) in text.iter().enumerate() {
        let esc = ESCAPES[b as usize];
        if esc == 0 {
            continue;
        }
        if b == 0 && reject_nul {
            return Err(HasNul);
        }
        out.extend_from_slice(&text[run_start..i]);
        out.push(b'\\');
        out.push(esc);
        if esc == b'u' {
            out.extend_from_slice(b"00");
            out.push(HEX[(b >> 4) as usize]);
            out.push(HEX[(b & 0xf) as usize]);
        }
        run_start = i + 1;
    }
    out.extend_from_slice(&text[run_start..]);
    out.push(b'"');
    Ok(())
}

/// Appends `text` as a quoted JSON string using only ASCII, like `json.dumps(text)` with its
/// default `ensure_ascii=True`; used to print dict keys inside error paths.
pub fn write_ascii_str(out: &mut String, text: &str) {
    out.push('"');
    for ch in text.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            ' '..='~' => out.push(ch),
            _ => {
                let mut units = [0u16; 2];
                for unit in ch.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
        }
    }
    out.push('"');
}

/// One step of a path into a value, for error messages such as `$.items[3].when`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathSeg {
    Key(String),
    Index(usize),
}

fn is_identifier(key: &str) -> bool {
    let mut chars = key.chars();
    matches!(chars.next(), Some('a'..='z' | 'A'..='Z' | '_'))
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Formats a path given from the innermost step outwards (the order errors collect it in).
pub fn format_path(reversed: &[PathSeg]) -> String {
    let mut out = String::from("$");
    for seg in reversed.iter().rev() {
        match seg {
            PathSeg::Index(i) => out.push_str(&format!("[{i}]")),
            PathSeg::Key(k) if is_identifier(k) => {
                out.push('.');
                out.push_str(k);
            }
            PathSeg::Key(k) => {
                out.push('[');
                write_ascii_str(&mut out, k);
                out.push(']');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn esc(text: &str) -> String {
        let mut out = Vec::new();
        write_str(&mut out, text.as_bytes()).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn escapes_like_python_json() {
        assert_eq!(esc("plain"), "\"plain\"");
        assert_eq!(esc("q\"b\\s/"), r#""q\"b\\s/""#);
        assert_eq!(
            esc("\n\r\t\u{8}\u{c}\u{1}\u{1f}\u{7f}"),
            "\"\\n\\r\\t\\b\\f\\u0001\\u001f\u{7f}\""
        );
        assert_eq!(esc("café 😀"), "\"café 😀\"");
        assert!(write_str(&mut Vec::new(), b"a\0b").is_err());
    }

    #[test]
    fn paths_read_like_python_accessors() {
        let path = vec![
            PathSeg::Key("when".into()),
            PathSeg::Index(3),
            PathSeg::Key("items".into()),
        ];
        assert_eq!(format_path(&path), "$.items[3].when");
        let odd = vec![PathSeg::Key("a b\"é😀".into())];
        assert_eq!(format_path(&odd), r#"$["a b\"\u00e9\ud83d\ude00"]"#);
        assert_eq!(format_path(&[]), "$");
        assert_eq!(format_path(&[PathSeg::Key("1x".into())]), r#"$["1x"]"#);
    }
}
