//! The bounds of one evaluation: ARM's documented template limits, and bounds on the evaluator's
//! own work, so that no template can exhaust the memory, the stack or the time of the process
//! that evaluates it (a template is input from a client like any other).
//!
//! Every bound reached is an [`ArmError::Limit`](crate::ArmError::Limit) naming the template
//! field and the expression being evaluated; nothing is allocated before the bound is checked
//! where the size of a result is known in advance (`padLeft`, `concat`, `replace`, `format`,
//! `join`, `base64`, `split`).

use serde_json::Value;

use crate::functions::EvalError;

/// The bounds of one deployment's evaluation. [`Limits::default`] is what
/// [`evaluate`](crate::evaluate) applies; [`evaluate_with_limits`](crate::evaluate_with_limits)
/// takes others (fields can be set on a default value).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Limits {
    /// Bytes of template text (ARM: 4 MB).
    pub template_bytes: usize,
    /// Bytes of a parameters file's text (ARM: 4 MB).
    pub parameters_file_bytes: usize,
    /// Declared parameters (ARM: 256).
    pub parameters: usize,
    /// Declared variables (ARM: 512).
    pub variables: usize,
    /// Resources, nested child resources included (ARM: 800).
    pub resources: usize,
    /// Outputs (ARM: 64).
    pub outputs: usize,
    /// Characters of one template expression string, brackets included (ARM: 24,576).
    pub expression_chars: usize,
    /// Bytes (UTF-8) of one string that an expression produces.
    pub string_bytes: usize,
    /// Elements of one array, or properties of one object, that an expression produces.
    pub items: usize,
    /// Levels of nesting of one value that an expression produces.
    pub value_depth: usize,
    /// Levels of nesting of the evaluation itself: template JSON levels, expression calls,
    /// properties and indexes, and variables or parameters whose value uses another one. Bounds
    /// the evaluator's stack: at 256 (about 3.5 KB a level in a debug build, much less in a
    /// release build), evaluation fits in a 2 MiB thread stack (a tokio worker's) with room for
    /// its caller.
    pub nesting: usize,
    /// Bytes of JSON of one evaluated resource (ARM: 1 MB per resource definition, after
    /// expansion).
    pub resource_bytes: usize,
    /// Bytes of JSON of all evaluated resources and outputs together (ARM: 4 MB per template,
    /// after expansion).
    pub deployment_bytes: usize,
    /// The estimated memory of every value that every expression of the deployment produces,
    /// intermediate results and copies of variables included, added up.
    pub produced_bytes: u64,
    /// Evaluation steps per deployment: expression and template nodes evaluated, values compared
    /// (by `union`, `intersection`, `contains`, `indexOf`, `allowedValues`, ...), characters
    /// scanned by `split`, keys searched. A DPS template takes a few thousand; 2 million take
    /// about 0.4 s in a debug build (20 million took over 10 s under the fuzzer's sanitizer).
    pub steps: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            template_bytes: 4 << 20,
            parameters_file_bytes: 4 << 20,
            parameters: 256,
            variables: 512,
            resources: 800,
            outputs: 64,
            expression_chars: 24_576,
            string_bytes: 1 << 20,
            items: 10_000,
            value_depth: 128,
            nesting: 256,
            resource_bytes: 1 << 20,
            deployment_bytes: 4 << 20,
            produced_bytes: 32 << 20,
            steps: 2_000_000,
        }
    }
}

/// The estimated memory of one JSON node (the size of `serde_json::Value`).
const NODE: u64 = std::mem::size_of::<Value>() as u64;

/// The work done so far in one evaluation, against its [`Limits`].
#[derive(Debug)]
pub(crate) struct Meter {
    pub(crate) limits: Limits,
    steps: u64,
    produced: u64,
    nesting: usize,
}

fn limit(message: String) -> EvalError {
    EvalError::Limit(message)
}

impl Meter {
    pub(crate) fn new(limits: Limits) -> Self {
        Meter { limits, steps: 0, produced: 0, nesting: 0 }
    }

    /// Counts `n` evaluation steps.
    pub(crate) fn steps(&mut self, n: u64) -> Result<(), EvalError> {
        self.steps = self.steps.saturating_add(n);
        if self.steps > self.limits.steps {
            return Err(limit(format!(
                "the deployment needs more than {} evaluation steps, the limit per deployment",
                self.limits.steps
            )));
        }
        Ok(())
    }

    /// One level deeper into the evaluation; [`Meter::leave`] when done (also on error).
    pub(crate) fn enter(&mut self) -> Result<(), EvalError> {
        if self.nesting >= self.limits.nesting {
            return Err(limit(format!(
                "the template nests more than {} levels deep (JSON, expressions, and variables or \
                 parameters that use each other)",
                self.limits.nesting
            )));
        }
        self.nesting += 1;
        self.steps(1)
    }

    pub(crate) fn leave(&mut self) {
        self.nesting = self.nesting.saturating_sub(1);
    }

