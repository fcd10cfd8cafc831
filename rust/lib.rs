//! `pgflow._core`: builds a claimed batch's handler inputs, as raw JSON, from the blobs the claim
//! sent.
//!
//! What no library does is here: planning a batch (each map parent indexed once by skipping over
//! its elements, each task given its slice or its dependency object, without the GIL) and the
//! mapping of errors to `pgflow.errors`. JSON is read by jiter; msgspec decodes the result
//! (`pgflow.codec`). `plan.rs` is pure Rust (`cargo test`); the `python` feature adds the
//! bindings.
pub mod error;
pub mod plan;

#[cfg(feature = "python")]
mod bindings;

#[cfg(feature = "python")]
mod python {
    use pyo3::prelude::*;
    use pyo3::sync::PyOnceLock;
    use pyo3::types::{PyDict, PyType};

    use crate::error::CoreError;

    /// The exception classes of `pgflow.errors`, imported once. The Rust core raises these very
    /// classes, so `except InvalidJson` works the same for it and for the msgspec fallback.
    static ERRORS: PyOnceLock<Py<PyDict>> = PyOnceLock::new();

    fn class<'py>(py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyType>> {
        let classes = ERRORS.get_or_try_init(py, || -> PyResult<Py<PyDict>> {
            let module = py.import("pgflow.errors")?;
            let found = PyDict::new(py);
            for name in [
                "CoreError",
                "InvalidJson",
                "NotAnArray",
                "ElementOutOfRange",
                "MissingBlob",
            ] {
                found.set_item(name, module.getattr(name)?)?;
            }
            Ok(found.unbind())
        })?;
        Ok(classes
            .bind(py)
            .get_item(name)?
            .expect("every class is imported")
            .cast_into::<PyType>()?)
    }

    /// Converts a core error into the matching `pgflow.errors` exception.
    pub(crate) fn core_err(py: Python<'_>, error: CoreError) -> PyErr {
        let build = || -> PyResult<PyErr> {
            let kwargs = PyDict::new(py);
            kwargs.set_item("position", error.position())?;
            let instance =
                class(py, error.class_name())?.call((error.to_string(),), Some(&kwargs))?;
            Ok(PyErr::from_value(instance))
        };
        build().unwrap_or_else(|e| e)
    }

    #[pymodule]
    fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
        m.add("__version__", env!("CARGO_PKG_VERSION"))?;
        m.add("MODE_FLOW_INPUT", crate::plan::MODE_FLOW_INPUT)?;
        m.add("MODE_DEPS", crate::plan::MODE_DEPS)?;
        m.add("MODE_MAP", crate::plan::MODE_MAP)?;
        m.add("MAX_DEPTH", crate::plan::MAX_DEPTH)?;
        m.add_function(wrap_pyfunction!(crate::bindings::assemble_inputs, m)?)?;
        Ok(())
    }
}
