//! Every bound of the evaluator: hostile templates end in an `ArmError::Limit` that names the
//! field and the expression, never in an abort, a stack overflow or an unbounded allocation.

#![allow(clippy::unwrap_used)]

use dps_arm::{evaluate, evaluate_with_limits, ArmError, Deployment, DeploymentInput, Limits, ResourceGroup};
use serde_json::{json, Map, Value};

const RG: ResourceGroup<'static> = ResourceGroup { name: "rg", location: "westus", subscription_id: "sub" };

fn input<'a>(template: &'a str, parameters_file: Option<&'a str>) -> DeploymentInput<'a> {
    DeploymentInput {
        template_text: template,
        parameters: &[],
        parameters_file_text: parameters_file,
        resource_group: RG,
    }
}

fn run(template: &Value) -> Result<Deployment, ArmError> {
    evaluate(&input(&template.to_string(), None))
}

/// A template with these variables (in order) and no resources.
fn with_variables(variables: &[(String, Value)]) -> Value {
    let variables: Map<String, Value> = variables.iter().cloned().collect();
    json!({ "variables": variables, "resources": [] })
}

/// Runs `template` on a thread with a 1.25 MiB stack: the server evaluates deployments on
/// tokio workers (2 MiB stacks), and its own frames above the evaluation need some of that.
/// A stack overflow aborts the test binary, so this fails loudly if the bounds are too loose.
fn run_on_small_stack(template: Value) -> Result<Deployment, ArmError> {
    std::thread::Builder::new().stack_size(1280 << 10).spawn(move || run(&template)).unwrap().join().unwrap()
}

/// The `Limit` error of `result`: (at, expression, message).
fn limit(result: Result<Deployment, ArmError>) -> (String, Option<String>, String) {
    match result {
        Err(ArmError::Limit { at, expression, message }) => (at, expression, message),
        other => panic!("expected a limit error, got {other:?}"),
    }
}

#[test]
fn pad_left_to_a_trillion_characters_is_refused_before_allocating() {
    let template = with_variables(&[("v".into(), json!("[padLeft('a',1000000000000,'x')]"))]);
    let (at, expression, message) = limit(run(&template));
    assert_eq!(at, "variables.v");
    assert_eq!(expression.as_deref(), Some("[padLeft('a',1000000000000,'x')]"));
    assert_eq!(
        message,
        "padLeft() would build a string of 1000000000000 bytes, more than the limit of 1048576 bytes per string"
    );
    let e = run(&template).unwrap_err().to_string();
    assert!(e.starts_with("variables.v: cannot evaluate \"[padLeft('a',1000000000000,'x')]\": padLeft() would"), "{e}");
    // Within the limit it works.
    let ok = with_variables(&[("v".into(), json!("[padLeft('a',1000,'x')]"))]);
    assert!(run(&ok).is_ok());
}

#[test]
fn doubling_concat_variables_stop_at_the_string_limit() {
    // The hostile template of the hardening issue: 18 variables, each twice the one before,
    // from a 2 KB seed (256 MB at the end, unbounded).
    let mut vars = vec![("v0".to_owned(), json!("x".repeat(2048)))];
    for i in 1..=18 {
        vars.push((
            format!("v{i:02}"),
            json!(format!("[concat(variables('v{:02}'), variables('v{:02}'))]", i - 1, i - 1)),
        ));
    }
    vars[1].1 = json!("[concat(variables('v0'), variables('v0'))]");
    let (at, expression, message) = limit(run(&with_variables(&vars)));
    // 2 KB * 2^10 = 2 MiB is the first over 1 MiB.
    assert_eq!(at, "variables.v10");
    assert_eq!(expression.as_deref(), Some("[concat(variables('v09'), variables('v09'))]"));
    assert!(message.contains("concat() would build a string of 2097152 bytes"), "{message}");
}

