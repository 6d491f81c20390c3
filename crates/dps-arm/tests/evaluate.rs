#![allow(clippy::unwrap_used)]

use dps_arm::{evaluate, relax_json, ArmError, Deployment, DeploymentInput, ResourceGroup};
use serde_json::json;

const RG: ResourceGroup<'static> = ResourceGroup { name: "my-rg", location: "eastus", subscription_id: "0000-sub" };

/// The template from Microsoft's "DPS TLS support" document, verbatim (trailing comma included),
/// kept once for every test that deploys it.
const DPS_TLS_TEMPLATE: &str = include_str!("../../opendps/tests/data/dps-tls-document.json");

fn run(template: &str, parameters: &[(&str, &str)]) -> Result<Deployment, ArmError> {
    run_with_file(template, parameters, None)
}

fn run_with_file(template: &str, parameters: &[(&str, &str)], file: Option<&str>) -> Result<Deployment, ArmError> {
    let parameters: Vec<(String, String)> =
        parameters.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    evaluate(&DeploymentInput {
        template_text: template,
        parameters: &parameters,
        parameters_file_text: file,
        resource_group: RG,
    })
}

fn err(template: &str, parameters: &[(&str, &str)]) -> ArmError {
    match run(template, parameters) {
        Ok(d) => panic!("expected an error, got {d:?}"),
        Err(e) => e,
    }
}

#[test]
fn dps_tls_template_as_documented_reports_both_placeholders() {
    let e = err(DPS_TLS_TEMPLATE, &[]);
    let ArmError::Placeholders(found) = &e else { panic!("expected placeholders, got {e:?}") };
    let mut found = found.clone();
    found.sort();
    assert_eq!(
        found,
        vec![
            ("resources[0].location".to_owned(), "<any-region>".to_owned()),
            ("resources[0].name".to_owned(), "<provide-a-valid-DPS-resource-name>".to_owned()),
        ]
    );
    let message = e.to_string();
    assert!(message.contains("resources[0].name still holds the placeholder '<provide-a-valid-DPS-resource-name>'"));
    assert!(message.contains("resources[0].location still holds the placeholder '<any-region>'"));
    assert_eq!(message.lines().count(), 3, "{message}");
}

#[test]
fn dps_tls_template_with_values_deploys() {
    let template =
        DPS_TLS_TEMPLATE.replace("<provide-a-valid-DPS-resource-name>", "my-dps").replace("<any-region>", "westus");
    let deployment = run(&template, &[]).unwrap();
    assert_eq!(deployment.resources.len(), 1);
    let dps = &deployment.resources[0];
    assert_eq!(dps.resource_type, "Microsoft.Devices/ProvisioningServices");
    assert_eq!(dps.api_version.as_deref(), Some("2020-01-01"));
    assert_eq!(dps.name, "my-dps");
    assert_eq!(dps.body["properties"]["minTlsVersion"], json!("1.2"));
    assert_eq!(dps.body["sku"]["capacity"], json!(1));
    assert_eq!(dps.body["sku"]["name"], json!("S1"));
    assert_eq!(dps.body["location"], json!("westus"));
    assert_eq!(dps.body["type"], json!("Microsoft.Devices/ProvisioningServices"));
    assert!(deployment.outputs.is_empty());
    assert!(deployment.parameters.is_empty());
}

