//! The Python functions of `pgflow._core`: a claimed batch's handler inputs, built from the blobs
//! the claim sent (each run input and dependency output once per batch), decoded by jiter.
//!
//! Per call: each blob used by one task is parsed straight to Python objects; a blob used by
//! several tasks is parsed once and each task gets fresh objects built from that parse; a map
//! parent is skipped over once to index its elements, and each task parses only its element.
//! Large texts are read without the GIL.
use std::collections::HashMap;

use jiter::{JsonValue, PythonParse, StringCacheMode};
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyString};

use crate::error::CoreError;
use crate::plan::{
    blob_key, index_array, map_parent_key, trim, write_deps_object, ArrayIndex, IndexError, Mode,
};
use crate::python::core_err;

/// Texts at least this long are read with the GIL released, so other threads run meanwhile.
const GIL_FREE_LEN: usize = 256 * 1024;

const PARSER: PythonParse = PythonParse {
    allow_inf_nan: false,
    cache_mode: StringCacheMode::All,
    partial_mode: jiter::PartialMode::Off,
    catch_duplicate_keys: false,
    float_mode: jiter::FloatMode::Float,
};

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
                "task {position}: expected (mode, run_id, dep_slugs, task_index), got {}",
                item.get_type()
                    .name()
                    .map_or_else(|_| "?".into(), |n| n.to_string())
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

/// The blobs dict as borrowed text, keyed by blob key.
fn borrow_blobs<'a>(
    pairs: &'a [(Bound<'_, PyString>, Bound<'_, PyString>)],
) -> PyResult<HashMap<&'a str, &'a str>> {
    pairs
        .iter()
        .map(|(k, v)| Ok((k.to_str()?, v.to_str()?)))
        .collect()
}

fn blob_pairs<'py>(
    blobs: &Bound<'py, PyDict>,
) -> PyResult<Vec<(Bound<'py, PyString>, Bound<'py, PyString>)>> {
    blobs
        .iter()
        .map(|(k, v)| {
            let text = |o: Bound<'py, PyAny>| {
                o.cast_into::<PyString>()
                    .map_err(|_| PyTypeError::new_err("blob keys and values must be str"))
            };
            Ok((text(k)?, text(v)?))
        })
        .collect()
}

