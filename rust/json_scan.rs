//! A strict RFC 8259 JSON scanner over UTF-8 text.
//!
//! One recursive-descent grammar serves two jobs through the [`Sink`] trait: validation alone
//! ([`NoopSink`], used to check blobs and index map arrays without building anything) and
//! tape building (`tape::TapeSink`, used before Python objects are made). Inputs are `&str`, so
//! UTF-8 validity is already established; the scanner only has to check the JSON grammar.
use std::fmt;

/// Deepest nesting of arrays and objects accepted, counted from the document root: `[]` is 1.
pub const MAX_DEPTH: usize = 512;

/// Largest text accepted: tape tokens store offsets as `u32`.
pub const MAX_TEXT_LEN: usize = u32::MAX as usize;

/// Why a text is not valid JSON, and the byte offset where the scanner noticed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JsonError {
    pub kind: JsonErrorKind,
    pub offset: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JsonErrorKind {
    Empty,
    UnexpectedEnd,
    UnexpectedByte(u8),
    TrailingData,
    ExpectedKey,
    ExpectedColon,
    ExpectedCommaOrEnd,
    BadLiteral,
    BadNumber,
    BadEscape,
    ControlCharInString,
    UnterminatedString,
    TooDeep,
    TooLarge,
    InvalidUtf8,
}

impl fmt::Display for JsonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let at = self.offset;
        match self.kind {
            JsonErrorKind::Empty => write!(f, "the text is empty or only whitespace"),
            JsonErrorKind::UnexpectedEnd => write!(f, "the text ends early at byte {at}"),
            JsonErrorKind::UnexpectedByte(b) if b.is_ascii_graphic() => {
                write!(f, "unexpected character {:?} at byte {at}", b as char)
            }
            JsonErrorKind::UnexpectedByte(b) => write!(f, "unexpected byte 0x{b:02x} at byte {at}"),
            JsonErrorKind::TrailingData => write!(f, "extra data after the value at byte {at}"),
            JsonErrorKind::ExpectedKey => write!(f, "expected a string key at byte {at}"),
            JsonErrorKind::ExpectedColon => write!(f, "expected ':' after the key at byte {at}"),
            JsonErrorKind::ExpectedCommaOrEnd => {
                write!(f, "expected ',' or a closing bracket at byte {at}")
            }
            JsonErrorKind::BadLiteral => write!(
                f,
                "invalid literal at byte {at} (only true, false and null; NaN and Infinity \
                 are not JSON)"
            ),
            JsonErrorKind::BadNumber => write!(f, "malformed number at byte {at}"),
            JsonErrorKind::BadEscape => write!(f, "invalid escape sequence at byte {at}"),
            JsonErrorKind::ControlCharInString => {
                write!(f, "unescaped control character in a string at byte {at}")
            }
            JsonErrorKind::UnterminatedString => {
                write!(f, "unterminated string starting at byte {at}")
            }
            JsonErrorKind::TooDeep => {
                write!(f, "nesting deeper than {MAX_DEPTH} levels at byte {at}")
            }
            JsonErrorKind::TooLarge => write!(f, "the text is larger than 4 GiB"),
            JsonErrorKind::InvalidUtf8 => write!(f, "invalid UTF-8 at byte {at}"),
        }
    }
}

impl std::error::Error for JsonError {}

/// Receives the values the scanner recognises, in document order.
///
/// Offsets are byte offsets into the scanned text. Object keys arrive through `string` right
/// before their value.
pub trait Sink {
    fn null(&mut self);
    fn boolean(&mut self, value: bool);
    /// `text` is the number's exact source text, already checked against the JSON grammar.
    fn number(&mut self, text: &[u8], start: usize, is_float: bool);
    /// `start..end` is the string's content without the quotes. `escaped` says whether it holds
    /// backslash escapes, `ascii` whether every byte is below 0x80.
    fn string(&mut self, src: &[u8], start: usize, end: usize, escaped: bool, ascii: bool);
    /// Returns a mark handed back to the matching `end_array`.
    fn begin_array(&mut self) -> usize;
    fn end_array(&mut self, mark: usize, count: u32);
    fn begin_object(&mut self) -> usize;
    fn end_object(&mut self, mark: usize, count: u32);
}

/// A sink that keeps nothing: scanning with it only validates.
pub struct NoopSink;

