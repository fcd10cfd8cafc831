//! `encode_value` / `encode_outputs`: Python values to compact JSON text that PostgreSQL jsonb
//! accepts, byte-for-byte equal to the twin's `json.dumps(..., ensure_ascii=False,
//! separators=(",", ":"))` output.
//!
//! Anything jsonb would refuse (U+0000, lone surrogates, NaN/infinity) or JSON cannot express
//! (other types, non-str keys, nesting past `MAX_DEPTH`, which also catches reference cycles)
//! fails with `UnencodableValue` naming the type and the path, so one bad task result can be
//! failed on its own instead of the whole batched SQL call erroring.
use std::io::Write;

use pyo3::exceptions::PyTypeError;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyInt, PyString};

use crate::json_scan::MAX_DEPTH;
use crate::json_write::{self, PathSeg};
use crate::numbers;

/// Why a value cannot be encoded; `path` is collected innermost-first while unwinding.
struct Unencodable {
    subject: &'static str,
    type_name: String,
    reason: String,
    path: Vec<PathSeg>,
}

enum EncodeError {
    Py(PyErr),
    Bad(Box<Unencodable>),
}

impl From<PyErr> for EncodeError {
    fn from(e: PyErr) -> Self {
        EncodeError::Py(e)
    }
}

const UNSUPPORTED: &str = "only None, bool, int, float, str, list, tuple and dict with str keys \
                           are JSON-encodable";
const HAS_NUL: &str = "it contains U+0000, which PostgreSQL jsonb cannot store";
const HAS_SURROGATE: &str = "it contains a lone surrogate, which is not valid Unicode";

fn type_name_of(obj: &Bound<'_, PyAny>) -> String {
    obj.get_type()
        .name()
        .map_or_else(|_| "?".to_string(), |n| n.to_string())
}

fn bad(subject: &'static str, obj: &Bound<'_, PyAny>, reason: String) -> EncodeError {
    EncodeError::Bad(Box::new(Unencodable {
        subject,
        type_name: type_name_of(obj),
        reason,
        path: Vec::new(),
    }))
}

fn with_seg(
    result: Result<(), EncodeError>,
    seg: impl FnOnce() -> PathSeg,
) -> Result<(), EncodeError> {
    match result {
        Err(EncodeError::Bad(mut b)) => {
            b.path.push(seg());
            Err(EncodeError::Bad(b))
        }
        other => other,
    }
}

struct Encoder {
    out: Vec<u8>,
    ascii: bool,
}

impl Encoder {
    fn new() -> Self {
        Encoder {
            out: Vec::with_capacity(256),
            ascii: true,
        }
    }

