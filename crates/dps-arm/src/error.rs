//! The errors of template evaluation. Each message is lowercase and names the place it is about:
//! a parameter, or the JSON path of a template field such as `resources[0].properties.x`.

use serde_json::Value;

/// Why a template could not be evaluated.
#[derive(Debug, thiserror::Error, PartialEq)]
#[non_exhaustive]
pub enum ArmError {
    /// The template or the parameters file is not JSON, even after comments and trailing commas are
    /// removed. `document` is `"template"` or `"parameters file"`.
    #[error("{document} is not valid JSON at line {line} column {column}: {message}")]
    Json { document: &'static str, line: usize, column: usize, message: String },

    /// The document is JSON but not a template (or parameters file) of the expected shape.
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },

    /// A parameter with neither a passed value nor a `defaultValue`.
    #[error("parameter '{name}' has no value: pass --parameters {name}=VALUE")]
    MissingParameter { name: String },

    /// A parameter value outside of the parameter's `allowedValues`.
    #[error("parameter '{name}' does not allow the value {}: allowed values are {}", shown(.value), list(.allowed))]
    NotAllowed { name: String, value: Value, allowed: Vec<Value> },

    /// A parameter value that breaks `minValue`, `maxValue`, `minLength` or `maxLength`.
    #[error("parameter '{name}' {message}")]
    Constraint { name: String, message: String },

    /// A parameter value that is not of the parameter's declared `type` (`value` is its JSON text).
    #[error("parameter '{name}' expects a value of type {expected}, got {value}")]
    WrongType { name: String, expected: String, value: String },

    /// A passed parameter that the template does not declare. `origin` is `"--parameters"` or
    /// `"the parameters file"`.
    #[error("parameter '{name}' given in {origin} is not declared by the template")]
    UnknownParameter { name: String, origin: &'static str },

    /// `variables('name')` with no such variable.
    #[error("{at}: variable '{name}' is not declared in the template's variables")]
    UnknownVariable { name: String, at: String },

    /// A call to a function that ARM templates do not have.
    #[error("{at}: unknown template function '{name}'")]
    UnknownFunction { name: String, at: String },

    /// An expression that does not parse, or whose evaluation failed (wrong argument types, missing
    /// property, ...).
    #[error("{at}: cannot evaluate {expression:?}: {message}")]
    Expression { at: String, expression: String, message: String },

    /// Parameters (through their `defaultValue`s) or variables that refer to each other in a loop.
    /// `section` is `"parameters"` or `"variables"`; the chain starts and ends with the same name.
    #[error("{section} refer to each other in a cycle: {}", .chain.join(" -> "))]
    Cycle { section: &'static str, chain: Vec<String> },

    /// Resource fields that still hold an unfilled documentation placeholder such as
    /// `<provide-a-valid-DPS-resource-name>`: every `(path, value)` found, in template order.
    #[error("{}", placeholders(.0))]
    Placeholders(Vec<(String, String)>),

    /// A resource without `type` or `name`; `path` is the missing field, e.g. `resources[0].name`.
    #[error("{path} is missing: every resource needs a 'type' and a 'name'")]
    MissingField { path: String },

    /// A template feature this evaluator does not implement (copy loops, nested deployments,
    /// user-defined functions, `reference()`, ...).
    #[error("{path}: {message}")]
    Unsupported { path: String, message: String },

    /// A bound of the evaluation (see [`Limits`](crate::Limits)) was reached: ARM's template
    /// limits (parameters, variables, resources, outputs, expression length, resource and
    /// template size) or the evaluator's own (string, array and object sizes, nesting, total work).
    /// `at` is the template field or section; `expression` the template expression being
    /// evaluated when the bound was reached, if any (its first 200 characters).
    #[error("{at}: {}", limit(.expression.as_deref(), .message))]
    Limit { at: String, expression: Option<String>, message: String },
}

/// How many values of a list, and characters of a value, an error message shows.
const SHOWN_VALUES: usize = 20;
const SHOWN_CHARS: usize = 200;

fn list(values: &[Value]) -> String {
    let mut text = values.iter().take(SHOWN_VALUES).map(shown).collect::<Vec<_>>().join(", ");
    if values.len() > SHOWN_VALUES {
        text.push_str(&format!(" and {} more", values.len() - SHOWN_VALUES));
    }
    text
}

/// A value's JSON text for a message, cut after 200 characters.
fn shown(value: &Value) -> String {
    crate::limits::shorten(&value.to_string(), SHOWN_CHARS)
}

fn limit(expression: Option<&str>, message: &str) -> String {
    match expression {
        Some(e) => format!("cannot evaluate {e:?}: {message}"),
        None => message.to_owned(),
    }
}

fn placeholders(found: &[(String, String)]) -> String {
    match found {
        [(path, value)] => format!("{path} still holds the placeholder '{value}': replace it with a real value"),
        _ => {
            let mut message =
                format!("the template still holds {} placeholders: replace them with real values", found.len());
            for (path, value) in found {
                message.push_str(&format!("\n  {path} still holds the placeholder '{value}'"));
            }
            message
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ArmError;

    #[test]
    fn one_placeholder_reads_as_a_sentence() {
        let e = ArmError::Placeholders(vec![("resources[0].name".into(), "<name>".into())]);
        assert_eq!(
            e.to_string(),
            "resources[0].name still holds the placeholder '<name>': replace it with a real value"
        );
    }

    #[test]
    fn several_placeholders_get_a_line_each() {
        let e = ArmError::Placeholders(vec![
            ("resources[0].location".into(), "<any-region>".into()),
            ("resources[0].name".into(), "<name>".into()),
        ]);
        assert_eq!(
            e.to_string(),
            "the template still holds 2 placeholders: replace them with real values\n  \
             resources[0].location still holds the placeholder '<any-region>'\n  \
             resources[0].name still holds the placeholder '<name>'"
        );
    }

    #[test]
    fn long_values_are_cut_in_messages() {
        let e = ArmError::NotAllowed {
            name: "p".into(),
            value: "x".repeat(10_000).into(),
            allowed: (0..1000).map(serde_json::Value::from).collect(),
        };
        let message = e.to_string();
        assert!(message.len() < 400, "{message}");
        assert!(message.ends_with("18, 19 and 980 more"), "{message}");
        let e = ArmError::Limit { at: "variables.v".into(), expression: Some("[f()]".into()), message: "m".into() };
        assert_eq!(e.to_string(), r#"variables.v: cannot evaluate "[f()]": m"#);
        let e = ArmError::Limit { at: "resources".into(), expression: None, message: "m".into() };
        assert_eq!(e.to_string(), "resources: m");
    }

    #[test]
    fn not_allowed_lists_the_values() {
        let e =
            ArmError::NotAllowed { name: "sku".into(), value: "S3".into(), allowed: vec!["S1".into(), "S2".into()] };
        assert_eq!(e.to_string(), r#"parameter 'sku' does not allow the value "S3": allowed values are "S1", "S2""#);
    }
}