impl Sink for NoopSink {
    #[inline(always)]
    fn null(&mut self) {}
    #[inline(always)]
    fn boolean(&mut self, _value: bool) {}
    #[inline(always)]
    fn number(&mut self, _text: &[u8], _start: usize, _is_float: bool) {}
    #[inline(always)]
    fn string(&mut self, _src: &[u8], _start: usize, _end: usize, _escaped: bool, _ascii: bool) {}
    #[inline(always)]
    fn begin_array(&mut self) -> usize {
        0
    }
    #[inline(always)]
    fn end_array(&mut self, _mark: usize, _count: u32) {}
    #[inline(always)]
    fn begin_object(&mut self) -> usize {
        0
    }
    #[inline(always)]
    fn end_object(&mut self, _mark: usize, _count: u32) {}
}

/// The scanner state. `depth` starts at the caller's base depth so that a fragment can be
/// checked as if it were nested inside something else.
pub struct Scanner<'a, S: Sink> {
    src: &'a [u8],
    pos: usize,
    depth: usize,
    max_depth: usize,
    pub sink: S,
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// Nonzero when some byte of `word` is zero. The lowest flagged byte is always a true match,
/// which is all the string scanner relies on.
#[inline(always)]
fn has_zero_byte(word: u64) -> u64 {
    word.wrapping_sub(ONES) & !word & HIGHS
}

/// Nonzero when some byte of `word` is below `n` (n <= 128); same lowest-byte guarantee.
#[inline(always)]
fn has_byte_below(word: u64, n: u8) -> u64 {
    word.wrapping_sub(ONES * n as u64) & !word & HIGHS
}

#[inline(always)]
fn is_hex(b: u8) -> bool {
    b.is_ascii_hexdigit()
}

impl<'a, S: Sink> Scanner<'a, S> {
    pub fn new(text: &'a str, sink: S) -> Self {
        Scanner {
            src: text.as_bytes(),
            pos: 0,
            depth: 0,
            max_depth: 0,
            sink,
        }
    }

    /// Deepest nesting reached so far, counted from depth 0 at the document root.
    pub fn max_depth(&self) -> usize {
        self.max_depth
    }

    fn err(&self, kind: JsonErrorKind, offset: usize) -> JsonError {
        JsonError { kind, offset }
    }

    /// Scans the whole text as one JSON document (surrounding whitespace allowed).
    pub fn document(&mut self) -> Result<(), JsonError> {
        if self.src.len() > MAX_TEXT_LEN {
            return Err(self.err(JsonErrorKind::TooLarge, 0));
        }
        self.skip_ws();
        if self.pos >= self.src.len() {
            return Err(self.err(JsonErrorKind::Empty, self.pos));
        }
        self.value()?;
        self.skip_ws();
        if self.pos != self.src.len() {
            return Err(self.err(JsonErrorKind::TrailingData, self.pos));
        }
        Ok(())
    }

    #[inline(always)]
    fn skip_ws(&mut self) {
        while let Some(&b) = self.src.get(self.pos) {
            if b == b' ' || b == b'\n' || b == b'\r' || b == b'\t' {
                self.pos += 1;
            } else {
                break;
            }
        }
    }

    #[inline(always)]
    fn peek(&self) -> Option<u8> {
        self.src.get(self.pos).copied()
    }

    fn value(&mut self) -> Result<(), JsonError> {
        match self.peek() {
            None => Err(self.err(JsonErrorKind::UnexpectedEnd, self.pos)),
            Some(b'"') => {
                let (start, end, escaped, ascii) = self.string()?;
                self.sink.string(self.src, start, end, escaped, ascii);
                Ok(())
            }
            Some(b'{') => self.object(),
            Some(b'[') => self.array(),
            Some(b't') => {
                self.literal(b"true")?;
                self.sink.boolean(true);
                Ok(())
            }
            Some(b'f') => {
                self.literal(b"false")?;
                self.sink.boolean(false);
                Ok(())
            }
            Some(b'n') => {
                self.literal(b"null")?;
                self.sink.null();
                Ok(())
            }
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(b'N' | b'I') => Err(self.err(JsonErrorKind::BadLiteral, self.pos)),
            Some(b) => Err(self.err(JsonErrorKind::UnexpectedByte(b), self.pos)),
        }
    }