const PARAMETERIZED: &str = r#"{
    "$schema": "https://schema.management.azure.com/schemas/2019-04-01/deploymentTemplate.json#",
    "contentVersion": "1.0.0.0",
    // Comments are tolerated, like trailing commas.
    "parameters": {
        "dpsName": { "type": "string", "minLength": 3, "maxLength": 64 },
        "location": { "type": "string", "defaultValue": "[resourceGroup().location]" },
        "skuName": { "type": "String", "defaultValue": "S1", "allowedValues": ["S1", "S2"] },
        "capacity": { "type": "int", "defaultValue": 1, "minValue": 1, "maxValue": 10 },
        "deployHub": { "type": "bool", "defaultValue": false },
        "settings": { "type": "object", "defaultValue": { "tls": { "min": "1.2" }, "zones": ["1", "2"] } },
        "tags": { "type": "object", "defaultValue": {} }
    },
    "variables": {
        "prefix": "[toLower(parameters('dpsName'))]",
        "hubName": "[concat(variables('prefix'), '-hub')]",
        "names": ["[variables('prefix')]", "[variables('hubName')]"],
        "dpsId": "[resourceId('Microsoft.Devices/provisioningServices', parameters('dpsName'))]"
    },
    "resources": [
        {
            "type": "Microsoft.Devices/IotHubs",
            "apiVersion": "2021-07-02",
            "name": "[variables('hubName')]",
            "condition": "[parameters('deployHub')]",
            "location": "[parameters('location')]",
            "sku": { "name": "S1", "capacity": 1 }
        },
        {
            "type": "Microsoft.Devices/provisioningServices",
            "apiVersion": "2022-02-05",
            "name": "[parameters('dpsName')]",
            "location": "[parameters('location')]",
            "sku": { "name": "[parameters('skuName')]", "capacity": "[parameters('capacity')]" },
            "tags": "[union(parameters('tags'), createObject('owner', 'opendps'))]",
            "properties": {
                "minTlsVersion": "[parameters('settings').tls.min]",
                "firstZone": "[parameters('settings')['zones'][0]]",
                "names": "[variables('names')]",
                "literal": "[[not an expression]",
                "described": "[format('{0} in {1} ({2})', variables('prefix'), parameters('location'), subscription().subscriptionId)]",
                "enabled": "[and(not(parameters('deployHub')), equals(length(variables('names')), 2))]",
                "suffix": "[uniqueString(resourceGroup().id)]",
                "plain": "text with [brackets] inside"
            },
            "dependsOn": [ "[resourceId('Microsoft.Devices/IotHubs', variables('hubName'))]", ],
        },
    ],
    "outputs": {
        "dpsId": { "type": "string", "value": "[variables('dpsId')]" },
        "count": { "type": "int", "value": "[add(parameters('capacity'), 1)]" },
        "skipped": { "type": "string", "condition": "[parameters('deployHub')]", "value": "x" }
    }
}"#;

#[test]
fn parameters_variables_and_expressions_evaluate() {
    let deployment = run(PARAMETERIZED, &[("dpsName", "My-DPS"), ("capacity", "3")]).unwrap();

    // condition: false skipped the hub.
    assert_eq!(deployment.resources.len(), 1);
    let dps = &deployment.resources[0];
    assert_eq!(dps.resource_type, "Microsoft.Devices/provisioningServices");
    assert_eq!(dps.name, "My-DPS");
    let body = &dps.body;
    assert_eq!(body["location"], json!("eastus"));
    assert_eq!(body["sku"], json!({"name": "S1", "capacity": 3}));
    assert_eq!(body["tags"], json!({"owner": "opendps"}));
    let properties = &body["properties"];
    assert_eq!(properties["minTlsVersion"], json!("1.2"));
    assert_eq!(properties["firstZone"], json!("1"));
    assert_eq!(properties["names"], json!(["my-dps", "my-dps-hub"]));
    assert_eq!(properties["literal"], json!("[not an expression]"));
    assert_eq!(properties["described"], json!("my-dps in eastus (0000-sub)"));
    assert_eq!(properties["enabled"], json!(true));
    assert_eq!(properties["suffix"].as_str().map(str::len), Some(13));
    assert_eq!(properties["plain"], json!("text with [brackets] inside"));
    assert_eq!(
        body["dependsOn"],
        json!(["/subscriptions/0000-sub/resourceGroups/my-rg/providers/Microsoft.Devices/IotHubs/my-dps-hub"])
    );

    assert_eq!(
        deployment.outputs["dpsId"],
        json!("/subscriptions/0000-sub/resourceGroups/my-rg/providers/Microsoft.Devices/provisioningServices/My-DPS")
    );
    assert_eq!(deployment.outputs["count"], json!(4));
    assert!(!deployment.outputs.contains_key("skipped"));

    assert_eq!(deployment.parameters["dpsName"], json!("My-DPS"));
    assert_eq!(deployment.parameters["location"], json!("eastus"));
    assert_eq!(deployment.parameters["capacity"], json!(3));
    assert_eq!(deployment.parameters["deployHub"], json!(false));
    assert_eq!(deployment.parameters["skuName"], json!("S1"));
}

