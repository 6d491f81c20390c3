//! The template functions that need nothing but their arguments (and the target resource group).
//! `parameters`, `variables` and `if` need the evaluator and live in `template.rs`.

use std::cmp::Ordering;

use serde_json::{Map, Number, Value};

use crate::limits::Meter;
use crate::{hash, ArmError, ResourceGroup};

/// Why an expression could not be evaluated; turned into an [`ArmError`] that names the field.
#[derive(Debug)]
pub(crate) enum EvalError {
    Message(String),
    UnknownFunction(String),
    UnknownVariable(String),
    Unsupported(String),
    /// A bound of [`crate::Limits`] was reached.
    Limit(String),
    /// An error that already names its own place (in a variable or parameter default); boxed to
    /// keep `Result`s small in the evaluator's recursion.
    Arm(Box<ArmError>),
}

fn fail<T>(message: impl Into<String>) -> Result<T, EvalError> {
    Err(EvalError::Message(message.into()))
}

/// Every function implemented, lowercase.
pub(crate) const SUPPORTED: &[&str] = &[
    "add",
    "and",
    "array",
    "base64",
    "base64tojson",
    "base64tostring",
    "bool",
    "coalesce",
    "concat",
    "contains",
    "createarray",
    "createobject",
    "div",
    "empty",
    "endswith",
    "equals",
    "false",
    "first",
    "format",
    "greater",
    "greaterorequals",
    "guid",
    "if",
    "indexof",
    "int",
    "intersection",
    "items",
    "join",
    "json",
    "last",
    "lastindexof",
    "length",
    "less",
    "lessorequals",
    "max",
    "min",
    "mod",
    "mul",
    "not",
    "null",
    "or",
    "padleft",
    "parameters",
    "range",
    "replace",
    "resourcegroup",
    "resourceid",
    "skip",
    "split",
    "startswith",
    "string",
    "sub",
    "subscription",
    "subscriptionresourceid",
    "substring",
    "take",
    "tenantresourceid",
    "tolower",
    "toupper",
    "trim",
    "true",
    "union",
    "uniquestring",
    "variables",
];

/// ARM functions that exist but are not implemented here (besides every `list*` function).
const UNSUPPORTED: &[&str] = &[
    "cidrhost",
    "cidrsubnet",
    "copyindex",
    "datauri",
    "datauritostring",
    "datetimeadd",
    "datetimefromepoch",
    "datetimetoepoch",
    "deployment",
    "environment",
    "extensionresourceid",
    "filter",
    "flatten",
    "float",
    "groupby",
    "lambda",
    "lambdavariables",
    "managementgroup",
    "managementgroupresourceid",
    "map",
    "mapvalues",
    "newguid",
    "objectkeys",
    "parsecidr",
    "pickzones",
    "providers",
    "reduce",
    "reference",
    "references",
    "shallowmerge",
    "sort",
    "tenant",
    "toobject",
    "tryget",
    "uri",
    "uricomponent",
    "uricomponenttostring",
    "utcnow",
];

/// Fails unless `name` is implemented: `Unsupported` for ARM functions left out, `UnknownFunction`
/// for names ARM does not have. Checked before the arguments are evaluated.
pub(crate) fn check_known(name: &str) -> Result<(), EvalError> {
    let lower = name.to_ascii_lowercase();
    if SUPPORTED.contains(&lower.as_str()) {
        return Ok(());
    }
    let why = match lower.as_str() {
        "reference" | "references" => "it reads the live state of a deployed resource",
        "copyindex" => "copy loops are not supported",
        "utcnow" | "newguid" => "it is not deterministic",
        _ if lower.starts_with("list") => "it calls a resource's list action on a live deployment",
        _ if UNSUPPORTED.contains(&lower.as_str()) => "it is not implemented",
        _ => return Err(EvalError::UnknownFunction(name.to_owned())),
    };
    Err(EvalError::Unsupported(format!("the function '{name}' is not supported by opendps: {why}")))
}

/// Short description of a value for messages: its kind and (truncated) JSON text.
pub(crate) fn describe(value: &Value) -> String {
    let mut text = value.to_string();
    if text.chars().count() > 60 {
        text = text.chars().take(57).collect::<String>() + "...";
    }
    match value {
        Value::Null => "null".to_owned(),
        _ => format!("{} {text}", kind(value)),
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(n) if n.is_i64() || n.is_u64() => "int",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// A value as text the way ARM's `string()` renders it: strings as they are, booleans as .NET
/// does (`True`, `False`), null as empty, objects and arrays as compact JSON.
pub(crate) fn to_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Bool(true) => "True".to_owned(),
        Value::Bool(false) => "False".to_owned(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// Equality as `equals()` sees it: numbers by value, objects and arrays deeply. The nodes
/// visited are counted as evaluation steps.
pub(crate) fn values_equal(a: &Value, b: &Value, meter: &mut Meter) -> Result<bool, EvalError> {
    let mut visited = 0;
    let equal = equal_counting(a, b, &mut visited);
    meter.steps(visited)?;
    Ok(equal)
}

fn equal_counting(a: &Value, b: &Value, visited: &mut u64) -> bool {
    *visited += 1;
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_i64(), y.as_i64()) {
            (Some(p), Some(q)) => p == q,
            _ => x.as_f64() == y.as_f64(),
        },
        (Value::String(x), Value::String(y)) => {
            *visited += (x.len().min(y.len()) / 64) as u64;
            x == y
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| equal_counting(p, q, visited))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| equal_counting(v, w, visited)))
        }
        _ => a == b,
    }
}

