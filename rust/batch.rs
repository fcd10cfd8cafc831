//! `assemble_inputs` and `assemble_and_decode`: the Python side of `assemble.rs`.
//!
//! A call reads the task specs and looks up the blobs they need (GIL held), then validates,
//! indexes and tokenizes (GIL released for large batches: the blob texts are borrowed from
//! `str` objects this call holds strong references to, and `str` is immutable, so the bytes
//! cannot change or go away meanwhile), then builds the Python results (GIL held).
use pyo3::exceptions::PyTypeError;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyString, PyTuple};

use crate::assemble::{self, BlobText, Key, Plan, Spec, TaskTape};
use crate::decode::{Builder, GcPause, RELEASE_GIL_BYTES};
use crate::tape::StrKind;

/// A task spec's Python objects, kept alive while their text is borrowed.
struct SpecObjs<'py> {
    mode: i128,
    run_id: Bound<'py, PyString>,
    deps: Vec<Bound<'py, PyString>>,
    index: i128,
}

fn type_name(obj: &Bound<'_, PyAny>) -> String {
    obj.get_type()
        .name()
        .map_or_else(|_| "?".to_string(), |n| n.to_string())
}

/// `operator.index(obj)`, clamped to i128 (anything larger is out of every range anyway).
fn index_value(obj: &Bound<'_, PyAny>, position: usize, field: &str) -> PyResult<i128> {
    // SAFETY: GIL held; PyNumber_Index returns a new reference or NULL with an error set.
    let exact = unsafe {
        let ptr = ffi::PyNumber_Index(obj.as_ptr());
        if ptr.is_null() {
            let reason = PyErr::fetch(obj.py()).value(obj.py()).to_string();
            return Err(PyTypeError::new_err(format!(
                "task {position}: {field} must be an int: {reason}"
            )));
        }
        Bound::from_owned_ptr(obj.py(), ptr)
    };
    match exact.extract::<i128>() {
        Ok(v) => Ok(v),
        Err(_) if exact.gt(0)? => Ok(i128::MAX),
        Err(_) => Ok(i128::MIN),
    }
}

fn unicode_checked<'py>(
    obj: &Bound<'py, PyAny>,
    position: usize,
    field: &str,
) -> PyResult<Bound<'py, PyString>> {
    let Ok(s) = obj.downcast::<PyString>() else {
        return Err(PyTypeError::new_err(format!(
            "task {position}: {field} must be str, got {}",
            type_name(obj)
        )));
    };
    if s.to_str().is_err() {
        return Err(crate::plain_core_err(
            obj.py(),
            format!("task {position}: {field} is not valid Unicode (it contains a lone surrogate)"),
            Some(position),
        ));
    }
    Ok(s.clone())
}

fn extract_specs<'py>(tasks: &Bound<'py, PyAny>) -> PyResult<Vec<SpecObjs<'py>>> {
    let mut specs = Vec::new();
    for (position, item) in tasks.try_iter()?.enumerate() {
        let item = item?;
        let Ok(tuple) = item.downcast::<PyTuple>() else {
            return Err(PyTypeError::new_err(format!(
                "task {position}: expected a (mode, run_id, dep_slugs, task_index) tuple, got {}",
                type_name(&item)
            )));
        };
        if tuple.len() != 4 {
            return Err(PyTypeError::new_err(format!(
                "task {position}: expected a (mode, run_id, dep_slugs, task_index) tuple, got {} \
                 items",
                tuple.len()
            )));
        }
        let mode = index_value(&tuple.get_item(0)?, position, "mode")?;
        let run_id = unicode_checked(&tuple.get_item(1)?, position, "run_id")?;
        let dep_list = tuple.get_item(2)?;
        let slugs: Vec<Bound<'py, PyAny>> = if let Ok(list) = dep_list.downcast::<PyList>() {
            list.iter().collect()
        } else if let Ok(t) = dep_list.downcast::<PyTuple>() {
            t.iter().collect()
        } else {
            return Err(PyTypeError::new_err(format!(
                "task {position}: dep_slugs must be a list or tuple of str, got {}",
                type_name(&dep_list)
            )));
        };
        let deps = slugs
            .iter()
            .enumerate()
            .map(|(j, slug)| unicode_checked(slug, position, &format!("dep_slugs[{j}]")))
            .collect::<PyResult<Vec<_>>>()?;
        let index = index_value(&tuple.get_item(3)?, position, "task_index")?;
        specs.push(SpecObjs {
            mode,
            run_id,
            deps,
            index,
        });
    }
    Ok(specs)
}