#[test]
fn copies_of_a_large_variable_count_against_the_deployment_total() {
    // Each variable is a copy of a 1 MB one: no string is too large, but together they are.
    let mut vars = vec![("big".to_owned(), json!("[padLeft('', 1000000, 'x')]"))];
    for i in 0..100 {
        vars.push((format!("copy{i:03}"), json!("[variables('big')]")));
    }
    let (at, expression, message) = limit(run(&with_variables(&vars)));
    assert!(at.starts_with("variables.copy0"), "{at}");
    assert_eq!(expression.as_deref(), Some("[variables('big')]"));
    assert_eq!(
        message,
        "the deployment's expressions produce more than 33554432 bytes of values in total, the limit per deployment"
    );
}

#[test]
fn array_and_object_sizes_are_bounded() {
    let template = with_variables(&[("a".into(), json!("[concat(range(0, 10000), range(0, 1))]"))]);
    let (_, _, message) = limit(run(&template));
    assert_eq!(message, "concat() would build an array of more than 10000 elements, the limit per array");

    let keys: Vec<String> = (0..10_001).map(|i| format!("\"k{i}\":1")).collect();
    let text = format!("{{{}}}", keys.join(","));
    let template = with_variables(&[("o".into(), json!("[json(variables('t'))]")), ("t".into(), json!(text))]);
    let (at, _, message) = limit(run(&template));
    assert_eq!(at, "variables.o");
    assert_eq!(message, "the result holds an object of 10001 properties, more than the limit of 10000 per object");

    let template = with_variables(&[("s".into(), json!("[split(padLeft('', 20000, ','), ',')]"))]);
    let (_, _, message) = limit(run(&template));
    assert_eq!(message, "split() would build an array of more than 10000 elements, the limit per array");
}

#[test]
fn quadratic_work_is_bounded_by_the_step_budget() {
    // union() compares every element with those kept: 20 000 distinct values, 2 * 10^8 steps.
    let template = with_variables(&[("u".into(), json!("[union(range(0, 10000), range(10000, 10000))]"))]);
    let (at, expression, message) = limit(run(&template));
    assert_eq!(at, "variables.u");
    assert_eq!(expression.as_deref(), Some("[union(range(0, 10000), range(10000, 10000))]"));
    assert_eq!(message, "the deployment needs more than 2000000 evaluation steps, the limit per deployment");

    // split() with many long delimiters scans the string once per delimiter.
    let delimiters: Vec<String> = (0..100).map(|i| format!("'{}{i}'", "d".repeat(100))).collect();
    let expression = format!("[split(padLeft('', 1000000, 'x'), createArray({}))]", delimiters.join(","));
    let template = with_variables(&[("s".into(), json!(expression))]);
    let (_, _, message) = limit(run(&template));
    assert!(message.contains("evaluation steps"), "{message}");
}

#[test]
fn results_built_from_a_short_expression_are_checked_before_they_exist() {
    for (expression, function) in [
        ("[replace(padLeft('', 1000, 'a'), 'a', padLeft('', 10000, 'b'))]", "replace()"),
        ("[format('{0}{0}{0}{0}{0}{0}{0}{0}{0}{0}{0}', padLeft('', 100000, 'x'))]", "format()"),
        ("[join(createArray(padLeft('', 600000, 'x'), 'y'), padLeft('', 600000, 'z'))]", "join()"),
        ("[base64(padLeft('', 1000000, 'x'))]", "base64()"),
        ("[concat(padLeft('', 600000, 'x'), padLeft('', 600000, 'y'))]", "concat()"),
    ] {
        let template = with_variables(&[("v".into(), json!(expression))]);
        let (at, shown, message) = limit(run(&template));
        assert_eq!(at, "variables.v");
        assert_eq!(shown.as_deref(), Some(expression));
        assert!(message.starts_with(&format!("{function} would build a string of")), "{expression}: {message}");
    }
    // format() with many placeholders of one large argument.
    let expression = format!("[format('{}', padLeft('', 100000, 'x'))]", "{0}".repeat(100));
    let template = with_variables(&[("v".into(), json!(expression))]);
    let (_, shown, message) = limit(run(&template));
    assert!(message.starts_with("format() would build a string of"), "{message}");
    assert!(shown.unwrap().ends_with('…'), "a long expression is shown cut");
}