/// Whether `items` holds a value equal to `wanted` (its position, from the end if `last`).
fn position(items: &[Value], wanted: &Value, last: bool, meter: &mut Meter) -> Result<Option<usize>, EvalError> {
    let order: Box<dyn Iterator<Item = (usize, &Value)>> =
        if last { Box::new(items.iter().enumerate().rev()) } else { Box::new(items.iter().enumerate()) };
    for (i, item) in order {
        if values_equal(item, wanted, meter)? {
            return Ok(Some(i));
        }
    }
    Ok(None)
}

/// `.name` on a value: exact key first, then ARM's case-insensitive match.
pub(crate) fn property(target: &Value, name: &str, meter: &mut Meter) -> Result<Value, EvalError> {
    match target {
        Value::Object(map) => match get_ci_metered(map, name, meter)? {
            Some(value) => Ok(value.clone()),
            None => {
                let mut keys: Vec<&str> = map.keys().take(20).map(String::as_str).collect();
                if map.len() > keys.len() {
                    keys.push("...");
                }
                fail(format!("the object has no property '{name}' (it has: {})", keys.join(", ")))
            }
        },
        other => fail(format!("cannot read the property '{name}' of {}", describe(other))),
    }
}

/// `[index]` on a value: arrays by integer, objects by property name.
pub(crate) fn index(target: &Value, index: &Value, meter: &mut Meter) -> Result<Value, EvalError> {
    match (target, index) {
        (Value::Array(items), Value::Number(n)) => {
            let Some(i) = n.as_i64() else {
                return fail(format!("an array index must be an integer, got {n}"));
            };
            usize::try_from(i).ok().and_then(|i| items.get(i)).cloned().map_or_else(
                || fail(format!("the index {i} is out of range for an array of length {}", items.len())),
                Ok,
            )
        }
        (Value::Object(_), Value::String(name)) => property(target, name, meter),
        (target, index) => fail(format!("cannot index {} with {}", describe(target), describe(index))),
    }
}

pub(crate) fn get_ci<'m>(map: &'m Map<String, Value>, key: &str) -> Option<&'m Value> {
    map.get(key).or_else(|| map.iter().find(|(k, _)| k.eq_ignore_ascii_case(key)).map(|(_, v)| v))
}

/// [`get_ci`], counting the keys searched as evaluation steps.
fn get_ci_metered<'m>(
    map: &'m Map<String, Value>,
    key: &str,
    meter: &mut Meter,
) -> Result<Option<&'m Value>, EvalError> {
    if let Some(value) = map.get(key) {
        return Ok(Some(value));
    }
    meter.steps(map.len() as u64)?;
    Ok(get_ci(map, key))
}

/// The arguments of one call, with typed accessors whose errors name the function.
struct Args<'v> {
    name: &'v str,
    values: &'v [Value],
}

impl<'v> Args<'v> {
    fn count(&self, min: usize, max: usize) -> Result<(), EvalError> {
        let n = self.values.len();
        if (min..=max).contains(&n) {
            return Ok(());
        }
        let plural = |k: usize| if k == 1 { "argument" } else { "arguments" };
        let expected = if min == max {
            format!("{min} {}", plural(min))
        } else if max == usize::MAX {
            format!("at least {min} {}", plural(min))
        } else {
            format!("{min} to {max} arguments")
        };
        fail(format!("{}() takes {expected}, got {n}", self.name))
    }

    fn wrong(&self, i: usize, expected: &str) -> EvalError {
        EvalError::Message(format!(
            "argument {} of {}() must be {expected}, got {}",
            i + 1,
            self.name,
            describe(&self.values[i])
        ))
    }

    fn str(&self, i: usize) -> Result<&'v str, EvalError> {
        self.values[i].as_str().ok_or_else(|| self.wrong(i, "a string"))
    }

    fn int(&self, i: usize) -> Result<i64, EvalError> {
        self.values[i].as_i64().ok_or_else(|| self.wrong(i, "an integer"))
    }

    fn bool(&self, i: usize) -> Result<bool, EvalError> {
        self.values[i].as_bool().ok_or_else(|| self.wrong(i, "a bool"))
    }

    fn strs(&self) -> Result<Vec<&'v str>, EvalError> {
        (0..self.values.len()).map(|i| self.str(i)).collect()
    }

    fn ints(&self) -> Result<Vec<i64>, EvalError> {
        (0..self.values.len()).map(|i| self.int(i)).collect()
    }
}

fn int(n: i64) -> Value {
    Value::Number(Number::from(n))
}

fn overflow(name: &str) -> EvalError {
    EvalError::Message(format!("{name}() overflows a 64-bit integer"))
}

