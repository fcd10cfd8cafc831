//! Errors of the core. `lib.rs` maps each variant to the Python class of the same name in
//! `pgflow/errors.py`, so the Rust core and its msgspec fallback raise the same classes.
use std::fmt;

/// What went wrong, with the position of the failing task or item in the caller's sequence.
#[derive(Debug, Clone, PartialEq)]
pub enum CoreError {
    /// A blob or an item to decode is not valid JSON (or nests too deep).
    InvalidJson {
        position: usize,
        subject: String,
        detail: String,
    },
    /// A MODE_MAP task's parent is valid JSON but not an array.
    NotAnArray {
        position: usize,
        key: String,
        found: &'static str,
    },
    /// A MODE_MAP task's index is outside its parent array.
    ElementOutOfRange {
        position: usize,
        key: String,
        index: i64,
        len: usize,
    },
    /// The blob a MODE_FLOW_INPUT or MODE_MAP task needs is absent.
    MissingBlob {
        position: usize,
        key: String,
        role: &'static str,
    },
    /// A task spec names a mode other than 0, 1 or 2.
    UnknownMode { position: usize, mode: i64 },
}

impl CoreError {
    pub fn position(&self) -> usize {
        match self {
            CoreError::InvalidJson { position, .. }
            | CoreError::NotAnArray { position, .. }
            | CoreError::ElementOutOfRange { position, .. }
            | CoreError::MissingBlob { position, .. }
            | CoreError::UnknownMode { position, .. } => *position,
        }
    }

    /// Name of the Python exception class (in `pgflow.errors`) this error maps to.
    pub fn class_name(&self) -> &'static str {
        match self {
            CoreError::InvalidJson { .. } => "InvalidJson",
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
            CoreError::InvalidJson {
                position,
                subject,
                detail,
            } => write!(f, "task {position}: {subject} is not valid JSON: {detail}"),
            CoreError::NotAnArray {
                position,
                key,
                found,
            } => write!(
                f,
                "task {position}: map parent '{key}' is {found}, not an array"
            ),
            CoreError::ElementOutOfRange {
                position,
                key,
                index,
                len,
            } => write!(
                f,
                "task {position}: element {index} of map parent '{key}' does not exist (it has {len})"
            ),
            CoreError::MissingBlob {
                position,
                key,
                role,
            } => write!(f, "task {position}: the {role} '{key}' was not sent"),
            CoreError::UnknownMode { position, mode } => {
                write!(f, "task {position}: unknown mode {mode} (expected 0, 1 or 2)")
            }
        }
    }
}