/// How many tasks of the batch read each blob.
fn blob_uses(specs: &[Spec<'_>]) -> HashMap<String, usize> {
    let mut uses = HashMap::new();
    for spec in specs {
        match Mode::from_code(spec.mode, 0).unwrap_or(Mode::Map) {
            Mode::FlowInput => *uses.entry(blob_key(spec.run_id, "")).or_default() += 1,
            Mode::Deps => {
                for dep in &spec.deps {
                    *uses.entry(blob_key(spec.run_id, dep)).or_default() += 1;
                }
            }
            Mode::Map => {}
        }
    }
    uses
}

/// Builds handler inputs task by task, parsing and indexing each blob once.
struct Builder<'a, 'py> {
    py: Python<'py>,
    blobs: &'a HashMap<&'a str, &'a str>,
    uses: HashMap<String, usize>,
    shared: HashMap<String, JsonValue<'a>>,
    indexes: HashMap<String, ArrayIndex>,
}

impl<'a, 'py> Builder<'a, 'py> {
    fn invalid(position: usize, key: &str, detail: String) -> CoreError {
        CoreError::InvalidJson {
            position,
            subject: format!("blob '{key}'"),
            detail,
        }
    }

    /// A blob as fresh Python objects: parsed directly when only this task reads it, else built
    /// from the one parse every task of the batch shares.
    fn value(&mut self, key: &str, text: &'a str, position: usize) -> PyResult<Bound<'py, PyAny>> {
        let py = self.py;
        if self.uses.get(key).copied().unwrap_or(0) <= 1 {
            return PARSER.python_parse(py, text.as_bytes()).map_err(|e| {
                core_err(
                    py,
                    Self::invalid(position, key, e.description(text.as_bytes())),
                )
            });
        }
        if !self.shared.contains_key(key) {
            let parse = || JsonValue::parse(text.as_bytes(), false);
            let parsed = if text.len() >= GIL_FREE_LEN {
                py.detach(parse)
            } else {
                parse()
            };
            let parsed = parsed.map_err(|e| {
                core_err(
                    py,
                    Self::invalid(position, key, e.description(text.as_bytes())),
                )
            })?;
            self.shared.insert(key.to_owned(), parsed);
        }
        self.shared[key].clone().into_pyobject(py)
    }

    /// The byte range of element `index` of the map parent `key`.
    fn element(
        &mut self,
        key: &str,
        text: &str,
        index: i64,
        position: usize,
    ) -> PyResult<(usize, usize)> {
        let py = self.py;
        if !self.indexes.contains_key(key) {
            let build = || index_array(text.as_bytes());
            let built = if text.len() >= GIL_FREE_LEN {
                py.detach(build)
            } else {
                build()
            };
            let built = built.map_err(|e| {
                core_err(
                    py,
                    match e {
                        IndexError::Invalid(detail) => Self::invalid(position, key, detail),
                        IndexError::NotAnArray(found) => CoreError::NotAnArray {
                            position,
                            key: key.to_owned(),
                            found,
                        },
                    },
                )
            })?;
            self.indexes.insert(key.to_owned(), built);
        }
        self.indexes[key]
            .element(index, position, key)
            .map_err(|e| core_err(py, e))
    }

    fn blob(&self, key: &str, position: usize, role: &'static str) -> PyResult<&'a str> {
        self.blobs.get(key).copied().ok_or_else(|| {
            core_err(
                self.py,
                CoreError::MissingBlob {
                    position,
                    key: key.to_owned(),
                    role,
                },
            )
        })
    }

    fn mode(&self, spec: &Spec<'_>, position: usize) -> PyResult<Mode> {
        Mode::from_code(spec.mode, position).map_err(|e| core_err(self.py, e))
    }

    fn decoded(&mut self, spec: &Spec<'_>, position: usize) -> PyResult<Bound<'py, PyAny>> {
        match self.mode(spec, position)? {
            Mode::FlowInput => {
                let key = blob_key(spec.run_id, "");
                let text = self.blob(&key, position, "run input")?;
                self.value(&key, text, position)
            }
            Mode::Deps => {
                let object = PyDict::new(self.py);
                for dep in &spec.deps {
                    let key = blob_key(spec.run_id, dep);
                    // an absent blob is a skipped dependency: left out of the input
                    if let Some(text) = self.blobs.get(key.as_str()).copied() {
                        object.set_item(*dep, self.value(&key, text, position)?)?;
                    }
                }
                Ok(object.into_any())
            }
            Mode::Map => {
                let key = map_parent_key(spec.run_id, &spec.deps);
                let text = self.blob(&key, position, "map parent")?;
                let (start, end) = self.element(&key, text, spec.index, position)?;
                let element = &text.as_bytes()[start..end];
                PARSER.python_parse(self.py, element).map_err(|e| {
                    core_err(
                        self.py,
                        Self::invalid(position, &key, e.description(element)),
                    )
                })
            }
        }
    }

    fn raw(&mut self, spec: &Spec<'_>, position: usize) -> PyResult<Vec<u8>> {
        match self.mode(spec, position)? {
            Mode::FlowInput => {
                let key = blob_key(spec.run_id, "");
                Ok(trim(self.blob(&key, position, "run input")?.as_bytes()).to_vec())
            }
            Mode::Deps => {
                let found: Vec<(&str, Option<&[u8]>)> = spec
                    .deps
                    .iter()
                    .map(|dep| {
                        let key = blob_key(spec.run_id, dep);
                        (*dep, self.blobs.get(key.as_str()).map(|t| t.as_bytes()))
                    })
                    .collect();
                let mut out = Vec::new();
                write_deps_object(&found, &mut out);
                Ok(out)
            }
            Mode::Map => {
                let key = map_parent_key(spec.run_id, &spec.deps);
                let text = self.blob(&key, position, "map parent")?;
                let (start, end) = self.element(&key, text, spec.index, position)?;
                Ok(text.as_bytes()[start..end].to_vec())
            }
        }
    }
}

fn with_builder<'py, T>(
    tasks: &Bound<'py, PyAny>,
    blobs: &Bound<'py, PyDict>,
    mut each: impl FnMut(&mut Builder<'_, 'py>, &Spec<'_>, usize) -> PyResult<T>,
) -> PyResult<Vec<T>> {
    let py = tasks.py();
    let objects = spec_objects(tasks)?;
    let specs = borrow_specs(&objects)?;
    let pairs = blob_pairs(blobs)?;
    let texts = borrow_blobs(&pairs)?;
    let mut builder = Builder {
        py,
        blobs: &texts,
        uses: blob_uses(&specs),
        shared: HashMap::new(),
        indexes: HashMap::new(),
    };
    specs
        .iter()
        .enumerate()
        .map(|(position, spec)| each(&mut builder, spec, position))
        .collect()
}

/// The handler input of each task, as Python values; tasks never share objects.
#[pyfunction]
pub fn assemble_and_decode<'py>(
    tasks: &Bound<'py, PyAny>,
    blobs: &Bound<'py, PyDict>,
) -> PyResult<Bound<'py, PyList>> {
    let values = with_builder(tasks, blobs, |b, spec, position| b.decoded(spec, position))?;
    PyList::new(tasks.py(), values)
}

/// The handler input of each task as raw JSON (for typed handlers, decoded by msgspec).
#[pyfunction]
pub fn assemble_inputs<'py>(
    tasks: &Bound<'py, PyAny>,
    blobs: &Bound<'py, PyDict>,
) -> PyResult<Bound<'py, PyList>> {
    let py = tasks.py();
    let raws = with_builder(tasks, blobs, |b, spec, position| b.raw(spec, position))?;
    PyList::new(py, raws.iter().map(|r| PyBytes::new(py, r)))
}

/// Each JSON text (bytes or str) decoded to Python values.
#[pyfunction]
pub fn decode_many<'py>(raws: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyList>> {
    let py = raws.py();
    let mut values = Vec::new();
    for (position, raw) in raws.try_iter()?.enumerate() {
        let raw = raw?;
        let parsed = if let Ok(text) = raw.cast::<PyString>() {
            let text = text.to_str()?;
            PARSER
                .python_parse(py, text.as_bytes())
                .map_err(|e| (e.description(text.as_bytes()), position))
        } else if let Ok(bytes) = raw.cast::<PyBytes>() {
            let bytes = bytes.as_bytes();
            PARSER
                .python_parse(py, bytes)
                .map_err(|e| (e.description(bytes), position))
        } else {
            return Err(PyTypeError::new_err(format!(
                "item {position}: expected bytes or str"
            )));
        };
        values.push(parsed.map_err(|(detail, position)| {
            core_err(
                py,
                CoreError::InvalidJson {
                    position,
                    subject: format!("item {position}"),
                    detail,
                },
            )
        })?);
    }
    PyList::new(py, values)
}
