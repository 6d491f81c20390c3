//! Service API queries (`POST /enrollments/query`, `/enrollmentGroups/query`): the SQL-like
//! text the official clients send, and the `WHERE` conditions DPS documents.
//!
//! Accepted forms (docs/service-api.md, "Queries"): `*` (C, Node, Python SDKs), `SELECT *` (Azure
//! CLI), `SELECT * FROM enrollments` / `enrollmentGroups` (C#, Java), the Azure CLI IoT
//! extension's serialized object `{'additional_properties': {}, 'query': 'SELECT *'}`, and any of
//! these with `WHERE <condition>`. A condition compares a queryable field with a literal
//! (`=`, `!=`, `<>`, `<`, `<=`, `>`, `>=`), combined with `AND`, `OR`, `NOT` and parentheses.
//! Strings compare case-insensitively (ids and enum values are case-insensitive in DPS).
//! Everything else is refused with a message that says what is supported.

use serde_json::Value;

use crate::error::{Error, Result};

/// Fields a `WHERE` clause may name (as in the enrollment documents; matched case-insensitively).
pub const QUERYABLE_FIELDS: &[&str] = &[
    "registrationId",
    "enrollmentGroupId",
    "deviceId",
    "provisioningStatus",
    "attestation.type",
    "allocationPolicy",
    "iotHubHostName",
    "capabilities.iotEdge",
    "etag",
    "createdDateTimeUtc",
    "lastUpdatedDateTimeUtc",
    "reprovisionPolicy.updateHubAssignment",
    "reprovisionPolicy.migrateDeviceData",
    "customAllocationDefinition.webhookUrl",
    "customAllocationDefinition.apiVersion",
];

/// A parsed query: which collection it names (if any) and its condition (if any).
#[derive(Clone, Debug, PartialEq)]
pub struct Query {
    pub collection: Option<String>,
    pub filter: Option<Cond>,
}

/// A `WHERE` condition.
#[derive(Clone, Debug, PartialEq)]
pub enum Cond {
    Cmp { field: Vec<String>, op: Op, value: Value },
    And(Box<Cond>, Box<Cond>),
    Or(Box<Cond>, Box<Cond>),
    Not(Box<Cond>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

fn invalid(msg: impl std::fmt::Display) -> Error {
    Error::Invalid(format!(
        "{msg}; supported: *, SELECT *, SELECT * FROM <collection> [WHERE field op literal [AND|OR …]] on {}",
        QUERYABLE_FIELDS.join(", ")
    ))
}

/// The query inside the Azure CLI IoT extension's text of a serialized object:
/// `{'additional_properties': {}, 'query': 'SELECT *'}`.
fn unwrap_serialized(text: &str) -> Option<String> {
    let t = text.trim();
    if !t.starts_with('{') {
        return None;
    }
    let (_, after) = t.split_once("'query'").or_else(|| t.split_once("\"query\""))?;
    let after = after.trim_start().strip_prefix(':')?.trim_start();
    let quote = after.chars().next().filter(|c| *c == '\'' || *c == '"')?;
    let mut out = String::new();
    let mut chars = after.chars().skip(1);
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.push(chars.next()?),
            c if c == quote => return Some(out),
            c => out.push(c),
        }
    }
    None
}

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Word(String),
    Str(String),
    Num(f64),
    Sym(&'static str),
}

