//! `pgflow._core`: the per-task hot path of the pgflow worker.
//!
//! The pure-Rust modules (scanning, tapes, assembly, number and string formatting) build and
//! test without Python (`cargo test`). The `python` feature adds the bindings: `decode.rs`,
//! `encode.rs` and `batch.rs`, plus the error mapping below.
pub mod assemble;
pub mod error;
pub mod hashing;
pub mod json_scan;
pub mod json_write;
pub mod numbers;
pub mod tape;

#[cfg(feature = "python")]
mod batch;
#[cfg(feature = "python")]
mod decode;
#[cfg(feature = "python")]
mod encode;

#[cfg(feature = "python")]
pub(crate) use python::{core_err, plain_core_err, unencodable_err};

#[cfg(feature = "python")]
mod python {
    use pyo3::prelude::*;
    use pyo3::sync::GILOnceCell;
    use pyo3::types::{PyDict, PyType};

    use crate::error::CoreError;

    /// The exception classes of `pgflow.errors`, imported once. The Rust core raises these
    /// very classes, so `except InvalidJson` works the same for it and for the Python twin.
    struct ErrorClasses {
        core: Py<PyType>,
        invalid_json: Py<PyType>,
        not_an_array: Py<PyType>,
        out_of_range: Py<PyType>,
        missing_blob: Py<PyType>,
        unencodable: Py<PyType>,
    }

    static ERRORS: GILOnceCell<ErrorClasses> = GILOnceCell::new();

    fn classes(py: Python<'_>) -> PyResult<&ErrorClasses> {
        ERRORS.get_or_try_init(py, || {
            let module = py.import("pgflow.errors")?;
            let get = |name: &str| -> PyResult<Py<PyType>> {
                Ok(module.getattr(name)?.downcast_into::<PyType>()?.unbind())
            };
            Ok(ErrorClasses {
                core: get("CoreError")?,
                invalid_json: get("InvalidJson")?,
                not_an_array: get("NotAnArray")?,
                out_of_range: get("ElementOutOfRange")?,
                missing_blob: get("MissingBlob")?,
                unencodable: get("UnencodableValue")?,
            })
        })
    }

    fn raise(
        py: Python<'_>,
        class: &Py<PyType>,
        message: String,
        kwargs: Bound<'_, PyDict>,
    ) -> PyErr {
        match class.bind(py).call((message,), Some(&kwargs)) {
            Ok(instance) => PyErr::from_value(instance),
            Err(e) => e,
        }
    }

    /// Converts a core error into the matching `pgflow.errors` exception.
    pub(crate) fn core_err(py: Python<'_>, error: CoreError) -> PyErr {
        let classes = match classes(py) {
            Ok(c) => c,
            Err(e) => return e,
        };
        let class = match error.class_name() {
            "InvalidJson" => &classes.invalid_json,
            "NotAnArray" => &classes.not_an_array,
            "ElementOutOfRange" => &classes.out_of_range,
            "MissingBlob" => &classes.missing_blob,
            _ => &classes.core,
        };
        let kwargs = PyDict::new(py);
        if let Err(e) = kwargs.set_item("position", error.position()) {
            return e;
        }
        raise(py, class, error.to_string(), kwargs)
    }

    /// A plain `CoreError` (a `ValueError`) for bad arguments that are not JSON problems.
    pub(crate) fn plain_core_err(
        py: Python<'_>,
        message: String,
        position: Option<usize>,
    ) -> PyErr {
        let classes = match classes(py) {
            Ok(c) => c,
            Err(e) => return e,
        };
        let kwargs = PyDict::new(py);
        if let Err(e) = kwargs.set_item("position", position) {
            return e;
        }
        raise(py, &classes.core, message, kwargs)
    }

    /// An `UnencodableValue` naming the offending type and where it sits.
    pub(crate) fn unencodable_err(
        py: Python<'_>,
        message: String,
        path: String,
        type_name: String,
        position: Option<usize>,
    ) -> PyErr {
        let classes = match classes(py) {
            Ok(c) => c,
            Err(e) => return e,
        };
        let kwargs = PyDict::new(py);
        let filled = kwargs
            .set_item("path", path)
            .and_then(|_| kwargs.set_item("type_name", type_name))
            .and_then(|_| kwargs.set_item("position", position));
        if let Err(e) = filled {
            return e;
        }
        raise(py, &classes.unencodable, message, kwargs)
    }

    #[pymodule]
    fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
        m.add("__version__", env!("CARGO_PKG_VERSION"))?;
        m.add("MODE_FLOW_INPUT", crate::assemble::MODE_FLOW_INPUT as i64)?;
        m.add("MODE_DEPS", crate::assemble::MODE_DEPS as i64)?;
        m.add("MODE_MAP", crate::assemble::MODE_MAP as i64)?;
        m.add("MAX_DEPTH", crate::json_scan::MAX_DEPTH)?;
        m.add_function(wrap_pyfunction!(crate::decode::decode_many, m)?)?;
        m.add_function(wrap_pyfunction!(crate::batch::assemble_inputs, m)?)?;
        m.add_function(wrap_pyfunction!(crate::batch::assemble_and_decode, m)?)?;
        m.add_function(wrap_pyfunction!(crate::encode::encode_outputs, m)?)?;
        m.add_function(wrap_pyfunction!(crate::encode::encode_value, m)?)?;
        Ok(())
    }
}