/// A chain of `n` variables, each the next one; the last is `last`.
fn chain(n: usize, last: Value) -> Vec<(String, Value)> {
    (0..n)
        .map(|i| {
            let value = if i + 1 == n { last.clone() } else { json!(format!("[variables('v{:03}')]", i + 1)) };
            (format!("v{i:03}"), value)
        })
        .collect()
}

#[test]
fn variable_chains_are_bounded_and_do_not_overflow_the_stack() {
    // 500 variables, each the next one: deeper than the evaluator nests (2 levels a variable).
    let (at, expression, message) = limit(run_on_small_stack(with_variables(&chain(500, json!("end")))));
    assert_eq!(
        message,
        "the template nests more than 256 levels deep (JSON, expressions, and variables or parameters that use each other)"
    );
    // The error names the variable and the expression where the bound was reached.
    assert_eq!(at, "variables.v127");
    assert_eq!(expression.as_deref(), Some("[variables('v128')]"));
    // 100 are fine.
    let deployment = run_on_small_stack(with_variables(&chain(100, json!("end")))).unwrap();
    assert!(deployment.resources.is_empty());
}

#[test]
fn the_deepest_template_allowed_fits_a_small_stack() {
    // Every kind of nesting at once, just within the bound: 80 chained variables (160 levels),
    // then 20 levels of JSON holding an expression 63 calls deep (the parser's limit), parsed
    // at a depth of 180 and evaluated down to 244.
    let deep_expression = format!("[{}1{}]", "add(0, ".repeat(62), ")".repeat(62));
    let mut last = json!(deep_expression);
    for _ in 0..19 {
        last = json!([last]);
    }
    let deployment = run_on_small_stack(with_variables(&chain(80, last))).unwrap();
    assert!(deployment.resources.is_empty());
}

#[test]
fn values_cannot_nest_without_bound() {
    // Each variable wraps the one before in an array: depth grows by one per variable.
    let mut vars = vec![("w000".to_owned(), json!("[createArray(1)]"))];
    for i in 1..200 {
        vars.push((format!("w{i:03}"), json!(format!("[createArray(variables('w{:03}'))]", i - 1))));
    }
    let (_, _, message) = limit(run_on_small_stack(with_variables(&vars)));
    assert_eq!(message, "the result nests more than 128 levels deep");
}

#[test]
fn expression_length_is_arms() {
    let long = format!("[concat('{}')]", "x".repeat(24_576));
    let template = with_variables(&[("v".into(), json!(long))]);
    let (at, shown, message) = limit(run(&template));
    assert_eq!(at, "variables.v");
    assert_eq!(message, "the expression is 24588 characters long, more than the 24576 characters ARM allows");
    assert_eq!(shown.unwrap().chars().count(), 201);
    let fits = format!("[concat('{}')]", "x".repeat(24_000));
    assert!(run(&with_variables(&[("v".into(), json!(fits))])).is_ok());
}

#[test]
fn counts_are_arms() {
    let parameters: Map<String, Value> =
        (0..257).map(|i| (format!("p{i}"), json!({"type": "string", "defaultValue": "x"}))).collect();
    let (at, _, message) = limit(run(&json!({"parameters": parameters, "resources": []})));
    assert_eq!(
        (at.as_str(), message.as_str()),
        ("parameters", "the template has 257 parameters, more than the 256 ARM allows")
    );

    let variables: Vec<(String, Value)> = (0..513).map(|i| (format!("v{i}"), json!(i))).collect();
    let (at, _, message) = limit(run(&with_variables(&variables)));
    assert_eq!(
        (at.as_str(), message.as_str()),
        ("variables", "the template has 513 variables, more than the 512 ARM allows")
    );

    let outputs: Map<String, Value> = (0..65).map(|i| (format!("o{i}"), json!({"type": "int", "value": i}))).collect();
    let (at, _, message) = limit(run(&json!({"outputs": outputs, "resources": []})));
    assert_eq!(
        (at.as_str(), message.as_str()),
        ("outputs", "the template has 65 outputs, more than the 64 ARM allows")
    );

    let resources: Vec<Value> = (0..801).map(|i| json!({"type": "a.b/c", "name": format!("r{i}")})).collect();
    let (at, _, message) = limit(run(&json!({"resources": resources})));
    assert_eq!(at, "resources");
    assert_eq!(message, "the template has 801 resources (nested ones included), more than the 800 ARM allows");
    let resources: Vec<Value> = (0..800).map(|i| json!({"type": "a.b/c", "name": format!("r{i}")})).collect();
    assert_eq!(run(&json!({"resources": resources})).unwrap().resources.len(), 800);
}

