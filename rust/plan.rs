//! Planning a claimed batch, without Python: which blob each task needs, and where each element
//! of a map parent array starts and ends. JSON is read by jiter; nothing here builds values.
use jiter::{Jiter, Peek};

use crate::error::CoreError;

pub const MODE_FLOW_INPUT: i64 = 0;
pub const MODE_DEPS: i64 = 1;
pub const MODE_MAP: i64 = 2;

/// jiter's nesting limit: a JSON text that jiter decodes (a blob, a map element, an item) may nest
/// this many arrays/objects that hold values (an empty one counts as a scalar). A map parent may
/// be one level deeper: its elements are read one by one.
pub const MAX_DEPTH: usize = 200;

/// What a task's input is made of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The run input.
    FlowInput,
    /// `{dep: output}` of the dependencies whose output blob was sent.
    Deps,
    /// One element of an array: a dependency's output, or the run input for a root map.
    Map,
}

impl Mode {
    pub fn from_code(code: i64, position: usize) -> Result<Mode, CoreError> {
        match code {
            MODE_FLOW_INPUT => Ok(Mode::FlowInput),
            MODE_DEPS => Ok(Mode::Deps),
            MODE_MAP => Ok(Mode::Map),
            mode => Err(CoreError::UnknownMode { position, mode }),
        }
    }
}

/// The key of a blob: `run_id:` for the run input, `run_id:step` for a step's output.
pub fn blob_key(run_id: &str, step: &str) -> String {
    let mut key = String::with_capacity(run_id.len() + step.len() + 1);
    key.push_str(run_id);
    key.push(':');
    key.push_str(step);
    key
}

/// The key of the blob a MODE_MAP task slices: its one dependency, else the run input.
pub fn map_parent_key(run_id: &str, deps: &[&str]) -> String {
    blob_key(run_id, deps.first().copied().unwrap_or(""))
}

/// Byte ranges of the elements of a JSON array, found by skipping over them once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArrayIndex {
    pub elements: Vec<(usize, usize)>,
}

/// Why a text could not be indexed as an array.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IndexError {
    /// Not valid JSON (or too deep), with jiter's description.
    Invalid(String),
    /// Valid JSON of another type.
    NotAnArray(&'static str),
}

/// Indexes the elements of the JSON array `text`, validating the whole text on the way.
pub fn index_array(text: &[u8]) -> Result<ArrayIndex, IndexError> {
    let invalid = |e: jiter::JiterError| IndexError::Invalid(e.description(&Jiter::new(text)));
    let mut jiter = Jiter::new(text);
    let peek = jiter.peek().map_err(invalid)?;
    if peek != Peek::Array {
        jiter.known_skip(peek).map_err(invalid)?;
        jiter.finish().map_err(invalid)?;
        return Err(IndexError::NotAnArray(type_name(peek)));
    }
    let mut elements = Vec::new();
    let mut next = jiter.known_array().map_err(invalid)?;
    while let Some(peek) = next {
        let start = jiter.current_index();
        jiter.known_skip(peek).map_err(invalid)?;
        elements.push((start, jiter.current_index()));
        next = jiter.array_step().map_err(invalid)?;
    }
    jiter.finish().map_err(invalid)?;
    Ok(ArrayIndex { elements })
}

impl ArrayIndex {
    /// The range of element `index`, or the error a task asking for it gets.
    pub fn element(
        &self,
        index: i64,
        position: usize,
        key: &str,
    ) -> Result<(usize, usize), CoreError> {
        usize::try_from(index)
            .ok()
            .and_then(|i| self.elements.get(i).copied())
            .ok_or_else(|| CoreError::ElementOutOfRange {
                position,
                key: key.to_owned(),
                index,
                len: self.elements.len(),
            })
    }
}

fn type_name(peek: Peek) -> &'static str {
    match peek {
        Peek::Object => "an object",
        Peek::String => "a string",
        Peek::Null => "null",
        Peek::True | Peek::False => "a boolean",
        _ => "a number",
    }
}