/// Calls the function `name` (as written; matched case-insensitively) on evaluated arguments.
/// Sizes of results are checked against `meter`'s limits before they are built wherever they are
/// known in advance, and work that is not linear in the size of the arguments is counted.
pub(crate) fn call(
    name: &str,
    values: &[Value],
    rg: &ResourceGroup<'_>,
    meter: &mut Meter,
) -> Result<Value, EvalError> {
    let a = Args { name, values };
    let lower = name.to_ascii_lowercase();
    let value = match lower.as_str() {
        "true" | "false" => {
            a.count(0, 0)?;
            Value::Bool(lower == "true")
        }
        "null" => {
            a.count(0, 0)?;
            Value::Null
        }
        "resourcegroup" => {
            a.count(0, 0)?;
            resource_group(rg)
        }
        "subscription" => {
            a.count(0, 0)?;
            let mut sub = Map::new();
            sub.insert("id".into(), format!("/subscriptions/{}", rg.subscription_id).into());
            sub.insert("subscriptionId".into(), rg.subscription_id.into());
            sub.insert("displayName".into(), rg.subscription_id.into());
            Value::Object(sub)
        }
        "resourceid" => resource_id(&a, rg, IdScope::ResourceGroup)?.into(),
        "subscriptionresourceid" => resource_id(&a, rg, IdScope::Subscription)?.into(),
        "tenantresourceid" => resource_id(&a, rg, IdScope::Tenant)?.into(),

        // Strings.
        "concat" => concat(&a, meter)?,
        "format" => {
            a.count(1, usize::MAX)?;
            format(a.str(0)?, &values[1..], meter)?.into()
        }
        "tolower" => {
            a.count(1, 1)?;
            a.str(0)?.to_lowercase().into()
        }
        "toupper" => {
            a.count(1, 1)?;
            a.str(0)?.to_uppercase().into()
        }
        "trim" => {
            a.count(1, 1)?;
            a.str(0)?.trim().into()
        }
        "string" => {
            a.count(1, 1)?;
            to_text(&values[0]).into()
        }
        "replace" => {
            a.count(3, 3)?;
            let (text, old, new) = (a.str(0)?, a.str(1)?, a.str(2)?);
            if old.is_empty() {
                return fail("replace() cannot replace an empty string");
            }
            let found = text.matches(old).count() as u128;
            meter.string("replace()", text.len() as u128 - found * old.len() as u128 + found * new.len() as u128)?;
            text.replace(old, new).into()
        }
        "substring" => {
            a.count(2, 3)?;
            let chars: Vec<char> = a.str(0)?.chars().collect();
            let start = a.int(1)?;
            let length = if values.len() == 3 { a.int(2)? } else { chars.len() as i64 - start };
            match (usize::try_from(start), usize::try_from(length)) {
                (Ok(s), Ok(l)) if s.checked_add(l).is_some_and(|end| end <= chars.len()) => {
                    chars[s..s + l].iter().collect::<String>().into()
                }
                _ => {
                    return fail(format!(
                        "substring() start {start} and length {length} are outside of a string of length {}",
                        chars.len()
                    ))
                }
            }
        }
        "startswith" | "endswith" => {
            a.count(2, 2)?;
            let (s, affix) = (a.str(0)?.to_lowercase(), a.str(1)?.to_lowercase());
            Value::Bool(if lower == "startswith" { s.starts_with(&affix) } else { s.ends_with(&affix) })
        }
        "split" => {
            a.count(2, 2)?;
            let s = a.str(0)?;
            let delimiters: Vec<String> = match &values[1] {
                Value::String(d) => vec![d.clone()],
                Value::Array(items) => items
                    .iter()
                    .map(|d| d.as_str().map(str::to_owned).ok_or_else(|| a.wrong(1, "a string or an array of strings")))
                    .collect::<Result<_, _>>()?,
                _ => return Err(a.wrong(1, "a string or an array of strings")),
            };
            let scanned: usize = delimiters.iter().map(|d| d.len().max(1)).sum();
            meter.steps((s.len() as u64).saturating_mul(scanned as u64))?;
            Value::Array(split(s, &delimiters, meter)?.into_iter().map(Value::String).collect())
        }
        "padleft" => {
            a.count(2, 3)?;
            let text = match &values[0] {
                Value::String(s) => s.clone(),
                Value::Number(n) if n.is_i64() => n.to_string(),
                _ => return Err(a.wrong(0, "a string or an integer")),
            };
            let total = a.int(1)?;
            let pad = if values.len() == 3 {
                let mut chars = a.str(2)?.chars();
                match (chars.next(), chars.next()) {
                    (Some(c), None) => c,
                    _ => return Err(a.wrong(2, "a single character")),
                }
            } else {
                ' '
            };
            let total = usize::try_from(total).map_err(|_| a.wrong(1, "a non-negative integer"))?;
            let missing = total.saturating_sub(text.chars().count());
            meter.string("padLeft()", missing as u128 * pad.len_utf8() as u128 + text.len() as u128)?;
            std::iter::repeat_n(pad, missing).chain(text.chars()).collect::<String>().into()
        }
        "uniquestring" => {
            a.count(1, usize::MAX)?;
            hash::unique_string(&a.strs()?).into()
        }
        "guid" => {
            a.count(1, usize::MAX)?;
            hash::guid(&a.strs()?).into()
        }
        "base64" => {
            a.count(1, 1)?;
            let text = a.str(0)?;
            meter.string("base64()", text.len().div_ceil(3) as u128 * 4)?;
            base64_encode(text.as_bytes()).into()
        }
        "base64tostring" | "base64tojson" => {
            a.count(1, 1)?;
            let bytes = base64_decode(a.str(0)?).ok_or_else(|| a.wrong(0, "valid base64"))?;
            let text = String::from_utf8(bytes).map_err(|_| a.wrong(0, "base64 of UTF-8 text"))?;
            if lower == "base64tostring" {
                text.into()
            } else {
                parse_json(name, &text)?
            }
        }

        // Conversions and logic.
        "int" => {
            a.count(1, 1)?;
            match &values[0] {
                Value::String(s) => int(s.trim().parse::<i64>().map_err(|_| a.wrong(0, "an integer or its text"))?),
                Value::Number(n) => match n.as_i64() {
                    Some(i) => int(i),
                    None => int(n.as_f64().map_or(0.0, f64::trunc) as i64),
                },
                _ => return Err(a.wrong(0, "an integer or its text")),
            }
        }
        "bool" => {
            a.count(1, 1)?;
            Value::Bool(match &values[0] {
                Value::Bool(b) => *b,
                Value::String(s) => s.eq_ignore_ascii_case("true"),
                Value::Number(n) if n.is_i64() || n.is_u64() => n.as_i64() != Some(0),
                _ => return Err(a.wrong(0, "a string or an integer")),
            })
        }
        "json" => {
            a.count(1, 1)?;
            parse_json(name, a.str(0)?)?
        }
        "array" => {
            a.count(1, 1)?;
            match &values[0] {
                Value::Array(_) => values[0].clone(),
                other => Value::Array(vec![other.clone()]),
            }
        }
        "not" => {
            a.count(1, 1)?;
            Value::Bool(!a.bool(0)?)
        }
        "and" | "or" => {
            a.count(2, usize::MAX)?;
            let bools = (0..values.len()).map(|i| a.bool(i)).collect::<Result<Vec<_>, _>>()?;
            Value::Bool(if lower == "and" { bools.iter().all(|b| *b) } else { bools.iter().any(|b| *b) })
        }
        "equals" => {
            a.count(2, 2)?;
            Value::Bool(values_equal(&values[0], &values[1], meter)?)
        }
        "greater" | "greaterorequals" | "less" | "lessorequals" => {
            a.count(2, 2)?;
            let order = match (&values[0], &values[1]) {
                (Value::String(x), Value::String(y)) => x.cmp(y),
                _ => a.int(0)?.cmp(&a.int(1)?),
            };
            Value::Bool(match lower.as_str() {
                "greater" => order == Ordering::Greater,
                "greaterorequals" => order != Ordering::Less,
                "less" => order == Ordering::Less,
                _ => order != Ordering::Greater,
            })
        }
        "coalesce" => {
            a.count(1, usize::MAX)?;
            values.iter().find(|v| !v.is_null()).cloned().unwrap_or(Value::Null)
        }

        // Collections.
        "length" => {
            a.count(1, 1)?;
            int(match &values[0] {
                Value::String(s) => s.chars().count() as i64,
                Value::Array(items) => items.len() as i64,
                Value::Object(map) => map.len() as i64,
                _ => return Err(a.wrong(0, "a string, an array or an object")),
            })
        }
        "empty" => {
            a.count(1, 1)?;
            Value::Bool(match &values[0] {
                Value::Null => true,
                Value::String(s) => s.is_empty(),
                Value::Array(items) => items.is_empty(),
                Value::Object(map) => map.is_empty(),
                _ => return Err(a.wrong(0, "a string, an array, an object or null")),
            })
        }
        "contains" => {
            a.count(2, 2)?;
            Value::Bool(match &values[0] {
                Value::String(s) => match &values[1] {
                    Value::String(_) | Value::Number(_) => s.contains(&to_text(&values[1])),
                    _ => return Err(a.wrong(1, "a string")),
                },
                Value::Array(items) => position(items, &values[1], false, meter)?.is_some(),
                Value::Object(map) => get_ci_metered(map, a.str(1)?, meter)?.is_some(),
                _ => return Err(a.wrong(0, "a string, an array or an object")),
            })
        }
        "indexof" | "lastindexof" => {
            a.count(2, 2)?;
            let last = lower == "lastindexof";
            match &values[0] {
                Value::String(s) => {
                    let (s, needle) = (s.to_lowercase(), a.str(1)?.to_lowercase());
                    let found = if last { s.rfind(&needle) } else { s.find(&needle) };
                    int(found.map_or(-1, |at| s[..at].chars().count() as i64))
                }
                Value::Array(items) => int(position(items, &values[1], last, meter)?.map_or(-1, |at| at as i64)),
                _ => return Err(a.wrong(0, "a string or an array")),
            }
        }
        "first" | "last" => {
            a.count(1, 1)?;
            let first = lower == "first";
            match &values[0] {
                Value::String(s) => {
                    let c = if first { s.chars().next() } else { s.chars().next_back() };
                    c.map(String::from).unwrap_or_default().into()
                }
                Value::Array(items) => {
                    let item = if first { items.first() } else { items.last() };
                    item.cloned().unwrap_or(Value::Null)
                }
                _ => return Err(a.wrong(0, "a string or an array")),
            }
        }
        "skip" | "take" => {
            a.count(2, 2)?;
            let n = usize::try_from(a.int(1)?.max(0)).unwrap_or(usize::MAX);
            let skip = lower == "skip";
            match &values[0] {
                Value::String(s) => {
                    let chars = s.chars();
                    if skip { chars.skip(n).collect::<String>() } else { chars.take(n).collect::<String>() }.into()
                }
                Value::Array(items) => {
                    let items = items.iter().cloned();
                    Value::Array(if skip { items.skip(n).collect() } else { items.take(n).collect() })
                }
                _ => return Err(a.wrong(0, "a string or an array")),
            }
        }
        "join" => {
            a.count(2, 2)?;
            let Value::Array(items) = &values[0] else {
                return Err(a.wrong(0, "an array"));
            };
            let parts = items
                .iter()
                .map(|item| match item {
                    Value::Array(_) | Value::Object(_) => fail("join() joins strings, not arrays or objects"),
                    other => Ok(to_text(other)),
                })
                .collect::<Result<Vec<_>, _>>()?;
            let separator = a.str(1)?;
            let bytes = parts.iter().map(|p| p.len() as u128).sum::<u128>()
                + parts.len().saturating_sub(1) as u128 * separator.len() as u128;
            meter.string("join()", bytes)?;
            parts.join(separator).into()
        }
        "createarray" => Value::Array(values.to_vec()),
        "createobject" => {
            if !values.len().is_multiple_of(2) {
                return fail(format!("createObject() takes key and value pairs, got {} arguments", values.len()));
            }
            let mut object = Map::new();
            for i in (0..values.len()).step_by(2) {
                object.insert(a.str(i)?.to_owned(), values[i + 1].clone());
            }
            Value::Object(object)
        }
        "items" => {
            a.count(1, 1)?;
            let Value::Object(map) = &values[0] else {
                return Err(a.wrong(0, "an object"));
            };
            let mut keys: Vec<&String> = map.keys().collect();
            meter.steps((keys.len() as u64).saturating_mul(u64::from(usize::BITS - keys.len().leading_zeros())))?;
            keys.sort_by(|x, y| x.to_lowercase().cmp(&y.to_lowercase()).then(x.cmp(y)));
            Value::Array(
                keys.into_iter()
                    .map(|k| {
                        let mut item = Map::new();
                        item.insert("key".into(), k.clone().into());
                        item.insert("value".into(), map[k.as_str()].clone());
                        Value::Object(item)
                    })
                    .collect(),
            )
        }
        "union" | "intersection" => {
            a.count(1, usize::MAX)?;
            union_or_intersection(&a, lower == "union", meter)?
        }
        "range" => {
            a.count(2, 2)?;
            let (start, count) = (a.int(0)?, a.int(1)?);
            if !(0..=10_000).contains(&count) {
                return fail(format!("range() count must be between 0 and 10000, got {count}"));
            }
            let end = start.checked_add(count).ok_or_else(|| overflow(name))?;
            Value::Array((start..end).map(int).collect())
        }

        // Numbers.
        "add" | "sub" | "mul" | "div" | "mod" => {
            a.count(2, 2)?;
            let (x, y) = (a.int(0)?, a.int(1)?);
            if matches!(lower.as_str(), "div" | "mod") && y == 0 {
                return fail(format!("{name}() cannot divide by zero"));
            }
            let result = match lower.as_str() {
                "add" => x.checked_add(y),
                "sub" => x.checked_sub(y),
                "mul" => x.checked_mul(y),
                "div" => x.checked_div(y),
                _ => x.checked_rem(y),
            };
            int(result.ok_or_else(|| overflow(name))?)
        }
        "min" | "max" => {
            a.count(1, usize::MAX)?;
            let numbers = match values {
                [Value::Array(items)] => Args { name, values: items }.ints()?,
                _ => a.ints()?,
            };
            let pick = if lower == "min" { numbers.iter().min() } else { numbers.iter().max() };
            int(*pick.ok_or_else(|| EvalError::Message(format!("{name}() of an empty array")))?)
        }
        _ => return Err(EvalError::UnknownFunction(name.to_owned())),
    };
    Ok(value)
}

