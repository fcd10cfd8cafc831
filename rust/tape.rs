//! A flat token tape of one JSON document, built without Python so the GIL can be released
//! while scanning; `decode.rs` later turns a tape into Python objects in one quick pass.
//!
//! Containers carry their element count, so the builder can size lists and dicts up front and
//! needs no end tokens. Strings without escapes point into the source text; escaped strings are
//! unescaped into the tape's arena.
use crate::json_scan::{JsonError, Scanner, Sink};

/// How a string's bytes must be turned into a Python `str`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StrKind {
    /// Only bytes below 0x80.
    Ascii,
    /// Well-formed UTF-8.
    Utf8,
    /// UTF-8 plus lone surrogates (from `\ud800`-style escapes) encoded the way
    /// Python's "surrogatepass" error handler expects.
    Wtf8,
}

/// Where a string's bytes live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StrRef {
    pub start: u32,
    pub len: u32,
    pub in_arena: bool,
    pub kind: StrKind,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Tok {
    Null,
    Bool(bool),
    Int(i64),
    /// An integer too large for `i64`; the span holds its source text (sign and digits).
    BigInt {
        start: u32,
        len: u32,
    },
    Float(f64),
    Str(StrRef),
    Array(u32),
    Object(u32),
}

/// A scanned document.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Tape {
    pub toks: Vec<Tok>,
    pub arena: Vec<u8>,
    /// Nesting depth of the document.
    pub depth: usize,
}

impl Tape {
    /// The bytes of a string token, given the text the tape was built from.
    #[inline]
    pub fn str_bytes<'t>(&'t self, src: &'t [u8], s: StrRef) -> &'t [u8] {
        let range = s.start as usize..(s.start + s.len) as usize;
        if s.in_arena {
            &self.arena[range]
        } else {
            &src[range]
        }
    }
}

/// Builds a tape while the scanner validates.
pub struct TapeSink {
    tape: Tape,
}

fn parse_int(text: &[u8]) -> Option<i64> {
    let (negative, digits) = match text.first() {
        Some(b'-') => (true, &text[1..]),
        _ => (false, text),
    };
    // 18 decimal digits always fit; longer ones go through checked arithmetic.
    if digits.len() <= 18 {
        let mut v: i64 = 0;
        for &d in digits {
            v = v * 10 + (d - b'0') as i64;
        }
        return Some(if negative { -v } else { v });
    }
    let mut v: i64 = 0;
    for &d in digits {
        let digit = (d - b'0') as i64;
        v = v.checked_mul(10)?;
        v = if negative {
            v.checked_sub(digit)?
        } else {
            v.checked_add(digit)?
        };
    }
    Some(v)
}

fn hex4(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0u32, |acc, &b| {
        let digit = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            _ => b - b'A' + 10,
        };
        (acc << 4) | digit as u32
    })
}

/// Appends the UTF-8 (or, for a surrogate, WTF-8) encoding of a code point.
fn push_code_point(out: &mut Vec<u8>, cp: u32) {
    match cp {
        0..=0x7f => out.push(cp as u8),
        0x80..=0x7ff => {
            out.push(0xc0 | (cp >> 6) as u8);
            out.push(0x80 | (cp & 0x3f) as u8);
        }
        0x800..=0xffff => {
            out.push(0xe0 | (cp >> 12) as u8);
            out.push(0x80 | ((cp >> 6) & 0x3f) as u8);
            out.push(0x80 | (cp & 0x3f) as u8);
        }
        _ => {
            out.push(0xf0 | (cp >> 18) as u8);
            out.push(0x80 | ((cp >> 12) & 0x3f) as u8);
            out.push(0x80 | ((cp >> 6) & 0x3f) as u8);
            out.push(0x80 | (cp & 0x3f) as u8);
        }
    }
}

