//! The ARM template evaluator: whole templates, and expressions inside a fixed template.

use dps_arm::{evaluate, ArmError, Deployment, DeploymentInput, Limits, ResourceGroup};
use serde_json::{json, Map, Value};

const RG: ResourceGroup<'static> = ResourceGroup { name: "rg", location: "westus", subscription_id: "sub" };

/// Errors are logged and returned to clients: they stay short whatever the template.
const MAX_MESSAGE: usize = 64 * 1024;

fn check(result: Result<Deployment, ArmError>) {
    let limits = Limits::default();
    match result {
        Ok(deployment) => {
            let mut total = 0;
            for resource in &deployment.resources {
                let bytes = resource.body.to_string().len();
                assert!(bytes <= limits.resource_bytes, "a resource of {bytes} bytes was accepted");
                total += bytes;
            }
            total += deployment.outputs.values().map(|v| v.to_string().len()).sum::<usize>();
            assert!(total <= limits.deployment_bytes, "a deployment of {total} bytes was accepted");
            assert!(deployment.resources.len() <= limits.resources);
        }
        Err(e) => {
            let message = e.to_string();
            assert!(message.len() <= MAX_MESSAGE, "an error of {} bytes", message.len());
        }
    }
}

/// Evaluates the bytes as a whole template (UTF-8 only: the server refuses other bodies).
pub fn arm_template(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let input =
        DeploymentInput { template_text: text, parameters: &[], parameters_file_text: None, resource_group: RG };
    check(evaluate(&input));
}

/// Each line of the bytes (UTF-8) is the expression of a variable `v0`, `v1`, ... (brackets
/// added unless the line has them), in a template with a string, an int, an object and an array
/// parameter, a resource whose name and properties use the first two variables, and an output of
/// the last; so lines can call each other through `variables('vN')`.
pub fn arm_expression(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let mut variables = Map::new();
    for (i, line) in text.lines().take(64).enumerate() {
        let expression = if line.starts_with('[') { line.to_owned() } else { format!("[{line}]") };
        variables.insert(format!("v{i}"), Value::String(expression));
    }
    let last = variables.len().saturating_sub(1);
    let template = json!({
        "parameters": {
            "s": {"type": "string", "defaultValue": "dps-01"},
            "n": {"type": "int", "defaultValue": 3, "minValue": 0, "maxValue": 10},
            "o": {"type": "object", "defaultValue": {"a": [1, 2, {"b": "c"}], "K": "v"}},
            "a": {"type": "array", "defaultValue": ["x", "y", 3], "allowedValues": ["x", "y", 3, 4]}
        },
        "variables": variables,
        "resources": [{
            "type": "Microsoft.Devices/provisioningServices",
            "apiVersion": "2022-02-05",
            "name": "[string(variables('v0'))]",
            "location": "[resourceGroup().location]",
            "properties": {"first": "[variables('v0')]", "second": "[if(greater(length(variables('v1')), 0), variables('v1'), 'none')]"}
        }],
        "outputs": {"out": {"type": "string", "value": format!("[string(variables('v{last}'))]")}}
    });
    let template = template.to_string();
    let input =
        DeploymentInput { template_text: &template, parameters: &[], parameters_file_text: None, resource_group: RG };
    check(evaluate(&input));
}
