//! The Python function of `pgflow._core`: a claimed batch's handler inputs as raw JSON, built from
//! the blobs the claim sent (each run input and dependency output once per batch).
//!
//! Only what no library does is here: the planning. A map parent is skipped over once (jiter) to
//! index its elements, and each task gets a slice of it; a dependency object is written from the
//! raw outputs; a run input passes as it is. All of it runs without the GIL. Decoding the raw
//! inputs is msgspec's job (`pgflow.codec`): it builds Python objects faster than jiter does
//! here (benches/bench_core.py), and decodes typed inputs straight into their types.
use std::collections::HashMap;

use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyString};

/// A blob's text: `str` as the database driver returns text, or `bytes` when the driver was
/// asked for the raw bytes (no decoding and re-encoding of UTF-8 on the way).
enum Text<'py> {
    Str(Bound<'py, PyString>),
    Bytes(Bound<'py, PyBytes>),
}

impl Text<'_> {
    fn bytes(&self) -> PyResult<&[u8]> {
        match self {
            Text::Str(s) => Ok(s.to_str()?.as_bytes()),
            Text::Bytes(b) => Ok(b.as_bytes()),
        }
    }
}

use crate::error::CoreError;
use crate::plan::{
    blob_key, index_array, map_parent_key, trim, write_deps_object, ArrayIndex, IndexError, Mode,
};
use crate::python::core_err;

/// One task spec, borrowed from the caller's objects.
struct Spec<'a> {
    mode: i64,
    run_id: &'a str,
    deps: Vec<&'a str>,
    index: i64,
}

/// The Python objects the specs borrow from, kept alive for the call.
struct SpecObjects<'py> {
    mode: i64,
    run_id: Bound<'py, PyString>,
    deps: Vec<Bound<'py, PyString>>,
    index: i64,
}

fn spec_objects<'py>(tasks: &Bound<'py, PyAny>) -> PyResult<Vec<SpecObjects<'py>>> {
    let mut specs = Vec::new();
    for (position, item) in tasks.try_iter()?.enumerate() {
        let item = item?;
        let malformed = || {
            PyTypeError::new_err(format!(
                "task {position}: expected (mode, run_id, dep_slugs, task_index)"
            ))
        };
        let (mode, run_id, deps, index): (i64, Bound<'py, PyAny>, Bound<'py, PyAny>, i64) =
            item.extract().map_err(|_| malformed())?;
        let run_id = run_id.cast_into::<PyString>().map_err(|_| malformed())?;
        let deps = deps
            .try_iter()
            .map_err(|_| malformed())?
            .map(|d| d.and_then(|d| Ok(d.cast_into::<PyString>()?)))
            .collect::<PyResult<Vec<_>>>()
            .map_err(|_| malformed())?;
        specs.push(SpecObjects {
            mode,
            run_id,
            deps,
            index,
        });
    }
    Ok(specs)
}

fn borrow_specs<'a>(objects: &'a [SpecObjects<'_>]) -> PyResult<Vec<Spec<'a>>> {
    objects
        .iter()
        .map(|o| {
            Ok(Spec {
                mode: o.mode,
                run_id: o.run_id.to_str()?,
                deps: o.deps.iter().map(|d| d.to_str()).collect::<PyResult<_>>()?,
                index: o.index,
            })
        })
        .collect()
}

fn blob_pairs<'py>(blobs: &Bound<'py, PyDict>) -> PyResult<Vec<(Bound<'py, PyString>, Text<'py>)>> {
    let wrong = || PyTypeError::new_err("blob keys must be str, and values str or bytes");
    blobs
        .iter()
        .map(|(k, v)| {
            let key = k.cast_into::<PyString>().map_err(|_| wrong())?;
            let text = match v.cast_into::<PyBytes>() {
                Ok(b) => Text::Bytes(b),
                Err(e) => Text::Str(
                    e.into_inner()
                        .cast_into::<PyString>()
                        .map_err(|_| wrong())?,
                ),
            };
            Ok((key, text))
        })
        .collect()
}