    /// The UTF-8 of a `str` (or subclass), or why it cannot be stored.
    fn str_bytes<'a>(&mut self, obj: &'a Bound<'_, PyAny>) -> Result<&'a [u8], &'static str> {
        let mut size: ffi::Py_ssize_t = 0;
        // SAFETY: GIL held and `obj` is a str; for ASCII strings this is the string's own
        // buffer, otherwise a UTF-8 copy cached on (and owned by) the object, which outlives
        // the returned slice because `obj` does.
        unsafe {
            let ptr = ffi::PyUnicode_AsUTF8AndSize(obj.as_ptr(), &mut size);
            if ptr.is_null() {
                ffi::PyErr_Clear();
                return Err(HAS_SURROGATE);
            }
            if ffi::PyUnicode_IS_ASCII(obj.as_ptr()) == 0 {
                self.ascii = false;
            }
            Ok(std::slice::from_raw_parts(ptr as *const u8, size as usize))
        }
    }

    fn string(&mut self, obj: &Bound<'_, PyAny>) -> Result<(), EncodeError> {
        let bytes = self
            .str_bytes(obj)
            .map_err(|reason| bad("a value of type", obj, reason.to_string()))?;
        json_write::write_str(&mut self.out, bytes)
            .map_err(|_| bad("a value of type", obj, HAS_NUL.to_string()))
    }

    fn int(&mut self, obj: &Bound<'_, PyAny>) -> Result<(), EncodeError> {
        let mut overflow: std::os::raw::c_int = 0;
        // SAFETY: GIL held and `obj` is an int (or subclass): no Python code runs here.
        let v = unsafe { ffi::PyLong_AsLongLongAndOverflow(obj.as_ptr(), &mut overflow) };
        if overflow == 0 {
            if v == -1 {
                if let Some(e) = PyErr::take(obj.py()) {
                    return Err(e.into());
                }
            }
            let _ = write!(self.out, "{v}");
            return Ok(());
        }
        // Past i64: digits from the magnitude's bytes, so the 4300-digit str() limit never
        // applies. `int.__abs__` on the exact value bypasses subclass overrides.
        let py = obj.py();
        let int_type = py.get_type::<PyInt>();
        // SAFETY: GIL held; PyNumber_Index gives a new reference to an exact int (or NULL).
        let exact = unsafe {
            let ptr = ffi::PyNumber_Index(obj.as_ptr());
            if ptr.is_null() {
                return Err(PyErr::fetch(py).into());
            }
            Bound::from_owned_ptr(py, ptr)
        };
        let magnitude = int_type.getattr("__abs__")?.call1((&exact,))?;
        // SAFETY: GIL held; `magnitude` is an int.
        let bits = unsafe { ffi::_PyLong_NumBits(magnitude.as_ptr()) };
        let bytes = magnitude.call_method1("to_bytes", (bits.div_ceil(8), "little"))?;
        let digits = numbers::le_bytes_to_decimal(bytes.extract::<&[u8]>()?);
        if overflow < 0 {
            self.out.push(b'-');
        }
        self.out.extend_from_slice(digits.as_bytes());
        Ok(())
    }

    fn float(&mut self, obj: &Bound<'_, PyAny>) -> Result<(), EncodeError> {
        // SAFETY: GIL held and `obj` is a float (or subclass): no Python code runs here.
        let v = unsafe { ffi::PyFloat_AsDouble(obj.as_ptr()) };
        if !v.is_finite() {
            let shown = if v.is_nan() {
                "nan"
            } else if v > 0.0 {
                "inf"
            } else {
                "-inf"
            };
            return Err(bad(
                "a value of type",
                obj,
                format!("{shown} is not valid JSON (only finite floats are)"),
            ));
        }
        numbers::write_float_repr(&mut self.out, v);
        Ok(())
    }

    fn enter(&self, obj: &Bound<'_, PyAny>, depth: usize) -> Result<(), EncodeError> {
        if depth > MAX_DEPTH {
            return Err(bad(
                "a value of type",
                obj,
                format!("it nests deeper than {MAX_DEPTH} levels (is there a reference cycle?)"),
            ));
        }
        Ok(())
    }

    fn sequence(
        &mut self,
        obj: &Bound<'_, PyAny>,
        depth: usize,
        is_list: bool,
    ) -> Result<(), EncodeError> {
        self.enter(obj, depth)?;
        let py = obj.py();
        self.out.push(b'[');
        let mut i: isize = 0;
        loop {
            // Re-read the size each time and own each item: nested dict subclasses run
            // Python code that could change this list while we walk it.
            // SAFETY: GIL held; `obj` is a list or tuple, `i` is checked against its size,
            // and the borrowed item is turned into an owned reference at once.
            let item = unsafe {
                let size = if is_list {
                    ffi::PyList_GET_SIZE(obj.as_ptr())
                } else {
                    ffi::PyTuple_GET_SIZE(obj.as_ptr())
                };
                if i >= size {
                    break;
                }
                let ptr = if is_list {
                    ffi::PyList_GET_ITEM(obj.as_ptr(), i)
                } else {
                    ffi::PyTuple_GET_ITEM(obj.as_ptr(), i)
                };
                Bound::from_borrowed_ptr(py, ptr)
            };
            if i > 0 {
                self.out.push(b',');
            }
            let index = i as usize;
            with_seg(self.value(&item, depth), || PathSeg::Index(index))?;
            i += 1;
        }
        self.out.push(b']');
        Ok(())
    }

    fn entry(
        &mut self,
        key: &Bound<'_, PyAny>,
        value: &Bound<'_, PyAny>,
        depth: usize,
        first: bool,
    ) -> Result<(), EncodeError> {
        if !key.is_instance_of::<PyString>() {
            return Err(bad(
                "a dict key of type",
                key,
                "dict keys must be str".to_string(),
            ));
        }
        let bytes = self
            .str_bytes(key)
            .map_err(|reason| bad("a dict key of type", key, reason.to_string()))?;
        if !first {
            self.out.push(b',');
        }
        json_write::write_str(&mut self.out, bytes)
            .map_err(|_| bad("a dict key of type", key, HAS_NUL.to_string()))?;
        self.out.push(b':');
        with_seg(self.value(value, depth), || {
            // Checked above: the key is valid UTF-8.
            PathSeg::Key(String::from_utf8_lossy(bytes).into_owned())
        })
    }

    fn dict(&mut self, obj: &Bound<'_, PyAny>, depth: usize) -> Result<(), EncodeError> {
        self.enter(obj, depth)?;
        let py = obj.py();
        self.out.push(b'{');
        // SAFETY: GIL held; `obj` is a dict.
        let exact = unsafe { ffi::PyDict_CheckExact(obj.as_ptr()) } != 0;
        if exact {
            let mut pos: ffi::Py_ssize_t = 0;
            let mut first = true;
            loop {
                let mut k: *mut ffi::PyObject = std::ptr::null_mut();
                let mut v: *mut ffi::PyObject = std::ptr::null_mut();
                // SAFETY: GIL held; PyDict_Next bounds-checks `pos` even if the dict changes,
                // and the borrowed key and value become owned references at once.
                let (key, value) = unsafe {
                    if ffi::PyDict_Next(obj.as_ptr(), &mut pos, &mut k, &mut v) == 0 {
                        break;
                    }
                    (
                        Bound::from_borrowed_ptr(py, k),
                        Bound::from_borrowed_ptr(py, v),
                    )
                };
                self.entry(&key, &value, depth, first)?;
                first = false;
            }
        } else {
            // A subclass may order or filter its items (OrderedDict): follow its items().
            let items = obj.call_method0("items")?;
            for (n, pair) in items.try_iter()?.enumerate() {
                let (key, value): (Bound<'_, PyAny>, Bound<'_, PyAny>) = pair?.extract()?;
                self.entry(&key, &value, depth, n == 0)?;
            }
        }
        self.out.push(b'}');
        Ok(())
    }

    fn value(&mut self, obj: &Bound<'_, PyAny>, depth: usize) -> Result<(), EncodeError> {
        let ptr = obj.as_ptr();
        // SAFETY: GIL held; type checks only read the object's type.
        unsafe {
            if ptr == ffi::Py_None() {
                self.out.extend_from_slice(b"null");
                Ok(())
            } else if ptr == ffi::Py_True() {
                self.out.extend_from_slice(b"true");
                Ok(())
            } else if ptr == ffi::Py_False() {
                self.out.extend_from_slice(b"false");
                Ok(())
            } else if ffi::PyUnicode_Check(ptr) != 0 {
                self.string(obj)
            } else if ffi::PyLong_Check(ptr) != 0 {
                self.int(obj)
            } else if ffi::PyFloat_Check(ptr) != 0 {
                self.float(obj)
            } else if ffi::PyDict_Check(ptr) != 0 {
                self.dict(obj, depth + 1)
            } else if ffi::PyList_Check(ptr) != 0 {
                self.sequence(obj, depth + 1, true)
            } else if ffi::PyTuple_Check(ptr) != 0 {
                self.sequence(obj, depth + 1, false)
            } else {
                Err(bad("a value of type", obj, UNSUPPORTED.to_string()))
            }
        }
    }

    fn finish<'py>(self, py: Python<'py>) -> PyResult<Bound<'py, PyString>> {
        let len = self.out.len() as ffi::Py_ssize_t;
        // SAFETY: GIL held; the buffer is UTF-8 (every piece came from a str or is ASCII)
        // and, when `ascii`, one byte per character, which fills PyUnicode_New's data exactly.
        unsafe {
            let obj = if self.ascii {
                let obj = ffi::PyUnicode_New(len, 127);
                if !obj.is_null() && len > 0 {
                    let data = ffi::PyUnicode_DATA(obj) as *mut u8;
                    std::ptr::copy_nonoverlapping(self.out.as_ptr(), data, self.out.len());
                }
                obj
            } else {
                ffi::PyUnicode_DecodeUTF8(
                    self.out.as_ptr() as *const std::os::raw::c_char,
                    len,
                    std::ptr::null(),
                )
            };
            if obj.is_null() {
                return Err(PyErr::fetch(py));
            }
            Ok(Bound::from_owned_ptr(py, obj).downcast_into_unchecked())
        }
    }
}