    /// Checks, before building it, that a string of `bytes` bytes is within the limit.
    /// `function` names the function building it, as in `padLeft()`.
    pub(crate) fn string(&self, function: &str, bytes: u128) -> Result<(), EvalError> {
        if bytes > self.limits.string_bytes as u128 {
            return Err(limit(format!(
                "{function} would build a string of {bytes} bytes, more than the limit of {} bytes per string",
                self.limits.string_bytes
            )));
        }
        Ok(())
    }

    /// Checks, before building it, that an array or object of `n` items is within the limit.
    pub(crate) fn items(&self, function: &str, n: usize) -> Result<(), EvalError> {
        if n > self.limits.items {
            return Err(limit(format!(
                "{function} would build an array of more than {} elements, the limit per array",
                self.limits.items
            )));
        }
        Ok(())
    }

    /// Admits a value an expression produced: checks its strings, arrays, objects and depth
    /// against the limits and adds its size to the deployment's total.
    pub(crate) fn admit(&mut self, value: &Value) -> Result<(), EvalError> {
        let size = self.measure(value, 1)?;
        self.produced = self.produced.saturating_add(size);
        if self.produced > self.limits.produced_bytes {
            return Err(limit(format!(
                "the deployment's expressions produce more than {} bytes of values in total, the limit \
                 per deployment",
                self.limits.produced_bytes
            )));
        }
        Ok(())
    }

    fn measure(&self, value: &Value, depth: usize) -> Result<u64, EvalError> {
        if depth > self.limits.value_depth {
            return Err(limit(format!("the result nests more than {} levels deep", self.limits.value_depth)));
        }
        Ok(match value {
            Value::String(s) => {
                if s.len() > self.limits.string_bytes {
                    return Err(limit(format!(
                        "the result holds a string of {} bytes, more than the limit of {} bytes per string",
                        s.len(),
                        self.limits.string_bytes
                    )));
                }
                NODE + s.len() as u64
            }
            Value::Array(items) => {
                if items.len() > self.limits.items {
                    return Err(limit(format!(
                        "the result holds an array of {} elements, more than the limit of {} per array",
                        items.len(),
                        self.limits.items
                    )));
                }
                let mut size = NODE;
                for item in items {
                    size = size.saturating_add(self.measure(item, depth + 1)?);
                }
                size
            }
            Value::Object(map) => {
                if map.len() > self.limits.items {
                    return Err(limit(format!(
                        "the result holds an object of {} properties, more than the limit of {} per object",
                        map.len(),
                        self.limits.items
                    )));
                }
                let mut size = NODE;
                for (key, item) in map {
                    size = size.saturating_add(NODE + key.len() as u64).saturating_add(self.measure(item, depth + 1)?);
                }
                size
            }
            _ => NODE,
        })
    }
}

/// The length of `value`'s compact JSON text, counted without building it.
pub(crate) fn json_len(value: &Value) -> usize {
    #[derive(Debug)]
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 = self.0.saturating_add(buf.len());
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    match serde_json::to_writer(&mut count, value) {
        Ok(()) => count.0,
        Err(_) => usize::MAX,
    }
}

/// At most `max` characters of `text`, with `…` when cut: for error messages, which must not grow
/// with the input.
pub(crate) fn shorten(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", text.get(..cut).unwrap_or_default()),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::{json_len, shorten, Limits, Meter};
    use serde_json::json;

    #[test]
    fn json_len_counts_compact_text() {
        let v = json!({"a": [1, "é", null]});
        assert_eq!(json_len(&v), v.to_string().len());
    }

    #[test]
    fn shorten_cuts_on_characters() {
        assert_eq!(shorten("héllo", 2), "hé…");
        assert_eq!(shorten("hé", 2), "hé");
    }

    #[test]
    fn admit_checks_each_limit() {
        let limits = Limits { string_bytes: 4, items: 2, value_depth: 4, produced_bytes: 1000, ..Limits::default() };
        let mut m = Meter::new(limits);
        assert!(m.admit(&json!(["abcd", {"k": [1]}])).is_ok());
        for (value, words) in [
            (json!("abcde"), "string of 5 bytes"),
            (json!([1, 2, 3]), "array of 3 elements"),
            (json!({"a": 1, "b": 2, "c": 3}), "object of 3 properties"),
            (json!([[[[1]]]]), "nests more than 4 levels"),
        ] {
            let e = m.admit(&value).expect_err("over a limit");
            assert!(format!("{e:?}").contains(words), "{e:?}");
        }
        let e = (0..100).find_map(|_| m.admit(&json!(["abcd", "abcd"])).err()).expect("budget runs out");
        assert!(format!("{e:?}").contains("more than 1000 bytes of values in total"), "{e:?}");
    }

    #[test]
    fn nesting_and_steps_are_bounded() {
        let mut m = Meter::new(Limits { nesting: 2, steps: 5, ..Limits::default() });
        assert!(m.enter().is_ok() && m.enter().is_ok());
        assert!(format!("{:?}", m.enter()).contains("nests more than 2 levels"));
        m.leave();
        m.leave();
        // Each level entered is a step too.
        assert!(m.steps(3).is_ok());
        assert!(format!("{:?}", m.steps(1)).contains("more than 5 evaluation steps"));
    }
}