#[test]
fn evaluated_resources_and_templates_have_arms_sizes() {
    let big = "[padLeft('', 600000, 'x')]";
    let template = json!({"resources": [{"type": "a.b/c", "name": "r", "properties": {"a": big, "b": big}}]});
    let (at, expression, message) = limit(run(&template));
    assert_eq!(at, "resources[0]");
    assert_eq!(expression, None);
    assert!(message.starts_with("the evaluated resource is 12000"), "{message}");
    assert!(message.ends_with("bytes of JSON, more than the 1048576 bytes ARM allows for one resource"), "{message}");

    let resources: Vec<Value> = (0..5)
        .map(|i| json!({"type": "a.b/c", "name": format!("r{i}"), "properties": {"a": "[padLeft('', 900000, 'x')]"}}))
        .collect();
    let (at, _, message) = limit(run(&json!({"resources": resources})));
    assert_eq!(at, "template");
    assert!(message.starts_with("the evaluated resources and outputs are 4500"), "{message}");

    let text = " ".repeat((4 << 20) + 1);
    match evaluate(&input(&text, None)) {
        Err(ArmError::Limit { at, message, .. }) => {
            assert_eq!(at, "template");
            assert_eq!(message, "the template is 4194305 bytes long, more than the 4194304 bytes ARM allows");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn allowed_values_checks_are_within_the_step_budget() {
    let allowed: Vec<Value> = (0..20_000).map(|i| json!(format!("v{i}"))).collect();
    let template = json!({
        "parameters": {"p": {"type": "array", "allowedValues": allowed}},
        "resources": []
    });
    let value: Vec<Value> = (0..5_000).map(|_| json!("v19999")).collect();
    let file = json!({"parameters": {"p": {"value": value}}}).to_string();
    match evaluate(&input(&template.to_string(), Some(&file))) {
        Err(ArmError::Limit { at, message, .. }) => {
            assert_eq!(at, "parameters.p.allowedValues");
            assert!(message.contains("evaluation steps"), "{message}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn smaller_limits_can_be_chosen() {
    let mut limits = Limits::default();
    limits.string_bytes = 10;
    let template = with_variables(&[("v".into(), json!("[concat('abcdef', 'ghijkl')]"))]).to_string();
    match evaluate_with_limits(&input(&template, None), &limits) {
        Err(ArmError::Limit { message, .. }) => {
            assert_eq!(
                message,
                "concat() would build a string of 12 bytes, more than the limit of 10 bytes per string"
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(evaluate(&input(&template, None)).is_ok());
}

#[test]
fn literal_paths_are_not_rebuilt_at_every_node() {
    // A long key above a large array: paths are rendered only for messages, so this is fast and
    // the message about the one bad element cuts the key.
    let key = "k".repeat(200_000);
    let mut items: Vec<Value> = (0..50_000).map(|_| json!(1)).collect();
    items.push(json!("[bad(]"));
    let template = json!({"variables": {key.clone(): items}, "resources": []});
    match run(&template) {
        Err(ArmError::Expression { at, .. }) => {
            assert!(at.starts_with("variables.kkkk") && at.ends_with("…[50000]"), "{at}");
            assert!(at.len() < 100, "{at}");
        }
        other => panic!("{other:?}"),
    }
}