fn tokens(s: &str) -> Result<Vec<Tok>> {
    let mut out = Vec::new();
    let mut it = s.char_indices().peekable();
    while let Some((i, c)) = it.next() {
        match c {
            c if c.is_whitespace() => {}
            '(' => out.push(Tok::Sym("(")),
            ')' => out.push(Tok::Sym(")")),
            '*' => out.push(Tok::Sym("*")),
            ',' => out.push(Tok::Sym(",")),
            '=' => out.push(Tok::Sym("=")),
            '!' | '<' | '>' => {
                let next = it.peek().map(|(_, n)| *n);
                let sym = match (c, next) {
                    ('!', Some('=')) => "!=",
                    ('<', Some('=')) => "<=",
                    ('>', Some('=')) => ">=",
                    ('<', Some('>')) => "<>",
                    ('<', _) => "<",
                    ('>', _) => ">",
                    _ => return Err(invalid(format!("unexpected {c:?} at offset {i}"))),
                };
                if sym.len() == 2 {
                    it.next();
                }
                out.push(Tok::Sym(sym));
            }
            '\'' | '"' => {
                let mut text = String::new();
                let mut closed = false;
                while let Some((_, d)) = it.next() {
                    if d == c {
                        // A doubled quote is a quote.
                        if it.peek().map(|(_, n)| *n) == Some(c) {
                            it.next();
                            text.push(c);
                            continue;
                        }
                        closed = true;
                        break;
                    }
                    text.push(d);
                }
                if !closed {
                    return Err(invalid("a string literal is not closed"));
                }
                out.push(Tok::Str(text));
            }
            c if c.is_ascii_digit() || c == '-' || c == '+' => {
                let mut text = String::from(c);
                while let Some((_, d)) = it.peek().copied() {
                    if d.is_ascii_digit() || d == '.' || d == 'e' || d == 'E' {
                        text.push(d);
                        it.next();
                    } else {
                        break;
                    }
                }
                let n = text.parse::<f64>().map_err(|_| invalid(format!("{text:?} is not a number")))?;
                out.push(Tok::Num(n));
            }
            c if c.is_alphanumeric() || c == '_' || c == '$' || c == '.' || c == '[' || c == ']' => {
                let mut text = String::from(c);
                while let Some((_, d)) = it.peek().copied() {
                    if d.is_alphanumeric() || matches!(d, '_' | '$' | '.' | '[' | ']') {
                        text.push(d);
                        it.next();
                    } else {
                        break;
                    }
                }
                out.push(Tok::Word(text));
            }
            other => return Err(invalid(format!("unexpected {other:?} at offset {i}"))),
        }
    }
    Ok(out)
}