    fn literal(&mut self, word: &[u8]) -> Result<(), JsonError> {
        if self.src[self.pos..].starts_with(word) {
            self.pos += word.len();
            Ok(())
        } else {
            Err(self.err(JsonErrorKind::BadLiteral, self.pos))
        }
    }

    fn enter(&mut self) -> Result<(), JsonError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(self.err(JsonErrorKind::TooDeep, self.pos));
        }
        if self.depth > self.max_depth {
            self.max_depth = self.depth;
        }
        Ok(())
    }

    fn array(&mut self) -> Result<(), JsonError> {
        self.enter()?;
        self.pos += 1;
        let mark = self.sink.begin_array();
        self.skip_ws();
        let mut count: u32 = 0;
        if self.peek() == Some(b']') {
            self.pos += 1;
        } else {
            loop {
                self.value()?;
                count += 1;
                self.skip_ws();
                match self.peek() {
                    Some(b',') => {
                        self.pos += 1;
                        self.skip_ws();
                    }
                    Some(b']') => {
                        self.pos += 1;
                        break;
                    }
                    None => return Err(self.err(JsonErrorKind::UnexpectedEnd, self.pos)),
                    Some(_) => return Err(self.err(JsonErrorKind::ExpectedCommaOrEnd, self.pos)),
                }
            }
        }
        self.sink.end_array(mark, count);
        self.depth -= 1;
        Ok(())
    }

    fn object(&mut self) -> Result<(), JsonError> {
        self.enter()?;
        self.pos += 1;
        let mark = self.sink.begin_object();
        self.skip_ws();
        let mut count: u32 = 0;
        if self.peek() == Some(b'}') {
            self.pos += 1;
        } else {
            loop {
                match self.peek() {
                    Some(b'"') => {}
                    None => return Err(self.err(JsonErrorKind::UnexpectedEnd, self.pos)),
                    Some(_) => return Err(self.err(JsonErrorKind::ExpectedKey, self.pos)),
                }
                let (start, end, escaped, ascii) = self.string()?;
                self.sink.string(self.src, start, end, escaped, ascii);
                self.skip_ws();
                match self.peek() {
                    Some(b':') => self.pos += 1,
                    None => return Err(self.err(JsonErrorKind::UnexpectedEnd, self.pos)),
                    Some(_) => return Err(self.err(JsonErrorKind::ExpectedColon, self.pos)),
                }
                self.skip_ws();
                self.value()?;
                count += 1;
                self.skip_ws();
                match self.peek() {
                    Some(b',') => {
                        self.pos += 1;
                        self.skip_ws();
                    }
                    Some(b'}') => {
                        self.pos += 1;
                        break;
                    }
                    None => return Err(self.err(JsonErrorKind::UnexpectedEnd, self.pos)),
                    Some(_) => return Err(self.err(JsonErrorKind::ExpectedCommaOrEnd, self.pos)),
                }
            }
        }
        self.sink.end_object(mark, count);
        self.depth -= 1;
        Ok(())
    }

    /// Scans a string starting at the opening quote. Returns the content span (without quotes)
    /// and whether it holds escapes / only ASCII bytes.
    fn string(&mut self) -> Result<(usize, usize, bool, bool), JsonError> {
        let open = self.pos;
        let src = self.src;
        let start = open + 1;
        let mut i = start;
        let mut escaped = false;
        let mut high: u64 = 0;
        loop {
            // Eight bytes at a time until a quote, a backslash or a control byte shows up.
            while i + 8 <= src.len() {
                let word = u64::from_le_bytes(src[i..i + 8].try_into().unwrap());
                let special = has_zero_byte(word ^ (ONES * b'"' as u64))
                    | has_zero_byte(word ^ (ONES * b'\\' as u64))
                    | has_byte_below(word, 0x20);
                if special != 0 {
                    let skip = (special.trailing_zeros() / 8) as usize;
                    for &b in &src[i..i + skip] {
                        high |= b as u64;
                    }
                    i += skip;
                    break;
                }
                high |= word;
                i += 8;
            }
            let Some(&b) = src.get(i) else {
                return Err(self.err(JsonErrorKind::UnterminatedString, open));
            };
            match b {
                b'"' => {
                    self.pos = i + 1;
                    return Ok((start, i, escaped, high & HIGHS == 0));
                }
                b'\\' => {
                    escaped = true;
                    match src.get(i + 1) {
                        Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => i += 2,
                        Some(b'u') => {
                            let hex = src.get(i + 2..i + 6);
                            match hex {
                                Some(h) if h.iter().all(|&c| is_hex(c)) => i += 6,
                                _ => return Err(self.err(JsonErrorKind::BadEscape, i)),
                            }
                        }
                        None => return Err(self.err(JsonErrorKind::UnterminatedString, open)),
                        Some(_) => return Err(self.err(JsonErrorKind::BadEscape, i)),
                    }
                }
                0..=0x1f => return Err(self.err(JsonErrorKind::ControlCharInString, i)),
                _ => {
                    high |= b as u64;
                    i += 1;
                }
            }
        }
    }

    fn digits(&mut self) -> usize {
        let start = self.pos;
        while let Some(b'0'..=b'9') = self.peek() {
            self.pos += 1;
        }
        self.pos - start
    }

    fn number(&mut self) -> Result<(), JsonError> {
        let start = self.pos;
        if self.peek() == Some(b'-') {
            self.pos += 1;
        }
        match self.peek() {
            Some(b'0') => self.pos += 1,
            Some(b'1'..=b'9') => {
                self.digits();
            }
            Some(b'I') => return Err(self.err(JsonErrorKind::BadLiteral, self.pos)),
            _ => return Err(self.err(JsonErrorKind::BadNumber, start)),
        }
        let mut is_float = false;
        if self.peek() == Some(b'.') {
            self.pos += 1;
            if self.digits() == 0 {
                return Err(self.err(JsonErrorKind::BadNumber, start));
            }
            is_float = true;
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.pos += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.pos += 1;
            }
            if self.digits() == 0 {
                return Err(self.err(JsonErrorKind::BadNumber, start));
            }
            is_float = true;
        }
        self.sink
            .number(&self.src[start..self.pos], start, is_float);
        Ok(())
    }
}

