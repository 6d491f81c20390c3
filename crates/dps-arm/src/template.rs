//! The evaluator: parameters, variables, resources and outputs of one template.

use serde_json::{Map, Value};

use crate::expr::{self, Expr};
use crate::functions::{self, describe, get_ci, EvalError};
use crate::limits::{json_len, shorten, Meter};
use crate::{relax_json, ArmError, Deployment, DeploymentInput, Limits, Resource, ResourceGroup};

/// How many characters of an expression an error message quotes.
const SHOWN_EXPRESSION: usize = 200;

fn too_many(section: &str, what: &str, count: usize, max: usize) -> ArmError {
    ArmError::Limit {
        at: section.to_owned(),
        expression: None,
        message: format!("the template has {count} {what}, more than the {max} ARM allows"),
    }
}

fn too_large(at: &str, document: &str, bytes: usize, max: usize) -> ArmError {
    ArmError::Limit {
        at: at.to_owned(),
        expression: None,
        message: format!("{document} is {bytes} bytes long, more than the {max} bytes ARM allows"),
    }
}

pub(crate) fn evaluate(input: &DeploymentInput<'_>, limits: &Limits) -> Result<Deployment, ArmError> {
    if input.template_text.len() > limits.template_bytes {
        return Err(too_large("template", "the template", input.template_text.len(), limits.template_bytes));
    }
    if let Some(text) = input.parameters_file_text.filter(|t| t.len() > limits.parameters_file_bytes) {
        return Err(too_large("parameters file", "the parameters file", text.len(), limits.parameters_file_bytes));
    }
    let template = parse_json(input.template_text, "template")?;
    let Value::Object(root) = &template else {
        return Err(invalid("template", "must be a JSON object with 'parameters', 'variables' and 'resources'"));
    };
    if let Some(version) = get_ci(root, "languageVersion") {
        return Err(ArmError::Unsupported {
            path: "languageVersion".to_owned(),
            message: format!(
                "templates with languageVersion {version} (symbolic resource names) are not supported: \
                 use a template without languageVersion"
            ),
        });
    }
    match get_ci(root, "functions") {
        None | Some(Value::Null) => {}
        Some(Value::Array(items)) if items.is_empty() => {}
        Some(_) => {
            return Err(ArmError::Unsupported {
                path: "functions".to_owned(),
                message: "user-defined functions are not supported".to_owned(),
            })
        }
    }
    let declarations = section(root, "parameters")?;
    let variables = section(root, "variables")?;
    let outputs = section(root, "outputs")?;
    for (name, map, max) in [
        ("parameters", declarations, limits.parameters),
        ("variables", variables, limits.variables),
        ("outputs", outputs, limits.outputs),
    ] {
        let count = map.map_or(0, Map::len);
        if count > max {
            return Err(too_many(name, name, count, max));
        }
    }
    let resources = match get_ci(root, "resources") {
        Some(Value::Array(items)) => items,
        Some(Value::Object(_)) => {
            return Err(ArmError::Unsupported {
                path: "resources".to_owned(),
                message: "resources given as an object (symbolic names) are not supported: use an array".to_owned(),
            })
        }
        Some(other) => return Err(invalid("resources", format!("must be an array, got {}", describe(other)))),
        None => return Err(invalid("template", "has no 'resources' array")),
    };

    let mut engine = Engine::new(input.resource_group, declarations, variables, *limits)?;
    if let Some(text) = input.parameters_file_text {
        engine.apply_parameters_file(text)?;
    }
    for (name, text) in input.parameters {
        engine.apply_command_line(name, text)?;
    }
    let parameters = engine.resolve_parameters()?;
    engine.resolve_variables()?;

    let mut evaluated = Vec::new();
    let mut placeholders = Vec::new();
    engine.resources(resources, "resources", None, &mut evaluated, &mut placeholders)?;
    if !placeholders.is_empty() {
        return Err(ArmError::Placeholders(placeholders));
    }
    let outputs = engine.outputs(outputs)?;
    let total = evaluated.iter().map(|r| json_len(&r.body)).chain(outputs.values().map(json_len)).sum::<usize>();
    if total > limits.deployment_bytes {
        return Err(ArmError::Limit {
            at: "template".to_owned(),
            expression: None,
            message: format!(
                "the evaluated resources and outputs are {total} bytes of JSON, more than the {} bytes ARM allows \
                 for a template after expansion",
                limits.deployment_bytes
            ),
        });
    }
    Ok(Deployment { resources: evaluated, outputs, parameters })
}

fn invalid(path: impl Into<String>, message: impl Into<String>) -> ArmError {
    ArmError::Invalid { path: path.into(), message: message.into() }
}

