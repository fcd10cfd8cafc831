//! Building each task's handler input from the batch's blobs, without Python.
//!
//! A call goes through three steps: [`Plan::new`] reads the task specs and lists the distinct
//! blob keys they need; the caller looks those keys up (in Python) and hands back a
//! [`BlobText`] per key; then [`assemble_raw`] or [`assemble_tapes`] walks the tasks in order,
//! validating each blob once and scanning each map parent array once, and stops at the first
//! failing task so that both implementations report the same error.
use crate::error::CoreError;
use crate::hashing::FxHashMap;
use crate::json_scan::{self, ArrayIndex, ArrayScan, JsonError, MAX_DEPTH};
use crate::json_write;
use crate::tape::{self, Tape};

pub const MODE_FLOW_INPUT: i128 = 0;
pub const MODE_DEPS: i128 = 1;
pub const MODE_MAP: i128 = 2;

/// One task spec as the caller gave it: `(mode, run_id, dep_slugs, task_index)`.
#[derive(Debug, Clone)]
pub struct Spec<'s> {
    pub mode: i128,
    pub run_id: &'s str,
    pub deps: Vec<&'s str>,
    pub index: i128,
}

/// A blob key: the run id and a step slug, or an empty slug for the run input.
pub type Key<'s> = (&'s str, &'s str);

pub fn key_text(key: Key<'_>) -> String {
    format!("{}:{}", key.0, key.1)
}

#[derive(Debug, Clone)]
pub enum TaskPlan<'s> {
    FlowInput { blob: usize },
    Deps { deps: Vec<(&'s str, usize)> },
    Map { blob: usize, index: i128 },
    UnknownMode(i128),
}

/// The tasks of one call, with blob keys deduplicated.
#[derive(Debug, Clone)]
pub struct Plan<'s> {
    pub keys: Vec<Key<'s>>,
    pub tasks: Vec<TaskPlan<'s>>,
}

impl<'s> Plan<'s> {
    pub fn new(specs: &[Spec<'s>]) -> Self {
        let mut ids: FxHashMap<Key<'s>, usize> = FxHashMap::default();
        let mut keys: Vec<Key<'s>> = Vec::new();
        let mut intern = |key: Key<'s>| {
            *ids.entry(key).or_insert_with(|| {
                keys.push(key);
                keys.len() - 1
            })
        };
        let tasks = specs
            .iter()
            .map(|spec| match spec.mode {
                MODE_FLOW_INPUT => TaskPlan::FlowInput {
                    blob: intern((spec.run_id, "")),
                },
                MODE_DEPS => TaskPlan::Deps {
                    deps: spec
                        .deps
                        .iter()
                        .map(|&slug| (slug, intern((spec.run_id, slug))))
                        .collect(),
                },
                MODE_MAP => TaskPlan::Map {
                    blob: intern((spec.run_id, spec.deps.first().copied().unwrap_or(""))),
                    index: spec.index,
                },
                other => TaskPlan::UnknownMode(other),
            })
            .collect();
        Plan { keys, tasks }
    }
}

/// What the caller found under a blob key.
#[derive(Debug, Clone, Copy)]
pub enum BlobText<'a> {
    Missing,
    /// A `str` that cannot be UTF-8 (it holds a lone surrogate).
    NotUnicode,
    Text(&'a str),
}

/// A task's raw input: a slice of one blob, or a newly built dependency object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Raw<'a> {
    Text(&'a str),
    Owned(Vec<u8>),
}

impl Raw<'_> {
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Raw::Text(t) => t.as_bytes(),
            Raw::Owned(v) => v,
        }
    }
}

/// Per-call memo of blob checks, so each blob is validated and each array indexed once.
struct Blobs<'p, 'a> {
    keys: &'p [Key<'p>],
    texts: &'p [BlobText<'a>],
    depths: Vec<Option<usize>>,
    arrays: Vec<Option<ArrayScan>>,
}