/// Validates a whole JSON text; returns its nesting depth.
pub fn validate(text: &str) -> Result<usize, JsonError> {
    let mut scanner = Scanner::new(text, NoopSink);
    scanner.document()?;
    Ok(scanner.max_depth())
}

/// The kind of a document's top-level value, for "not an array" messages.
pub fn kind_name(first_byte: u8) -> &'static str {
    match first_byte {
        b'{' => "an object",
        b'"' => "a string",
        b't' | b'f' => "a boolean",
        b'n' => "null",
        _ => "a number",
    }
}

/// Element spans of a top-level JSON array, found without building any value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArrayIndex {
    /// `(start, end)` byte offsets of each element's text.
    pub spans: Vec<(u32, u32)>,
    /// Nesting depth of the whole document (the array itself counts 1).
    pub depth: usize,
}

/// What a validated text turned out to be when an array was expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArrayScan {
    Array(ArrayIndex),
    NotArray(&'static str),
}

/// Validates `text` in full and, when it is an array, records where each element starts and
/// ends. A valid non-array answers `NotArray` with its kind; invalid JSON is an error even when
/// it starts like an array, so both implementations agree on which error wins.
pub fn index_array(text: &str) -> Result<ArrayScan, JsonError> {
    let mut scanner = Scanner::new(text, NoopSink);
    if text.len() > MAX_TEXT_LEN {
        return Err(scanner.err(JsonErrorKind::TooLarge, 0));
    }
    scanner.skip_ws();
    match scanner.peek() {
        Some(b'[') => {}
        Some(first) => {
            scanner.document()?;
            return Ok(ArrayScan::NotArray(kind_name(first)));
        }
        None => return Err(scanner.err(JsonErrorKind::Empty, scanner.pos)),
    }
    scanner.enter()?;
    scanner.pos += 1;
    scanner.skip_ws();
    let mut spans = Vec::new();
    if scanner.peek() == Some(b']') {
        scanner.pos += 1;
    } else {
        loop {
            let start = scanner.pos;
            scanner.value()?;
            spans.push((start as u32, scanner.pos as u32));
            scanner.skip_ws();
            match scanner.peek() {
                Some(b',') => {
                    scanner.pos += 1;
                    scanner.skip_ws();
                }
                Some(b']') => {
                    scanner.pos += 1;
                    break;
                }
                None => return Err(scanner.err(JsonErrorKind::UnexpectedEnd, scanner.pos)),
                Some(_) => return Err(scanner.err(JsonErrorKind::ExpectedCommaOrEnd, scanner.pos)),
            }
        }
    }
    scanner.skip_ws();
    if scanner.pos != scanner.src.len() {
        return Err(scanner.err(JsonErrorKind::TrailingData, scanner.pos));
    }
    Ok(ArrayScan::Array(ArrayIndex {
        spans,
        depth: scanner.max_depth(),
    }))
}