/// Writes `{"dep":<blob>,...}` for a MODE_DEPS task from raw blob texts (`None`: a skipped
/// dependency, left out). Keys are written as JSON strings.
pub fn write_deps_object(deps: &[(&str, Option<&[u8]>)], out: &mut Vec<u8>) {
    out.push(b'{');
    let mut first = true;
    for (slug, blob) in deps {
        let Some(blob) = blob else { continue };
        if !first {
            out.push(b',');
        }
        first = false;
        // serializing a &str to JSON cannot fail
        serde_json::to_writer(&mut *out, slug).expect("a string always serializes");
        out.push(b':');
        out.extend_from_slice(trim(blob));
    }
    out.push(b'}');
}

/// `text` without the JSON white space around it.
pub fn trim(text: &[u8]) -> &[u8] {
    let is_space = |b: &u8| matches!(b, b' ' | b'\t' | b'\n' | b'\r');
    let start = text.iter().position(|b| !is_space(b)).unwrap_or(text.len());
    let end = text
        .iter()
        .rposition(|b| !is_space(b))
        .map_or(start, |i| i + 1);
    &text[start..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indexes_elements_of_an_array() {
        let text = br#" [1, "a,b", {"x": [2, 3]}, null ] "#;
        let index = index_array(text).unwrap();
        let parts: Vec<&[u8]> = index.elements.iter().map(|&(s, e)| &text[s..e]).collect();
        assert_eq!(
            parts,
            vec![&b"1"[..], br#""a,b""#, br#"{"x": [2, 3]}"#, b"null"]
        );
        assert_eq!(index_array(b"[]").unwrap().elements, vec![]);
    }

    #[test]
    fn tells_other_types_and_invalid_text_apart() {
        assert_eq!(
            index_array(br#"{"a": 1}"#),
            Err(IndexError::NotAnArray("an object"))
        );
        assert_eq!(index_array(b"3"), Err(IndexError::NotAnArray("a number")));
        assert!(matches!(index_array(b"[1, 2"), Err(IndexError::Invalid(_))));
        assert!(matches!(index_array(b"[1] x"), Err(IndexError::Invalid(_))));
        assert!(matches!(
            index_array(b"{\"a\" 1}"),
            Err(IndexError::Invalid(_))
        ));
    }

    #[test]
    fn rejects_nesting_deeper_than_the_limit() {
        let deep = |n: usize| format!("{}1{}", "[".repeat(n), "]".repeat(n));
        assert!(index_array(deep(MAX_DEPTH + 1).as_bytes()).is_ok());
        assert!(matches!(
            index_array(deep(MAX_DEPTH + 2).as_bytes()),
            Err(IndexError::Invalid(_))
        ));
    }

    #[test]
    fn element_out_of_range_names_the_task() {
        let index = index_array(b"[1, 2]").unwrap();
        assert_eq!(index.element(1, 0, "r:p"), Ok((4, 5)));
        assert_eq!(
            index.element(2, 7, "r:p"),
            Err(CoreError::ElementOutOfRange {
                position: 7,
                key: "r:p".into(),
                index: 2,
                len: 2
            })
        );
        assert!(index.element(-1, 0, "r:p").is_err());
    }

    #[test]
    fn writes_deps_objects_leaving_skipped_ones_out() {
        let mut out = Vec::new();
        write_deps_object(
            &[("a", Some(b" 1 ")), ("b", None), ("c\"d", Some(b"[2]"))],
            &mut out,
        );
        assert_eq!(out, br#"{"a":1,"c\"d":[2]}"#);
        out.clear();
        write_deps_object(&[], &mut out);
        assert_eq!(out, b"{}");
    }

    #[test]
    fn modes_and_keys() {
        assert_eq!(Mode::from_code(2, 0), Ok(Mode::Map));
        assert_eq!(
            Mode::from_code(9, 3),
            Err(CoreError::UnknownMode {
                position: 3,
                mode: 9
            })
        );
        assert_eq!(map_parent_key("r", &[]), "r:");
        assert_eq!(map_parent_key("r", &["list"]), "r:list");
    }
}