impl<'p, 'a> Blobs<'p, 'a> {
    fn new(keys: &'p [Key<'p>], texts: &'p [BlobText<'a>]) -> Self {
        Blobs {
            keys,
            texts,
            depths: vec![None; texts.len()],
            arrays: vec![None; texts.len()],
        }
    }

    fn invalid(&self, position: usize, blob: usize, error: JsonError) -> CoreError {
        CoreError::InvalidJson {
            position: Some(position),
            subject: format!("task {position}: blob '{}'", key_text(self.keys[blob])),
            error,
        }
    }

    /// The text of a blob that must be present.
    fn required(
        &self,
        position: usize,
        blob: usize,
        role: &'static str,
    ) -> Result<&'a str, CoreError> {
        match self.texts[blob] {
            BlobText::Text(t) => Ok(t),
            BlobText::Missing => Err(CoreError::MissingBlob {
                position,
                key: key_text(self.keys[blob]),
                role,
            }),
            BlobText::NotUnicode => Err(self.not_unicode(position, blob)),
        }
    }

    fn not_unicode(&self, position: usize, blob: usize) -> CoreError {
        CoreError::BlobNotUnicode {
            position,
            key: key_text(self.keys[blob]),
        }
    }

    /// Validates a present blob (once) and returns its nesting depth.
    fn depth(&mut self, position: usize, blob: usize, text: &str) -> Result<usize, CoreError> {
        if let Some(d) = self.depths[blob] {
            return Ok(d);
        }
        let d = json_scan::validate(text).map_err(|e| self.invalid(position, blob, e))?;
        self.depths[blob] = Some(d);
        Ok(d)
    }

    /// The element spans of a map parent (scanned once), or the task's error.
    fn array(&mut self, position: usize, blob: usize) -> Result<(&'a str, &ArrayIndex), CoreError> {
        let text = self.required(position, blob, "map parent")?;
        if self.arrays[blob].is_none() {
            let scan = json_scan::index_array(text).map_err(|e| self.invalid(position, blob, e))?;
            self.arrays[blob] = Some(scan);
        }
        match self.arrays[blob].as_ref() {
            Some(ArrayScan::Array(index)) => Ok((text, index)),
            Some(ArrayScan::NotArray(found)) => Err(CoreError::NotAnArray {
                position,
                key: key_text(self.keys[blob]),
                found,
            }),
            None => unreachable!("array scan stored above"),
        }
    }

    /// The element span a map task selects.
    fn element(
        &mut self,
        position: usize,
        blob: usize,
        index: i128,
    ) -> Result<(&'a str, u32, u32), CoreError> {
        let key = self.keys[blob];
        let (text, array) = self.array(position, blob)?;
        let len = array.spans.len();
        if index < 0 || index >= len as i128 {
            return Err(CoreError::ElementOutOfRange {
                position,
                key: key_text(key),
                index,
                len,
            });
        }
        let (start, end) = array.spans[index as usize];
        Ok((text, start, end))
    }

    /// The text of a dependency blob, `None` when the dependency was skipped.
    fn dependency(&mut self, position: usize, blob: usize) -> Result<Option<&'a str>, CoreError> {
        let text = match self.texts[blob] {
            BlobText::Missing => return Ok(None),
            BlobText::NotUnicode => return Err(self.not_unicode(position, blob)),
            BlobText::Text(t) => t,
        };
        let depth = self.depth(position, blob, text)?;
        if depth + 1 > MAX_DEPTH {
            return Err(CoreError::TooDeepForDeps {
                position,
                key: key_text(self.keys[blob]),
                depth,
            });
        }
        Ok(Some(text))
    }
}

/// Raw JSON input per task (dependency objects are built as `{"slug":<blob>,...}`).
pub fn assemble_raw<'a>(
    plan: &Plan<'_>,
    texts: &[BlobText<'a>],
) -> Result<Vec<Raw<'a>>, CoreError> {
    let mut blobs = Blobs::new(&plan.keys, texts);
    let mut out = Vec::with_capacity(plan.tasks.len());
    for (position, task) in plan.tasks.iter().enumerate() {
        let raw = match task {
            TaskPlan::FlowInput { blob } => {
                let text = blobs.required(position, *blob, "run input")?;
                blobs.depth(position, *blob, text)?;
                Raw::Text(text)
            }
            TaskPlan::Deps { deps } => {
                let mut buf = Vec::with_capacity(2 + deps.len() * 64);
                buf.push(b'{');
                for (slug, blob) in deps {
                    if let Some(text) = blobs.dependency(position, *blob)? {
                        if buf.len() > 1 {
                            buf.push(b',');
                        }
                        json_write::write_str_any(&mut buf, slug.as_bytes());
                        buf.push(b':');
                        buf.extend_from_slice(text.as_bytes());
                    }
                }
                buf.push(b'}');
                Raw::Owned(buf)
            }
            TaskPlan::Map { blob, index } => {
                let (text, start, end) = blobs.element(position, *blob, *index)?;
                Raw::Text(&text[start as usize..end as usize])
            }
            TaskPlan::UnknownMode(mode) => {
                return Err(CoreError::UnknownMode {
                    position,
                    mode: *mode,
                })
            }
        };
        out.push(raw);
    }
    Ok(out)
}