fn resource_group(rg: &ResourceGroup<'_>) -> Value {
    let mut properties = Map::new();
    properties.insert("provisioningState".into(), "Succeeded".into());
    let mut group = Map::new();
    group.insert("id".into(), format!("/subscriptions/{}/resourceGroups/{}", rg.subscription_id, rg.name).into());
    group.insert("name".into(), rg.name.into());
    group.insert("type".into(), "Microsoft.Resources/resourceGroups".into());
    group.insert("location".into(), rg.location.into());
    group.insert("properties".into(), Value::Object(properties));
    Value::Object(group)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum IdScope {
    ResourceGroup,
    Subscription,
    Tenant,
}

/// `resourceId([subscriptionId], [resourceGroupName], type, name1, name2, ...)` and its subscription
/// and tenant variants. The type is the first argument holding a `/`; each segment of the type after
/// the namespace needs one name (names may also be given joined with `/`).
fn resource_id(a: &Args<'_>, rg: &ResourceGroup<'_>, scope: IdScope) -> Result<String, EvalError> {
    a.count(2, usize::MAX)?;
    let args = a.strs()?;
    let Some(at) = args.iter().position(|s| s.contains('/')) else {
        return fail(format!("{}() needs a resource type such as 'Microsoft.Devices/provisioningServices'", a.name));
    };
    let prefix = &args[..at];
    let mut id = match (scope, prefix) {
        (IdScope::ResourceGroup, []) => format!("/subscriptions/{}/resourceGroups/{}", rg.subscription_id, rg.name),
        (IdScope::ResourceGroup, [group]) => format!("/subscriptions/{}/resourceGroups/{group}", rg.subscription_id),
        (IdScope::ResourceGroup, [sub, group]) => format!("/subscriptions/{sub}/resourceGroups/{group}"),
        (IdScope::Subscription, []) => format!("/subscriptions/{}", rg.subscription_id),
        (IdScope::Subscription, [sub]) => format!("/subscriptions/{sub}"),
        (IdScope::Tenant, []) => String::new(),
        _ => {
            return fail(format!(
                "{}() got {} arguments before the resource type '{}', more than it accepts",
                a.name,
                prefix.len(),
                args[at]
            ))
        }
    };
    let mut types = args[at].split('/');
    let namespace = types.next().unwrap_or_default();
    let types: Vec<&str> = types.collect();
    let names: Vec<&str> = args[at + 1..].iter().flat_map(|n| n.split('/')).collect();
    if namespace.is_empty() || types.iter().any(|t| t.is_empty()) {
        return fail(format!("{}(): '{}' is not a valid resource type", a.name, args[at]));
    }
    if names.len() != types.len() || names.iter().any(|n| n.is_empty()) {
        return fail(format!(
            "{}(): the resource type '{}' needs {} name segment(s), got {:?}",
            a.name,
            args[at],
            types.len(),
            &args[at + 1..]
        ));
    }
    id.push_str("/providers/");
    id.push_str(namespace);
    for (t, n) in types.iter().zip(&names) {
        id.push_str(&format!("/{t}/{n}"));
    }
    Ok(id)
}

/// `concat()`: arrays (nulls skipped) into one array, or scalars into one string.
fn concat(a: &Args<'_>, meter: &mut Meter) -> Result<Value, EvalError> {
    a.count(1, usize::MAX)?;
    if a.values.iter().any(Value::is_array) {
        let mut count = 0usize;
        for (i, value) in a.values.iter().enumerate() {
            match value {
                Value::Array(more) => count = count.saturating_add(more.len()),
                Value::Null => {}
                _ => return Err(a.wrong(i, "an array, like the other arguments")),
            }
        }
        meter.items("concat()", count)?;
        let items = a.values.iter().filter_map(Value::as_array).flatten().cloned().collect();
        return Ok(Value::Array(items));
    }
    let mut texts = Vec::with_capacity(a.values.len());
    for (i, value) in a.values.iter().enumerate() {
        if value.is_object() {
            return Err(a.wrong(i, "a string or an array"));
        }
        texts.push(to_text(value));
    }
    meter.string("concat()", texts.iter().map(|t| t.len() as u128).sum())?;
    Ok(texts.concat().into())
}

/// .NET composite formatting as `format()` does it, without format specifiers or alignment. The
/// size of the result is known (and checked) before it is built.
fn format(template: &str, args: &[Value], meter: &mut Meter) -> Result<String, EvalError> {
    let texts: Vec<String> = args.iter().map(to_text).collect();
    let mut bytes: u128 = 0;
    format_pieces(template, texts.len(), |piece| {
        bytes += match piece {
            Piece::Char(c) => c.len_utf8() as u128,
            Piece::Arg(i) => texts[i].len() as u128,
        }
    })?;
    meter.string("format()", bytes)?;
    let mut out = String::with_capacity(usize::try_from(bytes).unwrap_or_default());
    format_pieces(template, texts.len(), |piece| match piece {
        Piece::Char(c) => out.push(c),
        Piece::Arg(i) => out.push_str(&texts[i]),
    })?;
    Ok(out)
}

/// A piece of a format string's result: a character, or the argument with that index.
#[derive(Debug, Clone, Copy)]
enum Piece {
    Char(char),
    Arg(usize),
}

/// Reads a format string with `args` arguments, handing each piece of the result to `each`.
fn format_pieces(template: &str, args: usize, mut each: impl FnMut(Piece)) -> Result<(), EvalError> {
    let mut chars = template.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '{' if chars.peek() == Some(&'{') => {
                chars.next();
                each(Piece::Char('{'));
            }
            '{' => {
                let mut item = String::new();
                loop {
                    match chars.next() {
                        Some('}') => break,
                        Some(c) => item.push(c),
                        None => {
                            return fail(format!(
                                "format(): '{{{}' in the format string has no closing '}}'",
                                crate::limits::shorten(&item, 40)
                            ))
                        }
                    }
                }
                let Ok(i) = item.trim().parse::<usize>() else {
                    return fail(format!(
                        "format(): '{{{}}}' is not supported (only '{{0}}', '{{1}}', ... without format specifiers)",
                        crate::limits::shorten(&item, 40)
                    ));
                };
                if i >= args {
                    return fail(format!("format(): '{{{i}}}' refers to a missing argument ({args} given)"));
                }
                each(Piece::Arg(i));
            }
            '}' if chars.peek() == Some(&'}') => {
                chars.next();
                each(Piece::Char('}'));
            }
            '}' => return fail("format(): a lone '}' in the format string (write '}}')"),
            c => each(Piece::Char(c)),
        }
    }
    Ok(())
}