/// Looks up each needed blob: `None` when absent (or None). Non-dict mappings go through
/// their `.get`, exactly like the twin.
fn lookup_blobs<'py>(
    blobs: &Bound<'py, PyAny>,
    keys: &[Key<'_>],
) -> PyResult<Vec<Option<Bound<'py, PyString>>>> {
    let py = blobs.py();
    let exact_dict = blobs.downcast_exact::<PyDict>().ok();
    let getter = match exact_dict {
        Some(_) => None,
        None if keys.is_empty() => None,
        None => Some(blobs.getattr("get")?),
    };
    let mut key_text = String::new();
    keys.iter()
        .map(|&(run_id, slug)| {
            key_text.clear();
            key_text.push_str(run_id);
            key_text.push(':');
            key_text.push_str(slug);
            let key = PyString::new(py, &key_text);
            let value = match (&exact_dict, &getter) {
                (Some(d), _) => d.get_item(key)?,
                (None, Some(get)) => Some(get.call1((key,))?),
                (None, None) => None,
            };
            match value {
                None => Ok(None),
                Some(v) if v.is_none() => Ok(None),
                Some(v) => match v.downcast::<PyString>() {
                    Ok(s) => Ok(Some(s.clone())),
                    Err(_) => Err(PyTypeError::new_err(format!(
                        "blob '{key_text}' must be str (JSON text), got {}",
                        type_name(&v)
                    ))),
                },
            }
        })
        .collect()
}

fn blob_texts<'a>(found: &'a [Option<Bound<'_, PyString>>]) -> Vec<BlobText<'a>> {
    found
        .iter()
        .map(|v| match v {
            None => BlobText::Missing,
            Some(s) => s.to_str().map_or(BlobText::NotUnicode, BlobText::Text),
        })
        .collect()
}

fn total_len(texts: &[BlobText<'_>]) -> usize {
    texts
        .iter()
        .map(|t| match t {
            BlobText::Text(s) => s.len(),
            _ => 0,
        })
        .sum()
}

fn borrow_specs<'s>(objs: &'s [SpecObjs<'_>]) -> Vec<Spec<'s>> {
    objs.iter()
        .map(|o| Spec {
            mode: o.mode,
            // Checked by `unicode_checked` while extracting.
            run_id: o.run_id.to_str().unwrap_or(""),
            deps: o.deps.iter().map(|d| d.to_str().unwrap_or("")).collect(),
            index: o.index,
        })
        .collect()
}

/// Raw JSON input (bytes) per task.
#[pyfunction]
pub(crate) fn assemble_inputs<'py>(
    py: Python<'py>,
    tasks: &Bound<'py, PyAny>,
    blobs: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyList>> {
    let objs = extract_specs(tasks)?;
    let specs = borrow_specs(&objs);
    let plan = Plan::new(&specs);
    let found = lookup_blobs(blobs, &plan.keys)?;
    let texts = blob_texts(&found);
    let assembled = if total_len(&texts) >= RELEASE_GIL_BYTES {
        py.allow_threads(|| assemble::assemble_raw(&plan, &texts))
    } else {
        assemble::assemble_raw(&plan, &texts)
    };
    let raws = assembled.map_err(|e| crate::core_err(py, e))?;
    let list = PyList::empty(py);
    for raw in &raws {
        list.append(PyBytes::new(py, raw.as_bytes()))?;
    }
    Ok(list)
}

/// Each task's input as Python values, in one pass.
#[pyfunction]
pub(crate) fn assemble_and_decode<'py>(
    py: Python<'py>,
    tasks: &Bound<'py, PyAny>,
    blobs: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyList>> {
    let objs = extract_specs(tasks)?;
    let specs = borrow_specs(&objs);
    let plan = Plan::new(&specs);
    let found = lookup_blobs(blobs, &plan.keys)?;
    let texts = blob_texts(&found);
    let scanned = if total_len(&texts) >= RELEASE_GIL_BYTES {
        py.allow_threads(|| assemble::assemble_tapes(&plan, &texts))
    } else {
        assemble::assemble_tapes(&plan, &texts)
    };
    let batch = scanned.map_err(|e| crate::core_err(py, e))?;
    let src_of = |blob: usize| -> &[u8] {
        match texts[blob] {
            BlobText::Text(t) => t.as_bytes(),
            _ => unreachable!("tapes exist only for present blobs"),
        }
    };
    let _gc_pause = GcPause::new(py);
    let mut builder = Builder::new(py);
    let list = PyList::empty(py);
    for task in &batch.tasks {
        let value = match task {
            TaskTape::Blob(blob) => {
                let tape = batch.blob_tapes[*blob].as_ref().expect("tape built");
                builder.document(tape, src_of(*blob))?
            }
            TaskTape::Element {
                tape,
                blob,
                start,
                end,
            } => builder.document(tape, &src_of(*blob)[*start as usize..*end as usize])?,
            TaskTape::Deps(deps) => {
                let dict = PyDict::new(py);
                for &(slug, blob) in deps {
                    let kind = if slug.is_ascii() {
                        StrKind::Ascii
                    } else {
                        StrKind::Utf8
                    };
                    // SAFETY: `key` returns a new reference, handed to a Bound that owns it.
                    let key =
                        unsafe { Bound::from_owned_ptr(py, builder.key(slug.as_bytes(), kind)?) };
                    let tape = batch.blob_tapes[blob].as_ref().expect("tape built");
                    dict.set_item(key, builder.document(tape, src_of(blob))?)?;
                }
                dict.into_any()
            }
        };
        list.append(value)?;
    }
    Ok(list)
}