#[test]
fn command_line_values_are_typed_and_the_condition_can_be_true() {
    let deployment = run(
        PARAMETERIZED,
        &[
            ("dpsName", "dps1"),
            ("deployHub", "True"),
            ("location", "westeurope"),
            ("settings", r#"{"tls": {"min": "1.0"}, "zones": ["3"]}"#),
            ("skuName", "S2"),
        ],
    )
    .unwrap();
    let names: Vec<&str> = deployment.resources.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["dps1-hub", "dps1"]);
    let hub = &deployment.resources[0];
    assert_eq!(hub.body["location"], json!("westeurope"));
    assert_eq!(hub.body["condition"], json!(true));
    let dps = &deployment.resources[1];
    assert_eq!(dps.body["properties"]["minTlsVersion"], json!("1.0"));
    assert_eq!(dps.body["properties"]["firstZone"], json!("3"));
    assert_eq!(dps.body["properties"]["enabled"], json!(false));
    assert_eq!(dps.body["sku"]["name"], json!("S2"));
    assert_eq!(deployment.outputs["skipped"], json!("x"));
}

#[test]
fn parameters_file_applies_before_the_command_line() {
    let file = r#"{
        "$schema": "https://schema.management.azure.com/schemas/2019-04-01/deploymentParameters.json#",
        "contentVersion": "1.0.0.0",
        "parameters": {
            "dpsName": { "value": "from-file" },
            "capacity": { "value": 2 },
            "tags": { "value": { "env": "test" } }
        }
    }"#;
    let deployment = run_with_file(PARAMETERIZED, &[("capacity", "5")], Some(file)).unwrap();
    let dps = &deployment.resources[0];
    assert_eq!(dps.name, "from-file");
    assert_eq!(dps.body["sku"]["capacity"], json!(5));
    assert_eq!(dps.body["tags"], json!({"env": "test", "owner": "opendps"}));

    let plain = r#"{ "dpsName": "x" }"#;
    let e = run_with_file(PARAMETERIZED, &[], Some(plain)).unwrap_err();
    assert!(matches!(&e, ArmError::Invalid { path, .. } if path == "parameters file"), "{e:?}");

    let extra = r#"{ "parameters": { "dpsName": { "value": "x" }, "nope": { "value": 1 } } }"#;
    let e = run_with_file(PARAMETERIZED, &[], Some(extra)).unwrap_err();
    assert_eq!(e, ArmError::UnknownParameter { name: "nope".into(), origin: "the parameters file" });

    let typed = r#"{ "parameters": { "dpsName": { "value": 7 } } }"#;
    let e = run_with_file(PARAMETERIZED, &[], Some(typed)).unwrap_err();
    assert_eq!(e, ArmError::WrongType { name: "dpsName".into(), expected: "string".into(), value: "7".into() });
}

#[test]
fn nested_child_resources_are_flattened_after_their_parent() {
    let template = r#"{
        "resources": [{
            "type": "Microsoft.Devices/provisioningServices",
            "apiVersion": "2022-02-05",
            "name": "dps",
            "location": "westus",
            "sku": { "name": "S1", "capacity": 1 },
            "resources": [{
                "type": "certificates",
                "apiVersion": "2022-02-05",
                "name": "root",
                "properties": { "certificate": "MIIB" }
            }]
        }, {
            "type": "Microsoft.Devices/provisioningServices/certificates",
            "name": "dps/second",
            "properties": {}
        }]
    }"#;
    let deployment = run(template, &[]).unwrap();
    let found: Vec<(&str, &str)> =
        deployment.resources.iter().map(|r| (r.resource_type.as_str(), r.name.as_str())).collect();
    assert_eq!(
        found,
        [
            ("Microsoft.Devices/provisioningServices", "dps"),
            ("Microsoft.Devices/provisioningServices/certificates", "dps/root"),
            ("Microsoft.Devices/provisioningServices/certificates", "dps/second"),
        ]
    );
    assert!(deployment.resources[0].body.get("resources").is_none());
    assert_eq!(deployment.resources[1].body["name"], json!("dps/root"));
    assert_eq!(deployment.resources[2].api_version, None);
}

const NEEDS_NAME: &str = r#"{
    "parameters": {
        "name": { "type": "string" },
        "sku": { "type": "string", "defaultValue": "S1", "allowedValues": ["S1", "S2"] },
        "count": { "type": "int", "defaultValue": 1, "minValue": 1 }
    },
    "resources": [{ "type": "Microsoft.Devices/provisioningServices", "name": "[parameters('name')]" }]
}"#;

#[test]
fn missing_parameter_is_reported() {
    let e = err(NEEDS_NAME, &[]);
    assert_eq!(e, ArmError::MissingParameter { name: "name".into() });
    assert_eq!(e.to_string(), "parameter 'name' has no value: pass --parameters name=VALUE");
}