fn raise(py: Python<'_>, error: EncodeError, position: Option<usize>) -> PyErr {
    match error {
        EncodeError::Py(e) => e,
        EncodeError::Bad(b) => {
            let path = json_write::format_path(&b.path);
            let prefix = position.map_or(String::new(), |p| format!("output {p}: "));
            let message = format!(
                "{prefix}cannot encode {} '{}' at {path}: {}",
                b.subject, b.type_name, b.reason
            );
            crate::unencodable_err(py, message, path, b.type_name, position)
        }
    }
}

/// One value as compact JSON text.
#[pyfunction]
pub(crate) fn encode_value<'py>(
    py: Python<'py>,
    value: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyString>> {
    let mut encoder = Encoder::new();
    encoder.value(value, 0).map_err(|e| raise(py, e, None))?;
    encoder.finish(py)
}

/// Many values as one JSON array text `[v0,v1,...]`.
#[pyfunction]
pub(crate) fn encode_outputs<'py>(
    py: Python<'py>,
    values: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyString>> {
    if values.is_instance_of::<PyString>()
        || values.is_instance_of::<PyBytes>()
        || values.is_instance_of::<PyDict>()
    {
        return Err(PyTypeError::new_err(format!(
            "encode_outputs takes a sequence of values, not a single {}; wrap it in a list",
            type_name_of(values)
        )));
    }
    let mut encoder = Encoder::new();
    encoder.out.push(b'[');
    for (position, value) in values.try_iter()?.enumerate() {
        let value = value?;
        if position > 0 {
            encoder.out.push(b',');
        }
        encoder
            .value(&value, 0)
            .map_err(|e| raise(py, e, Some(position)))?;
    }
    encoder.out.push(b']');
    encoder.finish(py)
}