/// `split()` with one or several delimiters, like .NET `String.Split(string[])`.
fn split(s: &str, delimiters: &[String], meter: &Meter) -> Result<Vec<String>, EvalError> {
    let delimiters: Vec<&str> = delimiters.iter().map(String::as_str).filter(|d| !d.is_empty()).collect();
    let mut parts = Vec::new();
    let mut start = 0;
    let mut rest = s.char_indices();
    while let Some((i, _)) = rest.next() {
        let tail = s.get(i..).unwrap_or_default();
        if let Some(d) = delimiters.iter().find(|d| tail.starts_with(**d)) {
            meter.items("split()", parts.len() + 2)?;
            parts.push(s.get(start..i).unwrap_or_default().to_owned());
            start = i + d.len();
            // Skip the rest of the delimiter (whole characters: it matched as a string).
            while rest.as_str().len() > s.len() - start {
                rest.next();
            }
        }
    }
    parts.push(s.get(start..).unwrap_or_default().to_owned());
    Ok(parts)
}

fn union_or_intersection(a: &Args<'_>, union: bool, meter: &mut Meter) -> Result<Value, EvalError> {
    let values = a.values;
    if values.iter().all(Value::is_object) {
        let maps: Vec<&Map<String, Value>> = values.iter().filter_map(Value::as_object).collect();
        let mut out = maps[0].clone();
        for map in &maps[1..] {
            if union {
                out.extend(map.iter().map(|(k, v)| (k.clone(), v.clone())));
            } else {
                let mut kept = Map::new();
                for (k, v) in out {
                    if let Some(w) = map.get(&k) {
                        if values_equal(&v, w, meter)? {
                            kept.insert(k, v);
                        }
                    }
                }
                out = kept;
            }
        }
        return Ok(Value::Object(out));
    }
    if values.iter().all(Value::is_array) {
        let arrays: Vec<&Vec<Value>> = values.iter().filter_map(Value::as_array).collect();
        let mut out: Vec<Value> = Vec::new();
        let candidates: Box<dyn Iterator<Item = &Value>> =
            if union { Box::new(arrays.iter().flat_map(|items| items.iter())) } else { Box::new(arrays[0].iter()) };
        for item in candidates {
            let mut everywhere = true;
            if !union {
                for other in &arrays[1..] {
                    if position(other, item, false, meter)?.is_none() {
                        everywhere = false;
                        break;
                    }
                }
            }
            if everywhere && position(&out, item, false, meter)?.is_none() {
                out.push(item.clone());
            }
        }
        return Ok(Value::Array(out));
    }
    fail(format!("{}() takes only objects or only arrays", a.name))
}