/// Unescapes an already validated string body into `out`. Returns whether it produced a lone
/// surrogate. A high surrogate escape joins a directly following low surrogate escape; any
/// other surrogate escape stands alone, as in Python's `json` module.
pub fn unescape(body: &[u8], out: &mut Vec<u8>) -> bool {
    let mut lone = false;
    let mut i = 0;
    while i < body.len() {
        let run_end = body[i..]
            .iter()
            .position(|&b| b == b'\\')
            .map_or(body.len(), |p| i + p);
        out.extend_from_slice(&body[i..run_end]);
        i = run_end;
        if i >= body.len() {
            break;
        }
        let esc = body[i + 1];
        i += 2;
        let simple = match esc {
            b'"' => b'"',
            b'\\' => b'\\',
            b'/' => b'/',
            b'b' => 0x08,
            b'f' => 0x0c,
            b'n' => b'\n',
            b'r' => b'\r',
            b't' => b'\t',
            _ => 0,
        };
        if esc != b'u' {
            out.push(simple);
            continue;
        }
        let mut cp = hex4(&body[i..i + 4]);
        i += 4;
        if (0xd800..0xdc00).contains(&cp)
            && body.get(i) == Some(&b'\\')
            && body.get(i + 1) == Some(&b'u')
        {
            let low = hex4(&body[i + 2..i + 6]);
            if (0xdc00..0xe000).contains(&low) {
                cp = 0x10000 + ((cp - 0xd800) << 10) + (low - 0xdc00);
                i += 6;
            }
        }
        if (0xd800..0xe000).contains(&cp) {
            lone = true;
        }
        push_code_point(out, cp);
    }
    lone
}

impl TapeSink {
    pub fn new() -> Self {
        TapeSink {
            tape: Tape::default(),
        }
    }
}

impl Default for TapeSink {
    fn default() -> Self {
        Self::new()
    }
}

impl Sink for TapeSink {
    #[inline]
    fn null(&mut self) {
        self.tape.toks.push(Tok::Null);
    }

    #[inline]
    fn boolean(&mut self, value: bool) {
        self.tape.toks.push(Tok::Bool(value));
    }

    #[inline]
    fn number(&mut self, text: &[u8], start: usize, is_float: bool) {
        let tok = if is_float {
            // The scanner checked the JSON number grammar, which Rust's parser accepts; it
            // rounds correctly and overflows to infinity exactly like Python's float().
            let s = std::str::from_utf8(text).unwrap_or("0");
            Tok::Float(s.parse::<f64>().unwrap_or(f64::NAN))
        } else {
            match parse_int(text) {
                Some(v) => Tok::Int(v),
                None => Tok::BigInt {
                    start: start as u32,
                    len: text.len() as u32,
                },
            }
        };
        self.tape.toks.push(tok);
    }

    #[inline]
    fn string(&mut self, src: &[u8], start: usize, end: usize, escaped: bool, ascii: bool) {
        let s = if !escaped {
            StrRef {
                start: start as u32,
                len: (end - start) as u32,
                in_arena: false,
                kind: if ascii { StrKind::Ascii } else { StrKind::Utf8 },
            }
        } else {
            let arena = &mut self.tape.arena;
            let at = arena.len();
            let lone = unescape(&src[start..end], arena);
            let kind = if lone {
                StrKind::Wtf8
            } else if arena[at..].is_ascii() {
                StrKind::Ascii
            } else {
                StrKind::Utf8
            };
            StrRef {
                start: at as u32,
                len: (arena.len() - at) as u32,
                in_arena: true,
                kind,
            }
        };
        self.tape.toks.push(Tok::Str(s));
    }

    #[inline]
    fn begin_array(&mut self) -> usize {
        self.tape.toks.push(Tok::Array(0));
        self.tape.toks.len() - 1
    }

    #[inline]
    fn end_array(&mut self, mark: usize, count: u32) {
        self.tape.toks[mark] = Tok::Array(count);
    }

