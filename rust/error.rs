//! Errors of the pure-Rust core. `lib.rs` maps each variant to the Python class of the same name
//! defined in `pgflow/core_errors.py`, so the Rust core and the pure-Python twin raise identical
//! classes.
use std::fmt;

use crate::json_scan::JsonError;

/// What went wrong, with enough context to name the failing task or item.
#[derive(Debug, Clone, PartialEq)]
pub enum CoreError {
    /// A JSON text (a blob or an item of `decode_many`) is not valid JSON or nests too deep.
    /// `subject` names it in full, e.g. "task 3: blob 'r1:fetch'" or "item 3".
    InvalidJson {
        position: Option<usize>,
        subject: String,
        error: JsonError,
    },
    /// A blob used by a MODE_DEPS task nests exactly `MAX_DEPTH` deep: wrapping it in the
    /// input object would exceed the limit.
    TooDeepForDeps {
        position: usize,
        key: String,
        depth: usize,
    },
    /// A MODE_MAP task's parent blob is valid JSON but not an array.
    NotAnArray {
        position: usize,
        key: String,
        found: &'static str,
    },
    /// A MODE_MAP task's index is outside its parent array.
    ElementOutOfRange {
        position: usize,
        key: String,
        index: i128,
        len: usize,
    },
    /// The blob a MODE_FLOW_INPUT or MODE_MAP task needs is absent.
    MissingBlob {
        position: usize,
        key: String,
        role: &'static str,
    },
    /// A task spec names a mode other than 0, 1 or 2.
    UnknownMode { position: usize, mode: i128 },
    /// A blob is a `str` holding a lone surrogate, so it is not UTF-8 text.
    BlobNotUnicode { position: usize, key: String },
}

impl CoreError {
    /// Position of the failing item in the caller's sequence, when there is one.
    pub fn position(&self) -> Option<usize> {
        match self {
            CoreError::InvalidJson { position, .. } => *position,
            CoreError::TooDeepForDeps { position, .. }
            | CoreError::NotAnArray { position, .. }
            | CoreError::ElementOutOfRange { position, .. }
            | CoreError::MissingBlob { position, .. }
            | CoreError::UnknownMode { position, .. }
            | CoreError::BlobNotUnicode { position, .. } => Some(*position),
        }
    }

    /// Name of the Python exception class (in `pgflow.errors`) this error maps to.
    pub fn class_name(&self) -> &'static str {
        match self {
            CoreError::InvalidJson { .. }
            | CoreError::TooDeepForDeps { .. }
            | CoreError::BlobNotUnicode { .. } => "InvalidJson",
            CoreError::NotAnArray { .. } => "NotAnArray",
            CoreError::ElementOutOfRange { .. } => "ElementOutOfRange",
            CoreError::MissingBlob { .. } => "MissingBlob",
            CoreError::UnknownMode { .. } => "CoreError",
        }
    }
}

impl fmt::Display for CoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CoreError::InvalidJson { subject, error, .. } => {
                write!(f, "{subject} is not valid JSON: {error}")
            }
            CoreError::TooDeepForDeps {
                position,
                key,
                depth,
            } => write!(
                f,
                "task {position}: blob '{key}' nests {depth} levels deep; wrapped in the \
                 dependency object it would exceed the limit of {} levels",
                crate::json_scan::MAX_DEPTH
            ),
            CoreError::NotAnArray {
                position,
                key,
                found,
            } => write!(
                f,
                "task {position}: map parent blob '{key}' is {found}, not an array"
            ),
            CoreError::ElementOutOfRange {
                position,
                key,
                index,
                len,
            } => write!(
                f,
                "task {position}: index {index} is out of range for map parent blob '{key}' \
                 of {len} elements"
            ),
            CoreError::MissingBlob {
                position,
                key,
                role,
            } => write!(
                f,
                "task {position}: {role} blob '{key}' is missing from the batch's blobs"
            ),
            CoreError::UnknownMode { position, mode } => write!(
                f,
                "task {position}: unknown mode {mode} (expected 0 = flow input, 1 = deps, \
                 2 = map)"
            ),
            CoreError::BlobNotUnicode { position, key } => write!(
                f,
                "task {position}: blob '{key}' is not valid JSON: it contains a lone \
                 surrogate, so it is not Unicode text"
            ),
        }
    }
}

impl std::error::Error for CoreError {}