/// The error of the expression string `s` at `at` (kept out of the evaluator's recursive frames).
#[cold]
#[inline(never)]
fn expression_error(e: EvalError, s: &str, at: &Path<'_>) -> ArmError {
    match e {
        EvalError::Message(message) => {
            ArmError::Expression { at: at.render(), expression: shorten(s, SHOWN_EXPRESSION), message }
        }
        EvalError::UnknownFunction(name) => ArmError::UnknownFunction { name, at: at.render() },
        EvalError::UnknownVariable(name) => ArmError::UnknownVariable { name, at: at.render() },
        EvalError::Unsupported(message) => ArmError::Unsupported { path: at.render(), message },
        EvalError::Limit(_) => limit_error(e, at, Some(s)),
        EvalError::Arm(e) => *e,
    }
}

#[cold]
#[inline(never)]
fn expression_too_long(s: &str, at: &Path<'_>, max: usize) -> ArmError {
    let message =
        format!("the expression is {} characters long, more than the {max} characters ARM allows", s.chars().count());
    ArmError::Limit { at: at.render(), expression: Some(shorten(s, SHOWN_EXPRESSION)), message }
}

/// The [`ArmError::Limit`] of a bound reached at `at`, while evaluating `expression` if any.
#[cold]
#[inline(never)]
fn limit_error(e: EvalError, at: &Path<'_>, expression: Option<&str>) -> ArmError {
    let message = match e {
        EvalError::Limit(message) => message,
        other => format!("{other:?}"),
    };
    ArmError::Limit { at: at.render(), expression: expression.map(|s| shorten(s, SHOWN_EXPRESSION)), message }
}

/// Parses relaxed JSON (comments and trailing commas allowed, a leading BOM ignored).
fn parse_json(text: &str, document: &'static str) -> Result<Value, ArmError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    serde_json::from_str(&relax_json(text)).map_err(|e| {
        let (line, column) = (e.line(), e.column());
        let full = e.to_string();
        let message = full.strip_suffix(&format!(" at line {line} column {column}")).unwrap_or(&full).to_owned();
        ArmError::Json { document, line, column, message }
    })
}

/// An optional top-level object such as `parameters`; absent or null reads as empty.
fn section<'t>(root: &'t Map<String, Value>, key: &str) -> Result<Option<&'t Map<String, Value>>, ArmError> {
    match get_ci(root, key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(map)) => Ok(Some(map)),
        Some(other) => Err(invalid(key, format!("must be an object, got {}", describe(other)))),
    }
}

/// Appends a key to a JSON path: `.key` when it reads as an identifier, `['key']` otherwise (a
/// key longer than 64 characters is cut, so that messages stay short).
pub(crate) fn join_key(path: &str, key: &str) -> String {
    let plain = key.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == '$')
        && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$');
    let key = shorten(key, 64);
    if plain {
        format!("{path}.{key}")
    } else {
        format!("{path}['{}']", key.replace('\'', "\\'"))
    }
}

/// A JSON path, rendered (with [`join_key`]) only when a message needs it: building the text of
/// every path while walking a template would cost the length of the path at every node.
#[derive(Debug, Clone, Copy)]
enum Path<'p> {
    Root(&'p str),
    Key(&'p Path<'p>, &'p str),
    Index(&'p Path<'p>, usize),
}

impl Path<'_> {
    fn render(&self) -> String {
        match self {
            Path::Root(text) => (*text).to_owned(),
            Path::Key(parent, key) => join_key(&parent.render(), key),
            Path::Index(parent, i) => format!("{}[{i}]", parent.render()),
        }
    }
}

/// What a template string is: plain text, `[[`-escaped text, or an expression.
enum Text<'s> {
    Literal(&'s str),
    Expression(&'s str),
}

fn classify(s: &str) -> Text<'_> {
    if s.starts_with("[[") && s.ends_with(']') {
        Text::Literal(&s[1..])
    } else if s.len() >= 2 && s.starts_with('[') && s.ends_with(']') {
        Text::Expression(&s[1..s.len() - 1])
    } else {
        Text::Literal(s)
    }
}

/// A string that looks like an unfilled documentation placeholder: `<...>` with no inner `<`/`>`.
fn is_placeholder(s: &str) -> bool {
    s.len() >= 3 && s.starts_with('<') && s.ends_with('>') && !s[1..s.len() - 1].contains(['<', '>'])
}

/// Placeholders reported at most (the message lists each).
const MAX_PLACEHOLDERS: usize = 50;

fn collect_placeholders(value: &Value, path: &Path<'_>, found: &mut Vec<(String, String)>) {
    if found.len() >= MAX_PLACEHOLDERS {
        return;
    }
    match value {
        Value::String(s) if is_placeholder(s) => found.push((path.render(), shorten(s, 200))),
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                collect_placeholders(item, &Path::Index(path, i), found);
            }
        }
        Value::Object(map) => {
            for (key, item) in map {
                collect_placeholders(item, &Path::Key(path, key), found);
            }
        }
        _ => {}
    }
}