    #[inline]
    fn begin_object(&mut self) -> usize {
        self.tape.toks.push(Tok::Object(0));
        self.tape.toks.len() - 1
    }

    #[inline]
    fn end_object(&mut self, mark: usize, count: u32) {
        self.tape.toks[mark] = Tok::Object(count);
    }
}

/// Validates `text` and builds its tape.
pub fn build(text: &str) -> Result<Tape, JsonError> {
    let mut scanner = Scanner::new(text, TapeSink::new());
    // A rough size hint saves most reallocations for typical documents.
    scanner.sink.tape.toks.reserve(text.len() / 8 + 1);
    scanner.document()?;
    let depth = scanner.max_depth();
    let mut tape = scanner.sink.tape;
    tape.depth = depth;
    Ok(tape)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(text: &str) -> Vec<(Vec<u8>, StrKind)> {
        let tape = build(text).unwrap();
        tape.toks
            .iter()
            .filter_map(|t| match t {
                Tok::Str(s) => Some((tape.str_bytes(text.as_bytes(), *s).to_vec(), s.kind)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn tokens_in_document_order() {
        let tape = build(r#"{"a": [1, -2.5, true, null, 123456789012345678901]}"#).unwrap();
        assert_eq!(tape.toks.len(), 8);
        assert_eq!(tape.toks[0], Tok::Object(1));
        assert_eq!(tape.toks[2], Tok::Array(5));
        assert_eq!(tape.toks[3], Tok::Int(1));
        assert_eq!(tape.toks[4], Tok::Float(-2.5));
        assert_eq!(tape.toks[5], Tok::Bool(true));
        assert_eq!(tape.toks[6], Tok::Null);
        assert!(matches!(tape.toks[7], Tok::BigInt { len: 21, .. }));
        assert_eq!(tape.depth, 2);
    }

    #[test]
    fn integer_edges() {
        assert_eq!(parse_int(b"-0"), Some(0));
        assert_eq!(parse_int(b"9223372036854775807"), Some(i64::MAX));
        assert_eq!(parse_int(b"-9223372036854775808"), Some(i64::MIN));
        assert_eq!(parse_int(b"9223372036854775808"), None);
        assert_eq!(parse_int(b"-9223372036854775809"), None);
    }

    #[test]
    fn floats_overflow_to_infinity_like_python() {
        let tape = build("[1e400, -1e400, 1e-400, 0.1]").unwrap();
        assert_eq!(tape.toks[1], Tok::Float(f64::INFINITY));
        assert_eq!(tape.toks[2], Tok::Float(f64::NEG_INFINITY));
        assert_eq!(tape.toks[3], Tok::Float(0.0));
        assert_eq!(tape.toks[4], Tok::Float(0.1));
    }

    #[test]
    fn unescapes_and_classifies_strings() {
        let got = strings(
            r#"["plain", "caf\u00e9", "\ud83d\ude00", "a\/\"\\\b\f\n\r\t", "x\ud800y", "\udc00", "\ud800\ud800\udc00", "é"]"#,
        );
        assert_eq!(got[0], (b"plain".to_vec(), StrKind::Ascii));
        assert_eq!(got[1], ("café".as_bytes().to_vec(), StrKind::Utf8));
        assert_eq!(got[2], ("😀".as_bytes().to_vec(), StrKind::Utf8));
        assert_eq!(got[3], (b"a/\"\\\x08\x0c\n\r\t".to_vec(), StrKind::Ascii));
        assert_eq!(got[4], (b"x\xed\xa0\x80y".to_vec(), StrKind::Wtf8));
        assert_eq!(got[5], (b"\xed\xb0\x80".to_vec(), StrKind::Wtf8));
        let mut want = b"\xed\xa0\x80".to_vec();
        want.extend_from_slice("\u{10000}".as_bytes());
        assert_eq!(got[6], (want, StrKind::Wtf8));
        assert_eq!(got[7], ("é".as_bytes().to_vec(), StrKind::Utf8));
    }
}
