//! Tapes to Python objects, and `decode_many`.
//!
//! Building happens with the GIL held and without re-validating: the tape was produced by the
//! strict scanner. Objects are made through the C API directly (lists pre-sized, dicts
//! pre-sized), and dict keys are memoized per call so repeated keys share one `str` with its
//! hash already computed, as Python's own `json` module does.
use std::os::raw::c_char;

use pyo3::exceptions::PyTypeError;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyString};

use crate::error::CoreError;
use crate::json_scan;
use crate::numbers;
use crate::tape::{self, StrKind, Tape, Tok};

/// Calls whose inputs exceed this many bytes release the GIL while scanning. Below it the
/// scan takes a few tens of microseconds, less than what other threads holding the GIL can
/// make us wait to get it back.
pub(crate) const RELEASE_GIL_BYTES: usize = 128 * 1024;

/// Keys longer than this are not memoized: long keys rarely repeat.
const MEMO_MAX_KEY: usize = 64;
/// Slots of the direct-mapped key memo (a power of two).
const MEMO_SLOTS: usize = 1024;

/// Builds Python values from tapes. Holds strong references to memoized keys until dropped.
pub(crate) struct Builder<'t> {
    py: Python<'t>,
    /// Direct-mapped memo of dict keys: a colliding key simply replaces the slot's entry.
    /// Cheaper than a hash map for the few dozen distinct keys typical documents repeat.
    memo: Vec<Option<(&'t [u8], *mut ffi::PyObject)>>,
}

impl Drop for Builder<'_> {
    fn drop(&mut self) {
        for (_, obj) in self.memo.drain(..).flatten() {
            // SAFETY: the memo owns one reference to each key, and the GIL is held for the
            // builder's whole life (it carries the `Python` token).
            unsafe { ffi::Py_DECREF(obj) };
        }
    }
}

/// Memo slot of a key: mixes its length and its first and last 8 bytes, which covers every
/// byte of keys up to 16 bytes long.
#[inline]
fn memo_slot(bytes: &[u8]) -> usize {
    const K: u64 = 0x9E37_79B9_7F4A_7C15;
    let load = |b: &[u8]| -> u64 {
        let mut word = [0u8; 8];
        word[..b.len()].copy_from_slice(b);
        u64::from_le_bytes(word)
    };
    let n = bytes.len();
    let head = load(&bytes[..n.min(8)]);
    let tail = if n > 8 { load(&bytes[n - 8..]) } else { 0 };
    let mut h = (n as u64 ^ head).wrapping_mul(K);
    h = (h.rotate_left(29) ^ tail).wrapping_mul(K);
    (h >> 54) as usize & (MEMO_SLOTS - 1)
}

/// Pauses Python's automatic garbage collection while a batch's objects are built, and resumes
/// it (if it was on) when dropped.
///
/// Building a batch allocates tens of thousands of containers; with collection on, every 700
/// allocations trigger a collection that walks the new objects (and now and then the whole
/// heap), which costs about a fifth of decoding time. While the builder runs it holds the GIL
/// and runs no Python code, so no other code can observe the pause; the collections it skipped
/// happen at the next allocation after it ends.
pub(crate) struct GcPause<'py> {
    _py: Python<'py>,
    was_enabled: bool,
}

impl<'py> GcPause<'py> {
    pub(crate) fn new(py: Python<'py>) -> Self {
        // SAFETY: GIL held (the token proves it).
        let was_enabled = unsafe { ffi::PyGC_Disable() } == 1;
        GcPause {
            _py: py,
            was_enabled,
        }
    }
}

impl Drop for GcPause<'_> {
    fn drop(&mut self) {
        if self.was_enabled {
            // SAFETY: GIL held: the pause lives inside one call that holds it.
            unsafe { ffi::PyGC_Enable() };
        }
    }
}

fn new_ref_or_err(py: Python<'_>, obj: *mut ffi::PyObject) -> PyResult<*mut ffi::PyObject> {
    if obj.is_null() {
        Err(PyErr::fetch(py))
    } else {
        Ok(obj)
    }
}

impl<'t> Builder<'t> {
    pub(crate) fn new(py: Python<'t>) -> Self {
        Builder {
            py,
            memo: vec![None; MEMO_SLOTS],
        }
    }