#[test]
fn allowed_values_are_enforced() {
    let e = err(NEEDS_NAME, &[("name", "dps"), ("sku", "S3")]);
    assert_eq!(
        e,
        ArmError::NotAllowed { name: "sku".into(), value: json!("S3"), allowed: vec![json!("S1"), json!("S2")] }
    );
    assert_eq!(e.to_string(), r#"parameter 'sku' does not allow the value "S3": allowed values are "S1", "S2""#);
}

#[test]
fn constraints_and_types_are_enforced() {
    let e = err(NEEDS_NAME, &[("name", "dps"), ("count", "0")]);
    assert_eq!(e.to_string(), "parameter 'count' must be at least 1, got 0");
    let e = err(NEEDS_NAME, &[("name", "dps"), ("count", "many")]);
    assert_eq!(e, ArmError::WrongType { name: "count".into(), expected: "int".into(), value: "\"many\"".into() });
    assert_eq!(e.to_string(), "parameter 'count' expects a value of type int, got \"many\"");
}

#[test]
fn parameter_names_match_case_insensitively() {
    let deployment = run(NEEDS_NAME, &[("NAME", "dps")]).unwrap();
    assert_eq!(deployment.resources[0].name, "dps");
    assert_eq!(deployment.parameters["name"], json!("dps"));
}

#[test]
fn unknown_parameter_is_reported() {
    let e = err(NEEDS_NAME, &[("name", "dps"), ("colour", "blue")]);
    assert_eq!(e, ArmError::UnknownParameter { name: "colour".into(), origin: "--parameters" });
    assert_eq!(e.to_string(), "parameter 'colour' given in --parameters is not declared by the template");
}

#[test]
fn unknown_function_is_reported() {
    let template = r#"{ "resources": [{ "type": "A.B/c", "name": "x", "properties": { "v": "[frobnicate('a')]" } }] }"#;
    let e = err(template, &[]);
    assert_eq!(e, ArmError::UnknownFunction { name: "frobnicate".into(), at: "resources[0].properties.v".into() });
    assert_eq!(e.to_string(), "resources[0].properties.v: unknown template function 'frobnicate'");
}

#[test]
fn live_functions_are_unsupported() {
    let template =
        r#"{ "resources": [{ "type": "A.B/c", "name": "x", "properties": { "v": "[reference('y').id]" } }] }"#;
    let e = err(template, &[]);
    assert!(matches!(&e, ArmError::Unsupported { path, .. } if path == "resources[0].properties.v"), "{e:?}");
}

#[test]
fn bad_json_gives_line_and_column() {
    let template = "{\n  \"resources\": [\n    { \"type\": \"A.B/c\" \"name\": \"x\" }\n  ]\n}";
    let e = err(template, &[]);
    let ArmError::Json { document, line, column, message } = &e else { panic!("expected a JSON error, got {e:?}") };
    assert_eq!((*document, *line, *column), ("template", 3, 23));
    assert_eq!(message, "expected `,` or `}`");
    assert_eq!(e.to_string(), "template is not valid JSON at line 3 column 23: expected `,` or `}`");
}

#[test]
fn variable_cycle_is_reported() {
    let template = r#"{
        "variables": { "a": "[variables('b')]", "b": "[concat(variables('a'), 'x')]" },
        "resources": []
    }"#;
    let e = err(template, &[]);
    assert_eq!(e, ArmError::Cycle { section: "variables", chain: vec!["a".into(), "b".into(), "a".into()] });
    assert_eq!(e.to_string(), "variables refer to each other in a cycle: a -> b -> a");
}

#[test]
fn unknown_variable_is_reported() {
    let template = r#"{ "resources": [{ "type": "A.B/c", "name": "[variables('nope')]" }] }"#;
    let e = err(template, &[]);
    assert_eq!(e, ArmError::UnknownVariable { name: "nope".into(), at: "resources[0].name".into() });
}

#[test]
fn copy_is_unsupported() {
    let template = r#"{ "resources": [{ "type": "A.B/c", "name": "x", "copy": { "name": "loop", "count": 2 } }] }"#;
    let e = err(template, &[]);
    assert!(matches!(&e, ArmError::Unsupported { path, .. } if path == "resources[0].copy"), "{e:?}");
    assert!(e.to_string().starts_with("resources[0].copy: copy loops are not supported"));

    let template = r#"{ "resources": [{ "type": "A.B/c", "name": "x",
        "properties": { "copy": [{ "name": "disks", "count": 2, "input": {} }] } }] }"#;
    let e = err(template, &[]);
    assert!(matches!(&e, ArmError::Unsupported { path, .. } if path == "resources[0].properties.copy"), "{e:?}");
}