/// Where a task's input comes from once everything is scanned.
#[derive(Debug, Clone)]
pub enum TaskTape<'s> {
    /// The whole tape of a blob (`blob_tapes[i]`).
    Blob(usize),
    /// An object of slug -> blob tape.
    Deps(Vec<(&'s str, usize)>),
    /// The tape of one map element; its offsets are relative to `text`.
    Element {
        tape: Tape,
        blob: usize,
        start: u32,
        end: u32,
    },
}

/// Everything needed to build the Python values of a call, ready for the GIL phase.
#[derive(Debug)]
pub struct TapeBatch<'s> {
    pub blob_tapes: Vec<Option<Tape>>,
    pub tasks: Vec<TaskTape<'s>>,
}

/// Validates and tokenizes what each task needs. Each blob used whole gets one tape shared by
/// all the tasks that use it (the GIL phase builds fresh Python objects per task from it).
pub fn assemble_tapes<'s>(
    plan: &Plan<'s>,
    texts: &[BlobText<'_>],
) -> Result<TapeBatch<'s>, CoreError> {
    let mut blobs = Blobs::new(&plan.keys, texts);
    let mut blob_tapes: Vec<Option<Tape>> = vec![None; texts.len()];
    let mut tasks = Vec::with_capacity(plan.tasks.len());
    let mut tape_of = |blobs: &Blobs<'_, '_>,
                       position: usize,
                       blob: usize,
                       text: &str|
     -> Result<usize, CoreError> {
        if blob_tapes[blob].is_none() {
            let t = tape::build(text).map_err(|e| blobs.invalid(position, blob, e))?;
            blob_tapes[blob] = Some(t);
        }
        Ok(blob_tapes[blob].as_ref().map_or(0, |t| t.depth))
    };
    for (position, task) in plan.tasks.iter().enumerate() {
        let planned = match task {
            TaskPlan::FlowInput { blob } => {
                let text = blobs.required(position, *blob, "run input")?;
                tape_of(&blobs, position, *blob, text)?;
                TaskTape::Blob(*blob)
            }
            TaskPlan::Deps { deps } => {
                let mut present = Vec::with_capacity(deps.len());
                for &(slug, blob) in deps {
                    let text = match texts[blob] {
                        BlobText::Missing => continue,
                        BlobText::NotUnicode => return Err(blobs.not_unicode(position, blob)),
                        BlobText::Text(t) => t,
                    };
                    let depth = tape_of(&blobs, position, blob, text)?;
                    if depth + 1 > MAX_DEPTH {
                        return Err(CoreError::TooDeepForDeps {
                            position,
                            key: key_text(plan.keys[blob]),
                            depth,
                        });
                    }
                    present.push((slug, blob));
                }
                TaskTape::Deps(present)
            }
            TaskPlan::Map { blob, index } => {
                let (text, start, end) = blobs.element(position, *blob, *index)?;
                let element = &text[start as usize..end as usize];
                // The parent array was validated in full, so its elements are valid too.
                let tape = tape::build(element).map_err(|e| blobs.invalid(position, *blob, e))?;
                TaskTape::Element {
                    tape,
                    blob: *blob,
                    start,
                    end,
                }
            }
            TaskPlan::UnknownMode(mode) => {
                return Err(CoreError::UnknownMode {
                    position,
                    mode: *mode,
                })
            }
        };
        tasks.push(planned);
    }
    Ok(TapeBatch { blob_tapes, tasks })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn spec<'s>(mode: i128, run: &'s str, deps: &[&'s str], index: i128) -> Spec<'s> {
        Spec {
            mode,
            run_id: run,
            deps: deps.to_vec(),
            index,
        }
    }

    fn run<'a>(
        specs: &[Spec<'a>],
        blobs: &'a HashMap<String, String>,
    ) -> Result<Vec<String>, CoreError> {
        let plan = Plan::new(specs);
        let texts: Vec<BlobText<'_>> = plan
            .keys
            .iter()
            .map(|k| match blobs.get(&key_text(*k)) {
                Some(t) => BlobText::Text(t.as_str()),
                None => BlobText::Missing,
            })
            .collect();
        let raws = assemble_raw(&plan, &texts)?;
        // The tape path must accept exactly what the raw path accepts.
        assemble_tapes(&plan, &texts).expect("tape path agrees with raw path");
        Ok(raws
            .iter()
            .map(|r| String::from_utf8(r.as_bytes().to_vec()).unwrap())
            .collect())
    }

    fn blobs(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn assembles_every_mode() {
        let b = blobs(&[
            ("r1:", r#"{"x": 1}"#),
            ("r1:a", r#"[10, {"y": 2}, "z"]"#),
            ("r1:b", "true"),
            ("r2:", "[5, 6]"),
        ]);
        let specs = [
            spec(MODE_FLOW_INPUT, "r1", &[], 0),
            spec(MODE_DEPS, "r1", &["a", "missing", "b"], 0),
            spec(MODE_DEPS, "r1", &[], 0),
            spec(MODE_MAP, "r1", &["a"], 1),
            spec(MODE_MAP, "r2", &[], 0),
        ];
        let got = run(&specs, &b).unwrap();
        assert_eq!(
            got,
            vec![
                r#"{"x": 1}"#,
                r#"{"a":[10, {"y": 2}, "z"],"b":true}"#,
                "{}",
                r#"{"y": 2}"#,
                "5",
            ]
        );
    }

    #[test]
    fn reports_the_first_failing_task() {
        let b = blobs(&[("r:", "{}"), ("r:bad", "[1,"), ("r:obj", "{}")]);
        let err = run(
            &[
                spec(MODE_MAP, "r", &["obj"], 0),
                spec(MODE_DEPS, "r", &["bad"], 0),
            ],
            &b,
        )
        .unwrap_err();
        assert_eq!(err.class_name(), "NotAnArray");
        let err = run(
            &[spec(MODE_DEPS, "r", &["bad"], 0), spec(7, "r", &[], 0)],
            &b,
        )
        .unwrap_err();
        assert_eq!(err.class_name(), "InvalidJson");
        assert_eq!(err.position(), Some(0));
        let err = run(&[spec(MODE_FLOW_INPUT, "q", &[], 0)], &b).unwrap_err();
        assert_eq!(err.class_name(), "MissingBlob");
        let err = run(&[spec(MODE_MAP, "r", &["x"], 0)], &b).unwrap_err();
        assert_eq!(err.class_name(), "MissingBlob");
        let err = run(&[spec(3, "r", &[], 0)], &b).unwrap_err();
        assert_eq!(err.class_name(), "CoreError");
    }

    #[test]
    fn map_index_bounds() {
        let b = blobs(&[("r:", "[1, 2]")]);
        assert_eq!(run(&[spec(MODE_MAP, "r", &[], 1)], &b).unwrap(), vec!["2"]);
        for index in [-1, 2, i128::MAX] {
            let err = run(&[spec(MODE_MAP, "r", &[], index)], &b).unwrap_err();
            assert_eq!(err.class_name(), "ElementOutOfRange");
        }
    }

    #[test]
    fn deps_wrapper_counts_toward_the_depth_limit() {
        let deep = "[".repeat(MAX_DEPTH) + &"]".repeat(MAX_DEPTH);
        let b = blobs(&[("r:", &deep), ("r:s", &deep)]);
        assert!(run(&[spec(MODE_FLOW_INPUT, "r", &[], 0)], &b).is_ok());
        let err = run(&[spec(MODE_DEPS, "r", &["s"], 0)], &b).unwrap_err();
        assert_eq!(err.class_name(), "InvalidJson");
    }

    #[test]
    fn slugs_are_escaped_as_keys() {
        let b = blobs(&[("r:a\"b", "1")]);
        let got = run(&[spec(MODE_DEPS, "r", &["a\"b"], 0)], &b).unwrap();
        assert_eq!(got, vec![r#"{"a\"b":1}"#]);
    }
}