    /// A new reference to a `str` holding `bytes` of the given kind.
    fn string(&self, bytes: &[u8], kind: StrKind) -> PyResult<*mut ffi::PyObject> {
        let len = bytes.len() as ffi::Py_ssize_t;
        // SAFETY: GIL held; pointers and lengths describe `bytes`. An ASCII string's data is
        // one byte per character, so copying the bytes fills it exactly.
        unsafe {
            let obj = match kind {
                StrKind::Ascii => {
                    let obj = ffi::PyUnicode_New(len, 127);
                    if !obj.is_null() && len > 0 {
                        let data = ffi::PyUnicode_DATA(obj) as *mut u8;
                        std::ptr::copy_nonoverlapping(bytes.as_ptr(), data, bytes.len());
                    }
                    obj
                }
                StrKind::Utf8 => ffi::PyUnicode_DecodeUTF8(
                    bytes.as_ptr() as *const c_char,
                    len,
                    std::ptr::null(),
                ),
                StrKind::Wtf8 => ffi::PyUnicode_DecodeUTF8(
                    bytes.as_ptr() as *const c_char,
                    len,
                    c"surrogatepass".as_ptr(),
                ),
            };
            new_ref_or_err(self.py, obj)
        }
    }

    /// A new reference to a dict key, shared with earlier equal keys of this call.
    pub(crate) fn key(&mut self, bytes: &'t [u8], kind: StrKind) -> PyResult<*mut ffi::PyObject> {
        if bytes.len() > MEMO_MAX_KEY {
            return self.string(bytes, kind);
        }
        let slot = memo_slot(bytes);
        if let Some((cached, obj)) = self.memo[slot] {
            if cached == bytes {
                // SAFETY: GIL held; the memo keeps `obj` alive.
                unsafe { ffi::Py_INCREF(obj) };
                return Ok(obj);
            }
        }
        let obj = self.string(bytes, kind)?;
        // SAFETY: GIL held; the memo takes its own reference and drops the evicted one.
        unsafe {
            ffi::Py_INCREF(obj);
            if let Some((_, old)) = self.memo[slot].replace((bytes, obj)) {
                ffi::Py_DECREF(old);
            }
        }
        Ok(obj)
    }

    fn big_int(&self, text: &[u8]) -> PyResult<*mut ffi::PyObject> {
        let (negative, digits) = match text.first() {
            Some(b'-') => (true, &text[1..]),
            _ => (false, text),
        };
        // Through bytes rather than int(str): no 4300-digit limit, matching the twin.
        let magnitude = numbers::decimal_to_le_bytes(digits);
        // SAFETY: GIL held; the buffer outlives the call.
        unsafe {
            let positive = new_ref_or_err(
                self.py,
                ffi::_PyLong_FromByteArray(magnitude.as_ptr(), magnitude.len(), 1, 0),
            )?;
            if !negative {
                return Ok(positive);
            }
            let result = ffi::PyNumber_Negative(positive);
            ffi::Py_DECREF(positive);
            new_ref_or_err(self.py, result)
        }
    }

    /// A new reference to the value starting at token `*at` of `tape`; advances `*at` past it.
    pub(crate) fn value(
        &mut self,
        tape: &'t Tape,
        src: &'t [u8],
        at: &mut usize,
    ) -> PyResult<*mut ffi::PyObject> {
        let tok = tape.toks[*at];
        *at += 1;
        // SAFETY: GIL held throughout; every pointer stored into a container is a new
        // reference whose ownership moves into it (PyList_SET_ITEM steals, PyDict_SetItem
        // does not, so we drop ours after it).
        unsafe {
            match tok {
                Tok::Null => {
                    let none = ffi::Py_None();
                    ffi::Py_INCREF(none);
                    Ok(none)
                }
                Tok::Bool(b) => {
                    let obj = if b { ffi::Py_True() } else { ffi::Py_False() };
                    ffi::Py_INCREF(obj);
                    Ok(obj)
                }
                Tok::Int(v) => new_ref_or_err(self.py, ffi::PyLong_FromLongLong(v)),
                Tok::BigInt { start, len } => {
                    self.big_int(&src[start as usize..(start + len) as usize])
                }
                Tok::Float(f) => new_ref_or_err(self.py, ffi::PyFloat_FromDouble(f)),
                Tok::Str(s) => self.string(tape.str_bytes(src, s), s.kind),
                Tok::Array(n) => {
                    let list = new_ref_or_err(self.py, ffi::PyList_New(n as ffi::Py_ssize_t))?;
                    for i in 0..n {
                        match self.value(tape, src, at) {
                            Ok(item) => ffi::PyList_SET_ITEM(list, i as ffi::Py_ssize_t, item),
                            Err(e) => {
                                ffi::Py_DECREF(list);
                                return Err(e);
                            }
                        }
                    }
                    Ok(list)
                }
                Tok::Object(n) => {
                    let dict =
                        new_ref_or_err(self.py, ffi::_PyDict_NewPresized(n as ffi::Py_ssize_t))?;
                    for _ in 0..n {
                        let Tok::Str(k) = tape.toks[*at] else {
                            unreachable!("the scanner only emits string keys");
                        };
                        *at += 1;
                        let entry = self.key(tape.str_bytes(src, k), k.kind).and_then(|key| {
                            let value = self.value(tape, src, at);
                            let set = value.and_then(|value| {
                                let rc = ffi::PyDict_SetItem(dict, key, value);
                                ffi::Py_DECREF(value);
                                if rc == 0 {
                                    Ok(())
                                } else {
                                    Err(PyErr::fetch(self.py))
                                }
                            });
                            ffi::Py_DECREF(key);
                            set
                        });
                        if let Err(e) = entry {
                            ffi::Py_DECREF(dict);
                            return Err(e);
                        }
                    }
                    Ok(dict)
                }
            }
        }
    }

