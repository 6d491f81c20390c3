//! Environment overrides: every key of the file can be set by a variable
//! `OPENDPS_<SECTION>__<KEY>` (sections and keys in upper case, nested tables joined by `__`),
//! e.g. `OPENDPS_TLS__PROFILE=dps-recommended`, `OPENDPS_HTTPS__PORT=8443`,
//! `OPENDPS_TLS__BUILTIN__DNS_NAMES=dps.example.com,dps`. Precedence: file < environment <
//! command line. The top-level `data_dir` is `OPENDPS_DATA_DIR` (a command-line variable).
//!
//! A value is read as TOML when that fits the key (`true`, `443`, `["a", "b"]`), else as text,
//! else as a comma-separated list of text. A variable that names no key, or whose value fits
//! none of these, is a problem reported with the variable's name, in the same validation pass
//! as every other problem.

use crate::raw::Raw;
use crate::Problem;

/// Prefix of every configuration variable.
pub const PREFIX: &str = "OPENDPS_";

/// One configuration key set by an environment variable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnvSetting {
    /// The variable, e.g. `OPENDPS_TLS__PROFILE`.
    pub var: String,
    /// The key path, e.g. `["tls", "profile"]`.
    pub path: Vec<String>,
    pub value: String,
}

impl EnvSetting {
    /// The key as the config file and validation name it (`tls.profile`).
    pub fn dotted(&self) -> String {
        self.path.join(".")
    }
}

/// The configuration variables among `vars`: `OPENDPS_` followed by at least two parts joined
/// by `__`. Other `OPENDPS_*` variables (`OPENDPS_LOG`, `OPENDPS_DATA_DIR`, …) are not keys of
/// the file and are left alone.
pub fn settings(vars: impl IntoIterator<Item = (String, String)>) -> Vec<EnvSetting> {
    let mut out: Vec<EnvSetting> = vars
        .into_iter()
        .filter_map(|(var, value)| {
            let rest = var.strip_prefix(PREFIX)?;
            if !rest.contains("__") {
                return None;
            }
            let path = rest.split("__").map(str::to_ascii_lowercase).collect();
            Some(EnvSetting { var, path, value })
        })
        .collect();
    out.sort_by(|a, b| a.var.cmp(&b.var));
    out
}

fn nested(path: &[String], value: toml::Value) -> toml::Table {
    let mut v = value;
    for key in path.iter().rev() {
        let mut t = toml::Table::new();
        t.insert(key.clone(), v);
        v = toml::Value::Table(t);
    }
    match v {
        toml::Value::Table(t) => t,
        _ => toml::Table::new(),
    }
}

/// The ways a variable's text may be meant.
fn candidates(text: &str) -> Vec<toml::Value> {
    let mut out = Vec::new();
    if let Ok(t) = format!("v = {text}").parse::<toml::Table>() {
        if let Some(v) = t.get("v") {
            out.push(v.clone());
        }
    }
    out.push(toml::Value::String(text.to_owned()));
    let list: Vec<toml::Value> =
        text.split(',').map(str::trim).filter(|s| !s.is_empty()).map(|s| toml::Value::String(s.to_owned())).collect();
    out.push(toml::Value::Array(list));
    out
}

/// Merges `b` into `a`, tables recursively, values of `b` winning.
fn merge(a: &mut toml::Table, b: toml::Table) {
    for (k, v) in b {
        match (a.get_mut(&k), v) {
            (Some(toml::Value::Table(at)), toml::Value::Table(bt)) => merge(at, bt),
            (_, v) => {
                a.insert(k, v);
            }
        }
    }
}

/// Applies `settings` on top of the file's table, checking each against the file schema.
/// Returns the merged table and a problem for each variable that does not fit.
pub fn apply(mut table: toml::Table, settings: &[EnvSetting]) -> (toml::Table, Vec<Problem>) {
    let mut problems = Vec::new();
    for s in settings {
        if s.path.iter().any(String::is_empty) {
            problems.push(Problem {
                path: s.var.clone(),
                message: "is not a configuration key (empty part between __)".into(),
            });
            continue;
        }
        let mut first_error = None;
        let mut fitted = None;
        for v in candidates(&s.value) {
            let one = nested(&s.path, v);
            match toml::Value::Table(one.clone()).try_into::<Raw>() {
                Ok(_) => {
                    fitted = Some(one);
                    break;
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        match fitted {
            Some(one) => merge(&mut table, one),
            None => problems.push(Problem {
                path: format!("{} ({})", s.var, s.dotted()),
                message: first_error.map_or_else(|| "does not fit".to_owned(), |e| describe(&e)),
            }),
        }
    }
    (table, problems)
}

/// A `toml` deserialization message, on one line.
fn describe(e: &toml::de::Error) -> String {
    e.message().split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Names the variable in a validation problem about a key it set.
pub fn attribute(problems: &mut [Problem], settings: &[EnvSetting]) {
    for p in problems {
        for s in settings {
            let key = s.dotted();
            let hit = p.path == key || p.path.starts_with(&format!("{key}[")) || p.path.starts_with(&format!("{key}."));
            if hit {
                p.path = format!("{} ({})", p.path, s.var);
                break;
            }
        }
    }
}