/// Checks that `bytes` is UTF-8, naming the first bad byte otherwise.
pub fn utf8(bytes: &[u8]) -> Result<&str, JsonError> {
    std::str::from_utf8(bytes).map_err(|e| JsonError {
        kind: JsonErrorKind::InvalidUtf8,
        offset: e.valid_up_to(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(text: &str) -> bool {
        validate(text).is_ok()
    }

    #[test]
    fn accepts_rfc8259_values() {
        for text in [
            "0",
            "-0",
            "1.5e-3",
            "1E+2",
            " \t\r\n[] ",
            "{}",
            r#"{"a":[1,{"b":null}],"c":"\u00e9\ud83d\ude00\n"}"#,
            "\"caf\u{e9} \u{1F600}\"",
            "true",
            "false",
            "null",
            r#""\ud800""#,
            "123456789012345678901234567890",
        ] {
            assert!(ok(text), "{text:?} should be valid");
        }
    }

    #[test]
    fn rejects_what_rfc8259_rejects() {
        for text in [
            "",
            " ",
            "01",
            "1.",
            ".5",
            "1e",
            "-",
            "+1",
            "NaN",
            "Infinity",
            "-Infinity",
            "[1,]",
            "{\"a\":1,}",
            "{a:1}",
            "'x'",
            "\"\t\"",
            "\"\\x\"",
            "\"\\u12G4\"",
            "[1 2]",
            "tru",
            "nul",
            "[",
            "{\"a\"",
            "\"abc",
            "1 2",
            "\u{feff}1",
            "{\"a\" 1}",
        ] {
            assert!(!ok(text), "{text:?} should be invalid");
        }
    }

    #[test]
    fn depth_limit_is_inclusive() {
        let at_limit = "[".repeat(MAX_DEPTH) + &"]".repeat(MAX_DEPTH);
        assert_eq!(validate(&at_limit), Ok(MAX_DEPTH));
        let over = "[".repeat(MAX_DEPTH + 1) + &"]".repeat(MAX_DEPTH + 1);
        assert_eq!(validate(&over).unwrap_err().kind, JsonErrorKind::TooDeep);
        assert_eq!(validate("1"), Ok(0));
        assert_eq!(validate(r#"{"a":[{}]}"#), Ok(3));
    }

    #[test]
    fn long_strings_use_the_word_loop_correctly() {
        let long = format!("\"{}\\n{}\u{e9}\"", "a".repeat(37), "b".repeat(19));
        let mut scanner = Scanner::new(&long, NoopSink);
        let (start, end, escaped, ascii) = scanner.string().unwrap();
        assert_eq!(
            (start, end, escaped, ascii),
            (1, long.len() - 1, true, false)
        );
        let ctl = format!("\"{}\u{1}\"", "a".repeat(20));
        assert_eq!(
            validate(&ctl).unwrap_err().kind,
            JsonErrorKind::ControlCharInString
        );
    }

    #[test]
    fn indexes_array_elements() {
        let text = r#" [ 1 , "a,]" , {"k": [2, 3]}, [] ] "#;
        let ArrayScan::Array(index) = index_array(text).unwrap() else {
            panic!("expected an array");
        };
        let parts: Vec<&str> = index
            .spans
            .iter()
            .map(|&(s, e)| &text[s as usize..e as usize])
            .collect();
        assert_eq!(parts, vec!["1", r#""a,]""#, r#"{"k": [2, 3]}"#, "[]"]);
        assert_eq!(index.depth, 3);
        assert_eq!(index_array("{}").unwrap(), ArrayScan::NotArray("an object"));
        assert!(index_array("[1,").is_err());
        assert!(index_array("[1] x").is_err());
        assert!(index_array("{").is_err());
    }
}