    /// The whole document of a tape as a Python object.
    pub(crate) fn document(&mut self, tape: &'t Tape, src: &'t [u8]) -> PyResult<Bound<'t, PyAny>> {
        let mut at = 0;
        let obj = self.value(tape, src, &mut at)?;
        // SAFETY: `obj` is a new, non-null reference.
        Ok(unsafe { Bound::from_owned_ptr(self.py, obj) })
    }
}

/// One item of `decode_many`, kept alive while its bytes are borrowed.
enum RawItem<'py> {
    Str(Bound<'py, PyString>),
    Bytes(Bound<'py, PyBytes>),
}

/// What an item's bytes turned out to be before scanning.
enum ItemText<'a> {
    /// Text that is UTF-8 by construction (a `str`).
    Str(&'a [u8]),
    /// Bytes still to be checked for UTF-8.
    Bytes(&'a [u8]),
    /// A `str` holding a lone surrogate.
    NotUnicode,
}

fn scan_items(texts: &[ItemText<'_>]) -> Result<Vec<Tape>, CoreError> {
    texts
        .iter()
        .enumerate()
        .map(|(position, item)| {
            let invalid = |error| CoreError::InvalidJson {
                position: Some(position),
                subject: format!("item {position}"),
                error,
            };
            let text = match item {
                // SAFETY: these bytes come from PyUnicode_AsUTF8AndSize, hence are UTF-8.
                ItemText::Str(b) => unsafe { std::str::from_utf8_unchecked(b) },
                ItemText::Bytes(b) => json_scan::utf8(b).map_err(invalid)?,
                ItemText::NotUnicode => {
                    return Err(invalid(json_scan::JsonError {
                        kind: json_scan::JsonErrorKind::InvalidUtf8,
                        offset: 0,
                    }))
                }
            };
            tape::build(text).map_err(invalid)
        })
        .collect()
}

/// Decodes JSON texts (bytes or str) to Python values.
#[pyfunction]
pub(crate) fn decode_many<'py>(
    py: Python<'py>,
    raws: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyList>> {
    if raws.is_instance_of::<PyString>() || raws.is_instance_of::<PyBytes>() {
        return Err(PyTypeError::new_err(
            "decode_many takes a sequence of JSON texts, not a single str or bytes; \
             wrap it in a list",
        ));
    }
    let mut items: Vec<RawItem<'py>> = Vec::new();
    for (position, raw) in raws.try_iter()?.enumerate() {
        let raw = raw?;
        let item = if let Ok(s) = raw.downcast::<PyString>() {
            RawItem::Str(s.clone())
        } else if let Ok(b) = raw.downcast::<PyBytes>() {
            RawItem::Bytes(b.clone())
        } else {
            return Err(PyTypeError::new_err(format!(
                "decode_many: item {position} is {}, expected bytes or str",
                raw.get_type().name()?
            )));
        };
        items.push(item);
    }
    let texts: Vec<ItemText<'_>> = items
        .iter()
        .map(|item| match item {
            RawItem::Str(s) => s
                .to_str()
                .map_or(ItemText::NotUnicode, |t| ItemText::Str(t.as_bytes())),
            RawItem::Bytes(b) => ItemText::Bytes(b.as_bytes()),
        })
        .collect();
    let total: usize = texts
        .iter()
        .map(|t| match t {
            ItemText::Str(b) | ItemText::Bytes(b) => b.len(),
            ItemText::NotUnicode => 0,
        })
        .sum();
    let scanned = if total >= RELEASE_GIL_BYTES {
        py.allow_threads(|| scan_items(&texts))
    } else {
        scan_items(&texts)
    };
    let tapes = scanned.map_err(|e| crate::core_err(py, e))?;
    let _gc_pause = GcPause::new(py);
    let mut builder = Builder::new(py);
    let list = PyList::empty(py);
    for (tape, text) in tapes.iter().zip(&texts) {
        let src = match text {
            ItemText::Str(b) | ItemText::Bytes(b) => *b,
            ItemText::NotUnicode => unreachable!("rejected while scanning"),
        };
        list.append(builder.document(tape, src)?)?;
    }
    Ok(list)
}