/// Blobs by (run id, step slug): a key `run_id:step` splits at its first ':' (run ids have
/// none), so lookups need no key to be built.
type BlobMap<'a> = HashMap<(&'a str, &'a str), &'a [u8]>;

/// Builds each task's raw input into one buffer, indexing each map parent once.
struct Builder<'a> {
    blobs: BlobMap<'a>,
    indexes: HashMap<String, ArrayIndex>,
    out: Vec<u8>,
}

impl<'a> Builder<'a> {
    fn blob(
        &self,
        run_id: &str,
        step: &str,
        position: usize,
        role: &'static str,
    ) -> Result<&'a [u8], CoreError> {
        self.blobs
            .get(&(run_id, step))
            .copied()
            .ok_or_else(|| CoreError::MissingBlob {
                position,
                key: blob_key(run_id, step),
                role,
            })
    }

    /// Appends the task's raw input to `out`.
    fn raw(&mut self, spec: &Spec<'_>, position: usize) -> Result<(), CoreError> {
        match Mode::from_code(spec.mode, position)? {
            Mode::FlowInput => {
                let text = self.blob(spec.run_id, "", position, "run input")?;
                self.out.extend_from_slice(trim(text));
            }
            Mode::Deps => {
                let found: Vec<(&str, Option<&[u8]>)> = spec
                    .deps
                    .iter()
                    .map(|dep| (*dep, self.blobs.get(&(spec.run_id, *dep)).copied()))
                    .collect();
                write_deps_object(&found, &mut self.out);
            }
            Mode::Map => {
                let key = map_parent_key(spec.run_id, &spec.deps);
                let step = spec.deps.first().copied().unwrap_or("");
                let text = self.blob(spec.run_id, step, position, "map parent")?;
                if !self.indexes.contains_key(&key) {
                    let index = index_array(text).map_err(|e| match e {
                        IndexError::Invalid(detail) => CoreError::InvalidJson {
                            position,
                            subject: format!("blob '{key}'"),
                            detail,
                        },
                        IndexError::NotAnArray(found) => CoreError::NotAnArray {
                            position,
                            key: key.clone(),
                            found,
                        },
                    })?;
                    self.indexes.insert(key.clone(), index);
                }
                let (start, end) = self.indexes[&key].element(spec.index, position, &key)?;
                self.out.extend_from_slice(&text[start..end]);
            }
        }
        Ok(())
    }
}

/// The handler input of each task as raw JSON. Tasks are built in order; the first that
/// cannot be built raises (`MissingBlob`, `InvalidJson` or `NotAnArray` for a map parent,
/// `ElementOutOfRange`, `CoreError` for an unknown mode).
#[pyfunction]
pub fn assemble_inputs<'py>(
    tasks: &Bound<'py, PyAny>,
    blobs: &Bound<'py, PyDict>,
) -> PyResult<Bound<'py, PyList>> {
    let py = tasks.py();
    let objects = spec_objects(tasks)?;
    let specs = borrow_specs(&objects)?;
    let pairs = blob_pairs(blobs)?;
    let texts = pairs
        .iter()
        .map(|(k, v)| {
            let key = k.to_str()?;
            Ok((key.split_once(':').unwrap_or((key, "")), v.bytes()?))
        })
        .collect::<PyResult<BlobMap<'_>>>()?;
    // the texts stay alive (and unchanged: str and bytes are immutable) without the GIL
    let built = py.detach(|| {
        let mut builder = Builder {
            blobs: texts,
            indexes: HashMap::new(),
            out: Vec::new(),
        };
        let mut ends = Vec::with_capacity(specs.len());
        for (position, spec) in specs.iter().enumerate() {
            builder.raw(spec, position)?;
            ends.push(builder.out.len());
        }
        Ok::<_, CoreError>((builder.out, ends))
    });
    let (out, ends) = built.map_err(|e| core_err(py, e))?;
    let mut start = 0;
    PyList::new(
        py,
        ends.into_iter().map(|end| {
            let raw = PyBytes::new(py, &out[start..end]);
            start = end;
            raw
        }),
    )
}
