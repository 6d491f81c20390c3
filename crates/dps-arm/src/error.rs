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
    #[error("parameter '{name}' does not allow the value {value}: allowed values are {}", list(.allowed))]
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
}

fn list(values: &[Value]) -> String {
    values.iter().map(Value::to_string).collect::<Vec<_>>().join(", ")
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
    fn not_allowed_lists_the_values() {
        let e =
            ArmError::NotAllowed { name: "sku".into(), value: "S3".into(), allowed: vec!["S1".into(), "S2".into()] };
        assert_eq!(e.to_string(), r#"parameter 'sku' does not allow the value "S3": allowed values are "S1", "S2""#);
    }
}