struct Parser {
    toks: Vec<Tok>,
    pos: usize,
    /// The alias of `FROM <collection> <alias>` (`c` in `SELECT * FROM enrollments c`).
    alias: Option<String>,
    collection: Option<String>,
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos)
    }

    fn keyword(&mut self, k: &str) -> bool {
        if matches!(self.peek(), Some(Tok::Word(w)) if w.eq_ignore_ascii_case(k)) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn sym(&mut self, s: &str) -> bool {
        if matches!(self.peek(), Some(Tok::Sym(x)) if *x == s) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn or(&mut self) -> Result<Cond> {
        let mut left = self.and()?;
        while self.keyword("or") {
            left = Cond::Or(Box::new(left), Box::new(self.and()?));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Cond> {
        let mut left = self.unary()?;
        while self.keyword("and") {
            left = Cond::And(Box::new(left), Box::new(self.unary()?));
        }
        Ok(left)
    }

    fn unary(&mut self) -> Result<Cond> {
        if self.keyword("not") {
            return Ok(Cond::Not(Box::new(self.unary()?)));
        }
        if self.sym("(") {
            let c = self.or()?;
            if !self.sym(")") {
                return Err(invalid("a parenthesis is not closed"));
            }
            return Ok(c);
        }
        self.comparison()
    }

    fn field(&mut self) -> Result<Vec<String>> {
        let Some(Tok::Word(w)) = self.peek().cloned() else {
            return Err(invalid("a condition must start with a field name"));
        };
        self.pos += 1;
        let mut parts: Vec<&str> = w.split('.').collect();
        let alias = self.alias.as_deref().or(self.collection.as_deref());
        if parts.len() > 1 && alias.is_some_and(|a| a.eq_ignore_ascii_case(parts[0])) {
            parts.remove(0);
        }
        let dotted = parts.join(".");
        match QUERYABLE_FIELDS.iter().find(|f| f.eq_ignore_ascii_case(&dotted)) {
            Some(f) => Ok(f.split('.').map(str::to_owned).collect()),
            None => Err(invalid(format!("field {dotted:?} cannot be queried"))),
        }
    }

    fn comparison(&mut self) -> Result<Cond> {
        let field = self.field()?;
        let op = match self.peek() {
            Some(Tok::Sym("=")) => Op::Eq,
            Some(Tok::Sym("!=")) | Some(Tok::Sym("<>")) => Op::Ne,
            Some(Tok::Sym("<")) => Op::Lt,
            Some(Tok::Sym("<=")) => Op::Le,
            Some(Tok::Sym(">")) => Op::Gt,
            Some(Tok::Sym(">=")) => Op::Ge,
            _ => return Err(invalid(format!("expected a comparison (=, !=, <, <=, >, >=) after {}", field.join(".")))),
        };
        self.pos += 1;
        let value = match self.peek().cloned() {
            Some(Tok::Str(s)) => Value::String(s),
            Some(Tok::Num(n)) => serde_json::Number::from_f64(n).map_or(Value::Null, Value::Number),
            Some(Tok::Word(w)) if w.eq_ignore_ascii_case("true") => Value::Bool(true),
            Some(Tok::Word(w)) if w.eq_ignore_ascii_case("false") => Value::Bool(false),
            Some(Tok::Word(w)) if w.eq_ignore_ascii_case("null") => Value::Null,
            _ => {
                return Err(invalid(format!(
                    "expected a literal ('text', number, true, false, null) after {}",
                    field.join(".")
                )))
            }
        };
        self.pos += 1;
        Ok(Cond::Cmp { field, op, value })
    }
}

impl Query {
    /// Parses the query text of a query specification.
    pub fn parse(text: &str) -> Result<Query> {
        let unwrapped = unwrap_serialized(text);
        let text = unwrapped.as_deref().unwrap_or(text).trim();
        if text.is_empty() || text == "*" {
            return Ok(Query { collection: None, filter: None });
        }
        let mut p = Parser { toks: tokens(text)?, pos: 0, alias: None, collection: None };
        if !p.keyword("select") {
            return Err(invalid(format!("query {text:?} does not start with SELECT")));
        }
        if !p.sym("*") {
            return Err(invalid("only SELECT * is supported (no projections)"));
        }
        if p.keyword("from") {
            match p.peek().cloned() {
                Some(Tok::Word(c)) => {
                    p.pos += 1;
                    p.collection = Some(c);
                }
                _ => return Err(invalid("FROM needs a collection")),
            }
            if let Some(Tok::Word(a)) = p.peek().cloned() {
                if !a.eq_ignore_ascii_case("where") {
                    p.pos += 1;
                    p.alias = Some(a);
                }
            }
        }
        let filter = if p.keyword("where") { Some(p.or()?) } else { None };
        if let Some(t) = p.peek() {
            return Err(invalid(format!("unexpected {t:?} in query {text:?}")));
        }
        Ok(Query { collection: p.collection, filter })
    }

    /// Checks the collection named (if any) is `expected` (case-insensitive).
    pub fn check_collection(&self, expected: &str) -> Result<()> {
        match &self.collection {
            Some(c) if !c.eq_ignore_ascii_case(expected) => {
                Err(Error::Invalid(format!("this query endpoint answers FROM {expected}, not FROM {c}")))
            }
            _ => Ok(()),
        }
    }

    /// Whether `doc` (an enrollment or group in its wire shape) satisfies the condition.
    pub fn matches(&self, doc: &Value) -> bool {
        self.filter.as_ref().is_none_or(|c| eval(c, doc))
    }
}

fn lookup<'a>(doc: &'a Value, path: &[String]) -> Option<&'a Value> {
    let mut cur = doc;
    for p in path {
        cur = cur.as_object()?.iter().find(|(k, _)| k.eq_ignore_ascii_case(p)).map(|(_, v)| v)?;
    }
    Some(cur)
}

fn compare(a: &Value, b: &Value) -> Option<std::cmp::Ordering> {
    match (a, b) {
        (Value::String(x), Value::String(y)) => Some(x.to_lowercase().cmp(&y.to_lowercase())),
        (Value::Number(x), Value::Number(y)) => x.as_f64()?.partial_cmp(&y.as_f64()?),
        (Value::Bool(x), Value::Bool(y)) => Some(x.cmp(y)),
        (Value::Null, Value::Null) => Some(std::cmp::Ordering::Equal),
        _ => None,
    }
}

fn eval(c: &Cond, doc: &Value) -> bool {
    use std::cmp::Ordering::{Equal, Greater, Less};
    match c {
        Cond::And(a, b) => eval(a, doc) && eval(b, doc),
        Cond::Or(a, b) => eval(a, doc) || eval(b, doc),
        Cond::Not(a) => !eval(a, doc),
        Cond::Cmp { field, op, value } => {
            let actual = lookup(doc, field).unwrap_or(&Value::Null);
            let ord = compare(actual, value);
            match op {
                Op::Eq => ord == Some(Equal),
                Op::Ne => ord != Some(Equal),
                Op::Lt => ord == Some(Less),
                Op::Le => matches!(ord, Some(Less | Equal)),
                Op::Gt => ord == Some(Greater),
                Op::Ge => matches!(ord, Some(Greater | Equal)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    #[test]
    fn every_form_the_clients_send() {
        for q in [
            "*",
            "",
            "SELECT *",
            "select   *",
            "SELECT * FROM enrollments",
            "SELECT * FROM enrollmentGroups",
            "{'additional_properties': {}, 'query': 'SELECT *'}",
            "{\"query\": \"SELECT * FROM enrollments\"}",
        ] {
            let parsed = Query::parse(q).unwrap_or_else(|e| panic!("{q}: {e}"));
            assert!(parsed.filter.is_none(), "{q}");
            assert!(parsed.matches(&json!({})), "{q}");
        }
        assert!(Query::parse("SELECT * FROM enrollments").unwrap().check_collection("enrollmentGroups").is_err());
        assert!(Query::parse("SELECT * FROM ENROLLMENTS").unwrap().check_collection("enrollments").is_ok());
    }

    #[test]
    fn where_on_documented_fields() {
        let on = json!({ "registrationId": "Dev-1", "provisioningStatus": "enabled", "attestation": { "type": "symmetricKey" }, "capabilities": { "iotEdge": false } });
        let off = json!({ "registrationId": "dev-2", "provisioningStatus": "disabled", "attestation": { "type": "x509" }, "allocationPolicy": "static" });
        let q = |s: &str| Query::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"));
        let w = q("SELECT * FROM enrollments WHERE provisioningStatus = 'enabled'");
        assert!(w.matches(&on) && !w.matches(&off));
        let w =
            q("SELECT * FROM enrollments c WHERE c.attestation.type = \"x509\" AND NOT (allocationPolicy != 'static')");
        assert!(!w.matches(&on) && w.matches(&off));
        let w = q("SELECT * WHERE registrationId = 'dev-1' OR capabilities.iotEdge = true");
        assert!(w.matches(&on) && !w.matches(&off), "ids compare case-insensitively");
        let w =
            q("{'additional_properties': {}, 'query': \"SELECT * FROM enrollments WHERE allocationPolicy = null\"}");
        assert!(w.matches(&on) && !w.matches(&off), "null matches a missing field");
        let w = q("SELECT * WHERE registrationId >= 'dev-2'");
        assert!(!w.matches(&on) && w.matches(&off));
    }

    #[test]
    fn what_is_not_supported_is_refused_clearly() {
        for (q, needle) in [
            ("SELECT registrationId FROM enrollments", "only SELECT *"),
            ("SELECT * FROM enrollments WHERE attestation.symmetricKey.primaryKey = 'x'", "cannot be queried"),
            ("SELECT * WHERE provisioningStatus LIKE 'e%'", "comparison"),
            ("SELECT * WHERE (provisioningStatus = 'enabled'", "parenthesis"),
            ("SELECT * WHERE provisioningStatus = 'enabled", "not closed"),
            ("DELETE FROM enrollments", "SELECT"),
            ("SELECT * FROM enrollments ORDER BY registrationId", "unexpected"),
            ("SELECT * WHERE provisioningStatus = ", "literal"),
        ] {
            let e = Query::parse(q).expect_err(q).to_string();
            assert!(e.contains(needle), "{q}: {e}");
            assert!(e.contains("provisioningStatus"), "the message lists the queryable fields: {e}");
        }
    }
}