/// Finds the first `copy` property loop (`"copy": [{"name": .., "count": .., "input": ..}]`).
fn find_property_copy(value: &Value, path: &Path<'_>) -> Option<String> {
    match value {
        Value::Object(map) => map.iter().find_map(|(key, item)| {
            let here = Path::Key(path, key);
            let is_loop = key.eq_ignore_ascii_case("copy")
                && item.as_array().is_some_and(|loops| {
                    loops.iter().any(|l| l.as_object().is_some_and(|l| get_ci(l, "input").is_some()))
                });
            if is_loop {
                Some(here.render())
            } else {
                find_property_copy(item, &here)
            }
        }),
        Value::Array(items) => {
            items.iter().enumerate().find_map(|(i, item)| find_property_copy(item, &Path::Index(path, i)))
        }
        _ => None,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ParamType {
    String,
    SecureString,
    Int,
    Bool,
    Object,
    SecureObject,
    Array,
}

impl ParamType {
    fn parse(text: &str) -> Option<Self> {
        Some(match text.to_ascii_lowercase().as_str() {
            "string" => Self::String,
            "securestring" => Self::SecureString,
            "int" => Self::Int,
            "bool" => Self::Bool,
            "object" => Self::Object,
            "secureobject" => Self::SecureObject,
            "array" => Self::Array,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            Self::String => "string",
            Self::SecureString => "securestring",
            Self::Int => "int",
            Self::Bool => "bool",
            Self::Object => "object",
            Self::SecureObject => "secureObject",
            Self::Array => "array",
        }
    }

    fn accepts(self, value: &Value) -> bool {
        match self {
            Self::String | Self::SecureString => value.is_string(),
            Self::Int => value.as_i64().is_some(),
            Self::Bool => value.is_boolean(),
            Self::Object | Self::SecureObject => value.is_object(),
            Self::Array => value.is_array(),
        }
    }

    /// Converts a `--parameters name=text` value to this type.
    fn parse_command_line(self, text: &str) -> Option<Value> {
        match self {
            Self::String | Self::SecureString => Some(Value::String(text.to_owned())),
            Self::Int => text.trim().parse::<i64>().ok().map(Value::from),
            Self::Bool if text.trim().eq_ignore_ascii_case("true") => Some(Value::Bool(true)),
            Self::Bool if text.trim().eq_ignore_ascii_case("false") => Some(Value::Bool(false)),
            Self::Bool => None,
            Self::Object | Self::SecureObject | Self::Array => {
                serde_json::from_str::<Value>(&relax_json(text)).ok().filter(|v| self.accepts(v))
            }
        }
    }
}

#[derive(Debug)]
struct ParamDecl {
    name: String,
    ty: ParamType,
    default: Option<Value>,
    allowed: Option<Vec<Value>>,
    min_value: Option<i64>,
    max_value: Option<i64>,
    min_length: Option<i64>,
    max_length: Option<i64>,
}

impl ParamDecl {
    fn parse(name: &str, declaration: &Value) -> Result<Self, ArmError> {
        let path = join_key("parameters", name);
        let Value::Object(map) = declaration else {
            return Err(invalid(path, format!("must be an object with a 'type', got {}", describe(declaration))));
        };
        let ty = match get_ci(map, "type") {
            Some(Value::String(t)) => ParamType::parse(t).ok_or_else(|| {
                invalid(
                    join_key(&path, "type"),
                    format!("unknown type '{t}' (use string, securestring, int, bool, object, secureObject or array)"),
                )
            })?,
            Some(other) => {
                return Err(invalid(join_key(&path, "type"), format!("must be a string, got {}", describe(other))))
            }
            None => return Err(invalid(path, "has no 'type'")),
        };
        let allowed = match get_ci(map, "allowedValues") {
            None => None,
            Some(Value::Array(values)) => Some(values.clone()),
            Some(other) => {
                return Err(invalid(
                    join_key(&path, "allowedValues"),
                    format!("must be an array, got {}", describe(other)),
                ))
            }
        };
        let limit = |key: &str| -> Result<Option<i64>, ArmError> {
            match get_ci(map, key) {
                None => Ok(None),
                Some(value) => value.as_i64().map(Some).ok_or_else(|| {
                    invalid(join_key(&path, key), format!("must be an integer, got {}", describe(value)))
                }),
            }
        };
        Ok(Self {
            name: name.to_owned(),
            ty,
            default: get_ci(map, "defaultValue").cloned(),
            allowed,
            min_value: limit("minValue")?,
            max_value: limit("maxValue")?,
            min_length: limit("minLength")?,
            max_length: limit("maxLength")?,
        })
    }

    fn wrong_type(&self, value: &Value) -> ArmError {
        ArmError::WrongType {
            name: self.name.clone(),
            expected: self.ty.name().to_owned(),
            value: shorten(&value.to_string(), 200),
        }
    }

    /// Checks `allowedValues` and the min/max constraints.
    fn validate(&self, value: &Value, meter: &mut Meter) -> Result<(), ArmError> {
        if let Some(allowed) = &self.allowed {
            let limit = |e: EvalError| match e {
                EvalError::Limit(message) => ArmError::Limit {
                    at: join_key(&join_key("parameters", &self.name), "allowedValues"),
                    expression: None,
                    message,
                },
                other => invalid("parameters", format!("{other:?}")),
            };
            let mut permitted = |v: &Value| -> Result<bool, ArmError> {
                for a in allowed {
                    if functions::values_equal(a, v, meter).map_err(limit)? {
                        return Ok(true);
                    }
                }
                Ok(false)
            };
            let ok = match value {
                Value::Array(items) if self.ty == ParamType::Array => {
                    permitted(value)? || {
                        let mut all = true;
                        for item in items {
                            if !permitted(item)? {
                                all = false;
                                break;
                            }
                        }
                        all
                    }
                }
                _ => permitted(value)?,
            };
            if !ok {
                return Err(ArmError::NotAllowed {
                    name: self.name.clone(),
                    value: value.clone(),
                    allowed: allowed.clone(),
                });
            }
        }
        let constraint = |message: String| Err(ArmError::Constraint { name: self.name.clone(), message });
        if let Some(n) = value.as_i64() {
            if let Some(min) = self.min_value.filter(|&min| n < min) {
                return constraint(format!("must be at least {min}, got {n}"));
            }
            if let Some(max) = self.max_value.filter(|&max| n > max) {
                return constraint(format!("must be at most {max}, got {n}"));
            }
        }
        let (length, unit) = match value {
            Value::String(s) => (s.chars().count() as i64, "characters"),
            Value::Array(items) => (items.len() as i64, "elements"),
            _ => return Ok(()),
        };
        if let Some(min) = self.min_length.filter(|&min| length < min) {
            return constraint(format!("must have at least {min} {unit}, got {length}"));
        }
        if let Some(max) = self.max_length.filter(|&max| length > max) {
            return constraint(format!("must have at most {max} {unit}, got {length}"));
        }
        Ok(())
    }
}

/// What a call names: a parameter, a variable (by index), or a function.
#[derive(Debug, Clone, Copy)]
enum Lookup {
    Parameter(usize),
    Variable(usize),
    Function,
}

/// Which part of the template an expression sits in; `variables()` is not allowed in parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Section {
    Parameters,
    Body,
}

#[derive(Debug)]
struct Engine<'a> {
    rg: ResourceGroup<'a>,
    params: Vec<ParamDecl>,
    /// Values passed by file or command line, by declaration index.
    provided: Vec<Option<Value>>,
    param_values: Vec<Option<Value>>,
    param_stack: Vec<usize>,
    vars: Vec<(String, Value)>,
    var_values: Vec<Option<Value>>,
    var_stack: Vec<usize>,
    section: Section,
    meter: Meter,
}

impl<'a> Engine<'a> {
    fn new(
        rg: ResourceGroup<'a>,
        declarations: Option<&Map<String, Value>>,
        variables: Option<&Map<String, Value>>,
        limits: Limits,
    ) -> Result<Self, ArmError> {
        let params = declarations
            .into_iter()
            .flatten()
            .map(|(name, declaration)| ParamDecl::parse(name, declaration))
            .collect::<Result<Vec<_>, _>>()?;
        let vars: Vec<(String, Value)> =
            variables.into_iter().flatten().map(|(name, value)| (name.clone(), value.clone())).collect();
        if let Some((name, _)) = vars.iter().find(|(name, _)| name.eq_ignore_ascii_case("copy")) {
            return Err(ArmError::Unsupported {
                path: join_key("variables", name),
                message: "copy loops in variables are not supported".to_owned(),
            });
        }
        Ok(Self {
            rg,
            provided: vec![None; params.len()],
            param_values: vec![None; params.len()],
            params,
            param_stack: Vec::new(),
            var_values: vec![None; vars.len()],
            vars,
            var_stack: Vec::new(),
            section: Section::Body,
            meter: Meter::new(limits),
        })
    }

    fn param_index(&self, name: &str) -> Option<usize> {
        self.params
            .iter()
            .position(|p| p.name == name)
            .or_else(|| self.params.iter().position(|p| p.name.eq_ignore_ascii_case(name)))
    }

    fn var_index(&self, name: &str) -> Option<usize> {
        self.vars
            .iter()
            .position(|(n, _)| n == name)
            .or_else(|| self.vars.iter().position(|(n, _)| n.eq_ignore_ascii_case(name)))
    }

    fn apply_parameters_file(&mut self, text: &str) -> Result<(), ArmError> {
        const FORMAT: &str = "use the ARM parameters file format \
            {\"$schema\": \"https://schema.management.azure.com/schemas/2019-04-01/deploymentParameters.json#\", \
            \"contentVersion\": \"1.0.0.0\", \"parameters\": {\"name\": {\"value\": ...}}}";
        let file = parse_json(text, "parameters file")?;
        let entries = match &file {
            Value::Object(root) => match get_ci(root, "parameters") {
                Some(Value::Object(entries)) => entries,
                _ => return Err(invalid("parameters file", format!("has no 'parameters' object: {FORMAT}"))),
            },
            _ => return Err(invalid("parameters file", format!("must be a JSON object: {FORMAT}"))),
        };
        for (name, entry) in entries {
            let path = format!("{} in the parameters file", join_key("parameters", name));
            let index = self
                .param_index(name)
                .ok_or_else(|| ArmError::UnknownParameter { name: name.clone(), origin: "the parameters file" })?;
            let Value::Object(entry) = entry else {
                return Err(invalid(path, format!("must be an object like {{\"value\": ...}}: {FORMAT}")));
            };
            let value = match (get_ci(entry, "value"), get_ci(entry, "reference")) {
                (Some(value), _) => value.clone(),
                (None, Some(_)) => {
                    return Err(ArmError::Unsupported {
                        path,
                        message: "Key Vault references are not supported: give the value".to_owned(),
                    })
                }
                (None, None) => return Err(invalid(path, "has no 'value'")),
            };
            let decl = &self.params[index];
            if !decl.ty.accepts(&value) {
                return Err(decl.wrong_type(&value));
            }
            self.provided[index] = Some(value);
        }
        Ok(())
    }

    fn apply_command_line(&mut self, name: &str, text: &str) -> Result<(), ArmError> {
        let index = self
            .param_index(name)
            .ok_or_else(|| ArmError::UnknownParameter { name: name.to_owned(), origin: "--parameters" })?;
        let decl = &self.params[index];
        let value = decl.ty.parse_command_line(text).ok_or_else(|| decl.wrong_type(&Value::String(text.to_owned())))?;
        self.provided[index] = Some(value);
        Ok(())
    }

    /// Resolves every parameter in declaration order and returns the effective values.
    fn resolve_parameters(&mut self) -> Result<Map<String, Value>, ArmError> {
        let mut out = Map::new();
        for index in 0..self.params.len() {
            let value = self.parameter(index)?;
            out.insert(self.params[index].name.clone(), value);
        }
        Ok(out)
    }

    fn parameter(&mut self, index: usize) -> Result<Value, ArmError> {
        if let Some(value) = &self.param_values[index] {
            return Ok(value.clone());
        }
        if let Some(at) = self.param_stack.iter().position(|&i| i == index) {
            let mut chain: Vec<String> =
                self.param_stack[at..].iter().map(|&i| shorten(&self.params[i].name, 64)).collect();
            chain.push(shorten(&self.params[index].name, 64));
            return Err(ArmError::Cycle { section: "parameters", chain });
        }
        let value = match (self.provided[index].clone(), self.params[index].default.clone()) {
            (Some(value), _) => value,
            (None, Some(default)) => {
                let name = self.params[index].name.clone();
                let (root, key) = (Path::Root("parameters"), name.as_str());
                let parent = Path::Key(&root, key);
                let path = Path::Key(&parent, "defaultValue");
                self.param_stack.push(index);
                let outer = std::mem::replace(&mut self.section, Section::Parameters);
                let value = self.eval_value(&default, &path);
                self.section = outer;
                self.param_stack.pop();
                let value = value?;
                if !self.params[index].ty.accepts(&value) {
                    return Err(self.params[index].wrong_type(&value));
                }
                value
            }
            (None, None) => return Err(ArmError::MissingParameter { name: self.params[index].name.clone() }),
        };
        self.params[index].validate(&value, &mut self.meter)?;
        self.param_values[index] = Some(value.clone());
        Ok(value)
    }

    /// Evaluates every variable, so that errors in unused ones are reported too, as ARM does.
    fn resolve_variables(&mut self) -> Result<(), ArmError> {
        for index in 0..self.vars.len() {
            self.variable(index)?;
        }
        Ok(())
    }

    fn variable(&mut self, index: usize) -> Result<Value, ArmError> {
        if let Some(value) = &self.var_values[index] {
            return Ok(value.clone());
        }
        if self.var_stack.contains(&index) {
            return Err(self.variable_cycle(index));
        }
        let (name, raw) = self.vars[index].clone();
        self.var_stack.push(index);
        let root = Path::Root("variables");
        let value = self.eval_value(&raw, &Path::Key(&root, &name));
        self.var_stack.pop();
        let value = value?;
        self.var_values[index] = Some(value.clone());
        Ok(value)
    }

    #[cold]
    #[inline(never)]
    fn variable_cycle(&self, index: usize) -> ArmError {
        let at = self.var_stack.iter().position(|&i| i == index).unwrap_or_default();
        let mut chain: Vec<String> = self.var_stack[at..].iter().map(|&i| shorten(&self.vars[i].0, 64)).collect();
        chain.push(shorten(&self.vars[index].0, 64));
        ArmError::Cycle { section: "variables", chain }
    }

    /// Evaluates every expression string inside `value` (values only, not keys).
    fn eval_value(&mut self, value: &Value, path: &Path<'_>) -> Result<Value, ArmError> {
        if let Err(e) = self.meter.enter() {
            return Err(limit_error(e, path, None));
        }
        let result = self.eval_value_inner(value, path);
        self.meter.leave();
        result
    }

    fn eval_value_inner(&mut self, value: &Value, path: &Path<'_>) -> Result<Value, ArmError> {
        Ok(match value {
            Value::String(s) => self.eval_string(s, path)?,
            Value::Array(items) => {
                let mut out = Vec::with_capacity(items.len());
                for (i, item) in items.iter().enumerate() {
                    out.push(self.eval_value(item, &Path::Index(path, i))?);
                }
                Value::Array(out)
            }
            Value::Object(map) => {
                let mut out = Map::new();
                for (key, item) in map {
                    out.insert(key.clone(), self.eval_value(item, &Path::Key(path, key))?);
                }
                Value::Object(out)
            }
            other => other.clone(),
        })
    }

    fn eval_string(&mut self, s: &str, at: &Path<'_>) -> Result<Value, ArmError> {
        let inner = match classify(s) {
            Text::Literal(text) => return Ok(Value::String(text.to_owned())),
            Text::Expression(inner) => inner,
        };
        let max = self.meter.limits.expression_chars;
        if s.len() > max.saturating_mul(4) || s.chars().count() > max {
            return Err(expression_too_long(s, at, max));
        }
        let expression = match expr::parse(inner) {
            Ok(expression) => expression,
            Err(message) => return Err(expression_error(EvalError::Message(message), s, at)),
        };
        match self.eval_expr(&expression) {
            Ok(value) => Ok(value),
            Err(e) => Err(expression_error(e, s, at)),
        }
    }

    /// Evaluates one node of an expression; every result is admitted by the meter (sizes and
    /// the deployment's total).
    fn eval_expr(&mut self, expression: &Expr) -> Result<Value, EvalError> {
        self.meter.enter()?;
        let result = self.eval_expr_inner(expression).and_then(|value| {
            self.meter.admit(&value)?;
            Ok(value)
        });
        self.meter.leave();
        result
    }

    fn eval_expr_inner(&mut self, expression: &Expr) -> Result<Value, EvalError> {
        match expression {
            Expr::Str(s) => Ok(Value::String(s.clone())),
            Expr::Int(n) => Ok(Value::from(*n)),
            Expr::Prop { target, name } => {
                let target = self.eval_expr(target)?;
                functions::property(&target, name, &mut self.meter)
            }
            Expr::Index { target, index } => {
                let target = self.eval_expr(target)?;
                let index = self.eval_expr(index)?;
                functions::index(&target, &index, &mut self.meter)
            }
            Expr::Call { name, args } => self.call(name, args),
        }
    }

    /// A call: `if` evaluates only the branch taken; every other function gets its arguments
    /// evaluated. Kept small, with the rare paths in functions of their own: it is on every level
    /// of the evaluator's recursion.
    fn call(&mut self, name: &str, args: &[Expr]) -> Result<Value, EvalError> {
        functions::check_known(name)?;
        if name.eq_ignore_ascii_case("if") {
            let branch = self.choose_branch(name, args)?;
            return self.eval_expr(branch);
        }
        // A plain loop: iterator adapters would add frames to every level of the recursion.
        let mut values = Vec::with_capacity(args.len());
        for arg in args {
            values.push(self.eval_expr(arg)?);
        }
        let result = match self.lookup(name, &values)? {
            Lookup::Parameter(index) => self.parameter(index),
            Lookup::Variable(index) => self.variable(index),
            Lookup::Function => return functions::call(name, &values, &self.rg, &mut self.meter),
        };
        result.map_err(|e| EvalError::Arm(Box::new(e)))
    }

    /// The branch of `if(condition, yes, no)` to evaluate.
    #[inline(never)]
    fn choose_branch<'e>(&mut self, name: &str, args: &'e [Expr]) -> Result<&'e Expr, EvalError> {
        let [condition, yes, no] = args else {
            return Err(EvalError::Message(format!("{name}() takes 3 arguments, got {}", args.len())));
        };
        match self.eval_expr(condition)? {
            Value::Bool(true) => Ok(yes),
            Value::Bool(false) => Ok(no),
            other => {
                Err(EvalError::Message(format!("argument 1 of {name}() must be a bool, got {}", describe(&other))))
            }
        }
    }

    /// What `parameters(name)` or `variables(name)` refers to; `Function` for other calls.
    #[inline(never)]
    fn lookup(&self, name: &str, values: &[Value]) -> Result<Lookup, EvalError> {
        let parameters = name.eq_ignore_ascii_case("parameters");
        if !parameters && !name.eq_ignore_ascii_case("variables") {
            return Ok(Lookup::Function);
        }
        let [Value::String(wanted)] = values else {
            return Err(EvalError::Message(format!("{name}() takes one string argument, the name")));
        };
        if parameters {
            let index = self.param_index(wanted).ok_or_else(|| {
                EvalError::Message(format!("parameter '{wanted}' is not declared in the template's parameters"))
            })?;
            Ok(Lookup::Parameter(index))
        } else if self.section == Section::Parameters {
            Err(EvalError::Message("variables() cannot be used in the parameters section".to_owned()))
        } else {
            let index = self.var_index(wanted).ok_or_else(|| EvalError::UnknownVariable(wanted.clone()))?;
            Ok(Lookup::Variable(index))
        }
    }

    /// Evaluates `resources` (or a parent's nested `resources`) into `out`, in template order, each
    /// parent before its children, and gathers the placeholders still present.
    fn resources(
        &mut self,
        list: &[Value],
        prefix: &str,
        parent: Option<(&str, &str)>,
        out: &mut Vec<Resource>,
        placeholders: &mut Vec<(String, String)>,
    ) -> Result<(), ArmError> {
        for (i, raw) in list.iter().enumerate() {
            let path = format!("{prefix}[{i}]");
            let here = Path::Root(&path);
            let Value::Object(raw) = raw else {
                return Err(invalid(path, format!("must be an object, got {}", describe(raw))));
            };
            if let Some(key) = raw.keys().find(|k| k.eq_ignore_ascii_case("copy")) {
                return Err(ArmError::Unsupported {
                    path: join_key(&path, key),
                    message: "copy loops are not supported: write each resource out".to_owned(),
                });
            }
            if let Some(at) = find_property_copy(&Value::Object(raw.clone()), &here) {
                return Err(ArmError::Unsupported {
                    path: at,
                    message: "copy property loops are not supported: write the array out".to_owned(),
                });
            }
            if let Some((key, condition)) = raw.iter().find(|(k, _)| k.eq_ignore_ascii_case("condition")) {
                match self.eval_value(condition, &Path::Key(&here, key))? {
                    Value::Bool(true) => {}
                    Value::Bool(false) => continue,
                    other => {
                        return Err(invalid(join_key(&path, key), format!("must be a bool, got {}", describe(&other))))
                    }
                }
            }
            if out.len() >= self.meter.limits.resources {
                return Err(too_many(
                    "resources",
                    "resources (nested ones included)",
                    out.len() + 1,
                    self.meter.limits.resources,
                ));
            }
            let mut body = Map::new();
            let mut children = None;
            for (key, value) in raw {
                if key.eq_ignore_ascii_case("resources") {
                    children = Some((key, value));
                } else {
                    body.insert(key.clone(), self.eval_value(value, &Path::Key(&here, key))?);
                }
            }
            let text_field = |field: &str| -> Result<(String, String), ArmError> {
                let Some((key, value)) = body.iter().find(|(k, _)| k.eq_ignore_ascii_case(field)) else {
                    return Err(ArmError::MissingField { path: join_key(&path, field) });
                };
                match value {
                    Value::String(s) if !s.is_empty() => Ok((key.clone(), s.clone())),
                    other => Err(invalid(
                        join_key(&path, key),
                        format!("must be a non-empty string, got {}", describe(other)),
                    )),
                }
            };
            let (type_key, mut resource_type) = text_field("type")?;
            let (name_key, mut name) = text_field("name")?;
            let api_version = match body.iter().find(|(k, _)| k.eq_ignore_ascii_case("apiVersion")) {
                None => None,
                Some((_, Value::String(v))) => Some(v.clone()),
                Some((key, other)) => {
                    return Err(invalid(join_key(&path, key), format!("must be a string, got {}", describe(other))))
                }
            };
            if let Some((parent_type, parent_name)) = parent {
                let qualified = resource_type.split('/').next().is_some_and(|ns| ns.contains('.'));
                if !qualified {
                    resource_type = format!("{parent_type}/{resource_type}");
                    name = format!("{parent_name}/{name}");
                    body.insert(type_key, Value::String(resource_type.clone()));
                    body.insert(name_key, Value::String(name.clone()));
                }
            }
            if resource_type.eq_ignore_ascii_case("Microsoft.Resources/deployments") {
                return Err(ArmError::Unsupported {
                    path: join_key(&path, "type"),
                    message: "nested deployments (Microsoft.Resources/deployments) are not supported".to_owned(),
                });
            }
            let body = Value::Object(body);
            let bytes = json_len(&body);
            if bytes > self.meter.limits.resource_bytes {
                return Err(ArmError::Limit {
                    at: path,
                    expression: None,
                    message: format!(
                        "the evaluated resource is {bytes} bytes of JSON, more than the {} bytes ARM allows for one \
                         resource",
                        self.meter.limits.resource_bytes
                    ),
                });
            }
            collect_placeholders(&body, &here, placeholders);
            out.push(Resource { resource_type: resource_type.clone(), api_version, name: name.clone(), body });
            if let Some((key, children)) = children {
                let child_path = join_key(&path, key);
                let Value::Array(children) = children else {
                    return Err(invalid(child_path, format!("must be an array, got {}", describe(children))));
                };
                self.resources(children, &child_path, Some((&resource_type, &name)), out, placeholders)?;
            }
        }
        Ok(())
    }

    fn outputs(&mut self, outputs: Option<&Map<String, Value>>) -> Result<Map<String, Value>, ArmError> {
        let mut out = Map::new();
        for (name, output) in outputs.into_iter().flatten() {
            let path = join_key("outputs", name);
            let Value::Object(output) = output else {
                return Err(invalid(
                    path,
                    format!("must be an object with 'type' and 'value', got {}", describe(output)),
                ));
            };
            if let Some(key) = output.keys().find(|k| k.eq_ignore_ascii_case("copy")) {
                return Err(ArmError::Unsupported {
                    path: join_key(&path, key),
                    message: "copy loops in outputs are not supported".to_owned(),
                });
            }
            if let Some((key, condition)) = output.iter().find(|(k, _)| k.eq_ignore_ascii_case("condition")) {
                let root = Path::Root(&path);
                match self.eval_value(condition, &Path::Key(&root, key))? {
                    Value::Bool(true) => {}
                    Value::Bool(false) => continue,
                    other => {
                        return Err(invalid(join_key(&path, key), format!("must be a bool, got {}", describe(&other))))
                    }
                }
            }
            let ty = match get_ci(output, "type") {
                Some(Value::String(t)) => ParamType::parse(t)
                    .ok_or_else(|| invalid(join_key(&path, "type"), format!("unknown type '{t}'")))?,
                _ => return Err(invalid(path, "has no 'type'")),
            };
            let Some((key, raw)) = output.iter().find(|(k, _)| k.eq_ignore_ascii_case("value")) else {
                return Err(invalid(path, "has no 'value'"));
            };
            let value_path = join_key(&path, key);
            let value = self.eval_value(raw, &Path::Root(&value_path))?;
            if !ty.accepts(&value) {
                return Err(invalid(value_path, format!("is declared {} but is {}", ty.name(), describe(&value))));
            }
            out.insert(name.clone(), value);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::{classify, is_placeholder, join_key, Text};

    #[test]
    fn strings_are_classified() {
        assert!(matches!(classify("[concat('a')]"), Text::Expression("concat('a')")));
        assert!(matches!(classify("[[literal]"), Text::Literal("[literal]")));
        assert!(matches!(classify("[not closed"), Text::Literal("[not closed")));
        assert!(matches!(classify("plain"), Text::Literal("plain")));
        assert!(matches!(classify("[]"), Text::Expression("")));
    }

    #[test]
    fn placeholders_are_recognised() {
        assert!(is_placeholder("<provide-a-valid-DPS-resource-name>"));
        assert!(is_placeholder("<any-region>"));
        assert!(!is_placeholder("<>"));
        assert!(!is_placeholder("<a><b>"));
        assert!(!is_placeholder("a <b>"));
        assert!(!is_placeholder("westus"));
    }

    #[test]
    fn paths_quote_odd_keys() {
        assert_eq!(join_key("resources[0]", "name"), "resources[0].name");
        assert_eq!(join_key("resources[0].tags", "hidden-link"), "resources[0].tags['hidden-link']");
    }
}
