//! How operator commands print their results, as `az` does: `-o json` (default), `jsonc`,
//! `yaml`, `table`, `tsv` or `none`, after an optional JMESPath `--query`.

use anyhow::{anyhow, Context};
use clap::ValueEnum;
use serde_json::Value;

#[derive(Clone, Copy, Debug, Default, ValueEnum, PartialEq, Eq)]
pub enum Output {
    /// Indented JSON.
    #[default]
    Json,
    /// Indented JSON (colour is never added; accepted for az compatibility).
    Jsonc,
    /// YAML.
    Yaml,
    /// A table of the scalar fields.
    Table,
    /// Tab-separated values, no headers (for shell scripts).
    Tsv,
    /// Nothing (only the exit status).
    None,
}

/// Output format and query, shared by every command.
#[derive(Clone, Debug, Default)]
pub struct Printer {
    pub output: Output,
    pub query: Option<String>,
}

impl Printer {
    /// The same query with another format.
    pub fn clone_with(&self, output: Output) -> Printer {
        Printer { output, query: self.query.clone() }
    }

    pub fn is_table(&self) -> bool {
        self.output == Output::Table
    }

    /// Applies `--query`, then prints in the chosen format.
    pub fn print(&self, v: &Value) -> anyhow::Result<()> {
        let v = match &self.query {
            Some(q) => query(q, v)?,
            None => v.clone(),
        };
        let text = render(&v, self.output)?;
        if text.is_empty() {
            return Ok(());
        }
        crate::print(&(text + "\n"))
    }
}

/// Evaluates a JMESPath expression against `v`.
pub fn query(expr: &str, v: &Value) -> anyhow::Result<Value> {
    let compiled =
        jmespath::compile(expr).map_err(|e| anyhow!("--query {expr:?} is not a JMESPath expression: {e}"))?;
    let data = jmespath::Variable::from_serializable(v).context("--query input")?;
    let result = compiled.search(data).map_err(|e| anyhow!("--query {expr:?} failed: {e}"))?;
    serde_json::to_value(&*result).context("--query result")
}

pub fn render(v: &Value, out: Output) -> anyhow::Result<String> {
    Ok(match out {
        Output::Json | Output::Jsonc => serde_json::to_string_pretty(v)?,
        Output::Yaml => serde_norway::to_string(v)?.trim_end().to_owned(),
        Output::Table => table(v),
        Output::Tsv => tsv(v),
        Output::None => String::new(),
    })
}

fn cell(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// Rows of a value: the items of an array (or of a `{"value": [...]}` list), or the value itself.
fn rows(v: &Value) -> Vec<&Value> {
    match v {
        Value::Array(a) => a.iter().collect(),
        Value::Object(o) if o.len() == 1 && o.get("value").is_some_and(Value::is_array) => rows(&o["value"]),
        other => vec![other],
    }
}

fn table(v: &Value) -> String {
    let rows = rows(v);
    if rows.iter().all(|r| !r.is_object()) {
        let mut out = String::from("Result\n------");
        for r in rows {
            out += "\n";
            out += &cell(r);
        }
        return out;
    }
    let objs: Vec<&serde_json::Map<String, Value>> = rows.iter().filter_map(|r| r.as_object()).collect();
    let mut cols: Vec<String> = Vec::new();
    for r in &objs {
        for (k, v) in r.iter() {
            if !v.is_object() && !v.is_array() && !cols.contains(k) {
                cols.push(k.clone());
            }
        }
    }
    let widths: Vec<usize> = cols
        .iter()
        .map(|c| {
            objs.iter().map(|r| cell(r.get(c).unwrap_or(&Value::Null)).chars().count()).max().unwrap_or(0).max(c.len())
        })
        .collect();
    let line = |vals: Vec<String>| {
        vals.iter().zip(&widths).map(|(v, w)| format!("{v:<w$}")).collect::<Vec<_>>().join("  ").trim_end().to_owned()
    };
    let mut out = line(cols.clone());
    out += "\n";
    out += &line(widths.iter().map(|w| "-".repeat(*w)).collect());
    for r in objs {
        out += "\n";
        out += &line(cols.iter().map(|c| cell(r.get(c).unwrap_or(&Value::Null))).collect());
    }
    out
}

/// One line per row; an object's scalar values in field-name order, tab-separated (nested objects and
/// arrays are left out, as `az -o tsv` does).
fn tsv(v: &Value) -> String {
    rows(v)
        .into_iter()
        .map(|r| match r {
            Value::Object(o) => {
                o.values().filter(|v| !v.is_object() && !v.is_array()).map(cell).collect::<Vec<_>>().join("\t")
            }
            other => cell(other),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    #[test]
    fn query_selects_and_projects() {
        let v = json!([{"registrationId": "a", "provisioningStatus": "enabled"}, {"registrationId": "b", "provisioningStatus": "disabled"}]);
        assert_eq!(query("[?provisioningStatus=='enabled'].registrationId", &v).unwrap(), json!(["a"]));
        assert_eq!(query("[0].registrationId", &v).unwrap(), json!("a"));
        assert!(query("[?", &v).is_err());
    }

    #[test]
    fn formats() {
        let v = json!([{"name": "x", "n": 1, "nested": {"a": 1}}, {"name": "yy", "n": 2}]);
        // Fields in name order (serde_json's map order), nested values left out.
        assert_eq!(render(&v, Output::Tsv).unwrap(), "1\tx\n2\tyy");
        assert_eq!(render(&json!("k"), Output::Tsv).unwrap(), "k");
        let t = render(&v, Output::Table).unwrap();
        assert_eq!(t.lines().next().unwrap(), "n  name");
        assert_eq!(t.lines().nth(2).unwrap(), "1  x");
        let y = render(&json!({"a": "b", "c": [1]}), Output::Yaml).unwrap();
        let back: Value = serde_norway::from_str(&y).unwrap();
        assert_eq!(back, json!({"a": "b", "c": [1]}));
        assert_eq!(render(&v, Output::None).unwrap(), "");
    }
}