#[test]
fn nested_deployments_are_unsupported() {
    let template = r#"{ "resources": [{ "type": "Microsoft.Resources/deployments", "name": "inner" }] }"#;
    let e = err(template, &[]);
    assert!(matches!(&e, ArmError::Unsupported { path, .. } if path == "resources[0].type"), "{e:?}");
}

#[test]
fn resources_need_type_and_name() {
    let e = err(r#"{ "resources": [{ "type": "A.B/c" }] }"#, &[]);
    assert_eq!(e, ArmError::MissingField { path: "resources[0].name".into() });
    assert_eq!(e.to_string(), "resources[0].name is missing: every resource needs a 'type' and a 'name'");
    let e = err(r#"{ "resources": [{ "name": "x" }] }"#, &[]);
    assert_eq!(e, ArmError::MissingField { path: "resources[0].type".into() });
}

#[test]
fn expression_errors_name_the_field() {
    let template = r#"{ "resources": [{ "type": "A.B/c", "name": "x", "tags": { "t": "[concat('a', ]" } }] }"#;
    let e = err(template, &[]);
    let ArmError::Expression { at, expression, .. } = &e else { panic!("expected an expression error, got {e:?}") };
    assert_eq!(at, "resources[0].tags.t");
    assert_eq!(expression, "[concat('a', ]");
    assert_eq!(
        e.to_string(),
        "resources[0].tags.t: cannot evaluate \"[concat('a', ]\": the expression ends where a value was expected"
    );

    let template = r#"{ "resources": [{ "type": "A.B/c", "name": "[parameters('nope')]" }] }"#;
    let e = err(template, &[]);
    assert!(e.to_string().contains("parameter 'nope' is not declared"), "{e}");
}

#[test]
fn placeholders_from_parameter_values_are_caught_too() {
    let template = r#"{
        "parameters": { "region": { "type": "string", "defaultValue": "<your-region>" } },
        "resources": [
            { "type": "A.B/c", "name": "ok", "location": "[parameters('region')]", "tags": { "x": ["<fill-me>"] } }
        ]
    }"#;
    let e = err(template, &[]);
    assert_eq!(
        e,
        ArmError::Placeholders(vec![
            ("resources[0].location".into(), "<your-region>".into()),
            ("resources[0].tags.x[0]".into(), "<fill-me>".into()),
        ])
    );
    assert!(run(template, &[("region", "westus"), ("unused", "")]).is_err());
}

#[test]
fn parameter_defaults_may_use_other_parameters_but_not_variables() {
    let template = r#"{
        "parameters": {
            "full": { "type": "string", "defaultValue": "[concat(parameters('base'), '-dps')]" },
            "base": { "type": "string", "defaultValue": "demo" }
        },
        "resources": [{ "type": "A.B/c", "name": "[parameters('full')]" }]
    }"#;
    assert_eq!(run(template, &[]).unwrap().resources[0].name, "demo-dps");

    let template = r#"{
        "parameters": { "p": { "type": "string", "defaultValue": "[variables('v')]" } },
        "variables": { "v": "x" },
        "resources": []
    }"#;
    let e = err(template, &[]);
    assert!(e.to_string().contains("variables() cannot be used in the parameters section"), "{e}");
}

#[test]
fn user_functions_are_unsupported() {
    let template = r#"{ "functions": [{ "namespace": "x", "members": {} }], "resources": [] }"#;
    let e = err(template, &[]);
    assert!(matches!(&e, ArmError::Unsupported { path, .. } if path == "functions"), "{e:?}");
}

#[test]
fn relax_json_leaves_strings_alone() {
    let text = r#"{ "a": "a,}", "b": "http://x", "c": "/* keep */", "d": [1, 2, ], } // end"#;
    let relaxed = relax_json(text);
    let value: serde_json::Value = serde_json::from_str(&relaxed).unwrap();
    assert_eq!(value, json!({"a": "a,}", "b": "http://x", "c": "/* keep */", "d": [1, 2]}));
    assert_eq!(relaxed.len(), text.len());
}