fn parse_json(name: &str, text: &str) -> Result<Value, EvalError> {
    serde_json::from_str(text).map_err(|e| EvalError::Message(format!("{name}(): the argument is not valid JSON: {e}")))
}

const BASE64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn base64_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, &b)| n | (u32::from(b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(BASE64[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let text = text.trim_end_matches('=');
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut bits, mut n) = (0u32, 0u32);
    for c in text.bytes() {
        let v = u32::from(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        });
        bits = (bits << 6) | v;
        n += 6;
        if n >= 8 {
            n -= 8;
            out.push((bits >> n) as u8);
            bits &= (1 << n) - 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use serde_json::{json, Value};

    use super::{base64_decode, base64_encode, call, check_known, EvalError, SUPPORTED};
    use crate::limits::Meter;
    use crate::{Limits, ResourceGroup};

    const RG: ResourceGroup<'static> = ResourceGroup { name: "rg", location: "westus", subscription_id: "sub" };

    fn ok(name: &str, args: Value) -> Value {
        let Value::Array(args) = args else { panic!("args must be an array") };
        match call(name, &args, &RG, &mut Meter::new(Limits::default())) {
            Ok(v) => v,
            Err(e) => panic!("{name}: {e:?}"),
        }
    }

    fn err(name: &str, args: Value) -> String {
        let Value::Array(args) = args else { panic!("args must be an array") };
        match call(name, &args, &RG, &mut Meter::new(Limits::default())) {
            Err(EvalError::Message(m)) => m,
            other => panic!("{name}: expected a message, got {other:?}"),
        }
    }

    #[test]
    fn every_supported_name_dispatches() {
        for name in SUPPORTED {
            if matches!(*name, "parameters" | "variables" | "if") {
                continue;
            }
            let result = call(name, &[], &RG, &mut Meter::new(Limits::default()));
            assert!(!matches!(result, Err(EvalError::UnknownFunction(_))), "{name}");
            assert!(check_known(&name.to_uppercase()).is_ok());
        }
        assert!(matches!(check_known("nope"), Err(EvalError::UnknownFunction(n)) if n == "nope"));
        assert!(matches!(check_known("listKeys"), Err(EvalError::Unsupported(_))));
        assert!(matches!(check_known("reference"), Err(EvalError::Unsupported(_))));
    }

    #[test]
    fn strings() {
        assert_eq!(ok("concat", json!(["a", 1, true, "b"])), json!("a1Trueb"));
        assert_eq!(ok("concat", json!([[1], null, [2, 3]])), json!([1, 2, 3]));
        assert_eq!(ok("format", json!(["{0}-{1}{{x}}", "a", 2])), json!("a-2{x}"));
        assert!(err("format", json!(["{0:N2}", 1])).contains("not supported"));
        assert!(err("format", json!(["{1}", 1])).contains("missing argument"));
        assert_eq!(ok("toLower", json!(["AbC"])), json!("abc"));
        assert_eq!(ok("toUpper", json!(["AbC"])), json!("ABC"));
        assert_eq!(ok("string", json!([{"a": [1, false]}])), json!(r#"{"a":[1,false]}"#));
        assert_eq!(ok("string", json!([true])), json!("True"));
        assert_eq!(ok("replace", json!(["a-b-c", "-", "+"])), json!("a+b+c"));
        assert_eq!(ok("substring", json!(["hello", 1, 3])), json!("ell"));
        assert_eq!(ok("substring", json!(["hello", 2])), json!("llo"));
        assert!(err("substring", json!(["hello", 4, 3])).contains("outside"));
        assert_eq!(ok("startsWith", json!(["Hello", "hE"])), json!(true));
        assert_eq!(ok("endsWith", json!(["Hello", "LO"])), json!(true));
        assert_eq!(ok("split", json!(["a,b;c", [",", ";"]])), json!(["a", "b", "c"]));
        assert_eq!(ok("split", json!(["a,,b", ","])), json!(["a", "", "b"]));
        assert_eq!(ok("trim", json!(["  x "])), json!("x"));
        assert_eq!(ok("padLeft", json!([7, 3, "0"])), json!("007"));
        assert_eq!(ok("indexOf", json!(["abcABC", "B"])), json!(1));
        assert_eq!(ok("lastIndexOf", json!(["abcABC", "B"])), json!(4));
        assert_eq!(ok("join", json!([["a", 1], "-"])), json!("a-1"));
        assert_eq!(ok("base64", json!(["hello!?"])), json!("aGVsbG8hPw=="));
        assert_eq!(ok("base64ToString", json!(["aGVsbG8hPw=="])), json!("hello!?"));
        assert_eq!(ok("base64ToJson", json!(["eyJhIjoxfQ=="])), json!({"a": 1}));
    }

    #[test]
    fn base64_round_trips() {
        for text in ["", "f", "fo", "foo", "foob", "fooba", "foobar"] {
            assert_eq!(base64_decode(&base64_encode(text.as_bytes())).unwrap(), text.as_bytes());
        }
        assert_eq!(base64_encode(b"foob"), "Zm9vYg==");
    }

    #[test]
    fn logic_and_conversions() {
        assert_eq!(ok("int", json!(["42"])), json!(42));
        assert_eq!(ok("bool", json!(["TRUE"])), json!(true));
        assert_eq!(ok("bool", json!([0])), json!(false));
        assert_eq!(ok("json", json!([r#"{"a":[1]}"#])), json!({"a": [1]}));
        assert!(err("json", json!(["{"])).contains("not valid JSON"));
        assert_eq!(ok("equals", json!([{"a": 1}, {"a": 1.0}])), json!(true));
        assert_eq!(ok("and", json!([true, true, false])), json!(false));
        assert_eq!(ok("or", json!([false, true])), json!(true));
        assert_eq!(ok("not", json!([false])), json!(true));
        assert!(err("not", json!(["x"])).contains("argument 1 of not() must be a bool, got string \"x\""));
        assert_eq!(ok("coalesce", json!([null, null, "x"])), json!("x"));
        assert_eq!(ok("greater", json!([2, 1])), json!(true));
        assert_eq!(ok("lessOrEquals", json!(["a", "a"])), json!(true));
    }

    #[test]
    fn collections() {
        assert_eq!(ok("length", json!(["héllo"])), json!(5));
        assert_eq!(ok("length", json!([{"a": 1}])), json!(1));
        assert_eq!(ok("empty", json!([[]])), json!(true));
        assert_eq!(ok("empty", json!([null])), json!(true));
        assert_eq!(ok("contains", json!(["abc", "B"])), json!(false));
        assert_eq!(ok("contains", json!([{"Key": 1}, "key"])), json!(true));
        assert_eq!(ok("contains", json!([[1, 2], 2])), json!(true));
        assert_eq!(ok("first", json!([[1, 2]])), json!(1));
        assert_eq!(ok("last", json!(["abc"])), json!("c"));
        assert_eq!(ok("skip", json!([[1, 2, 3], 1])), json!([2, 3]));
        assert_eq!(ok("take", json!(["abc", 5])), json!("abc"));
        assert_eq!(ok("createArray", json!([1, "a"])), json!([1, "a"]));
        assert_eq!(ok("createObject", json!(["a", 1, "b", [2]])), json!({"a": 1, "b": [2]}));
        assert_eq!(ok("union", json!([{"a": 1, "b": 1}, {"b": 2}])), json!({"a": 1, "b": 2}));
        assert_eq!(ok("union", json!([[1, 2], [2, 3]])), json!([1, 2, 3]));
        assert_eq!(ok("intersection", json!([[1, 2, 3], [3, 2]])), json!([2, 3]));
        assert_eq!(ok("intersection", json!([{"a": 1, "b": 1}, {"a": 1, "b": 2}])), json!({"a": 1}));
        assert!(err("union", json!([[1], {"a": 1}])).contains("only objects or only arrays"));
        assert_eq!(ok("items", json!([{"b": 2, "a": 1}])), json!([{"key": "a", "value": 1}, {"key": "b", "value": 2}]));
        assert_eq!(ok("range", json!([5, 3])), json!([5, 6, 7]));
        assert_eq!(ok("array", json!(["x"])), json!(["x"]));
    }

    #[test]
    fn numbers() {
        assert_eq!(ok("add", json!([2, 3])), json!(5));
        assert_eq!(ok("sub", json!([2, 3])), json!(-1));
        assert_eq!(ok("mul", json!([2, 3])), json!(6));
        assert_eq!(ok("div", json!([-7, 2])), json!(-3));
        assert_eq!(ok("mod", json!([7, 3])), json!(1));
        assert!(err("div", json!([1, 0])).contains("divide by zero"));
        assert!(err("add", json!([i64::MAX, 1])).contains("overflows"));
        assert_eq!(ok("min", json!([3, 1, 2])), json!(1));
        assert_eq!(ok("max", json!([[3, 1, 2]])), json!(3));
    }

    #[test]
    fn resource_ids() {
        assert_eq!(
            ok("resourceId", json!(["Microsoft.Devices/provisioningServices", "dps"])),
            json!("/subscriptions/sub/resourceGroups/rg/providers/Microsoft.Devices/provisioningServices/dps")
        );
        assert_eq!(
            ok("resourceId", json!(["other", "Microsoft.Devices/provisioningServices/certificates", "dps", "ca"])),
            json!("/subscriptions/sub/resourceGroups/other/providers/Microsoft.Devices/provisioningServices/dps/certificates/ca")
        );
        assert_eq!(
            ok("resourceId", json!(["s2", "g2", "Microsoft.Devices/provisioningServices/certificates", "dps/ca"])),
            json!("/subscriptions/s2/resourceGroups/g2/providers/Microsoft.Devices/provisioningServices/dps/certificates/ca")
        );
        assert_eq!(
            ok("subscriptionResourceId", json!(["Microsoft.Resources/resourceGroups", "rg2"])),
            json!("/subscriptions/sub/providers/Microsoft.Resources/resourceGroups/rg2")
        );
        assert_eq!(
            ok("tenantResourceId", json!(["Microsoft.Management/managementGroups", "mg"])),
            json!("/providers/Microsoft.Management/managementGroups/mg")
        );
        assert!(err("resourceId", json!(["Microsoft.Devices/provisioningServices/certificates", "dps"]))
            .contains("needs 2 name segment(s)"));
        assert!(err("resourceId", json!(["dps", "x"])).contains("needs a resource type"));
    }

    #[test]
    fn scope_objects() {
        assert_eq!(
            ok("resourceGroup", json!([])),
            json!({
                "id": "/subscriptions/sub/resourceGroups/rg",
                "name": "rg",
                "type": "Microsoft.Resources/resourceGroups",
                "location": "westus",
                "properties": {"provisioningState": "Succeeded"}
            })
        );
        assert_eq!(ok("subscription", json!([]))["id"], json!("/subscriptions/sub"));
        assert_eq!(ok("uniqueString", json!(["a"])).as_str().map(str::len), Some(13));
        assert_eq!(ok("guid", json!(["a"])).as_str().map(str::len), Some(36));
    }
}
