//! `dps-arm` evaluates Azure Resource Manager (ARM) deployment templates, as deployed with
//! `az deployment group create --resource-group RG --template-file template.json --parameters k=v`,
//! into the list of resources with every template expression evaluated.
//!
//! It is pure: no I/O, no network, no clock, no randomness. The caller reads the files and passes
//! their text in a [`DeploymentInput`]; [`evaluate`] returns a [`Deployment`] or an [`ArmError`]
//! whose message names the parameter or the JSON path (such as `resources[0].name`) at fault.
//!
//! What is evaluated:
//!
//! - the template is read as relaxed JSON ([`relax_json`]: comments and trailing commas allowed);
//! - `parameters`: types `string`, `securestring`, `int`, `bool`, `object`, `secureObject`, `array`
//!   (case-insensitive); values from the parameters file, then from `--parameters` (which win), then
//!   `defaultValue` (which may be an expression and may use other parameters); `allowedValues`,
//!   `minValue`, `maxValue`, `minLength` and `maxLength` are enforced;
//! - `variables`, which may use parameters and other variables (cycles are errors);
//! - `resources` in template order: every string value is evaluated, `condition: false` skips the
//!   resource, nested child `resources` are flattened after their parent with full type and name;
//! - `outputs`: each output's `value`, checked against its `type`.
//!
//! Expressions are strings wrapped in `[` and `]`; a string starting with `[[` is a literal with one
//! `[` removed. See the `expr` module for the grammar and `functions` for the functions.
//!
//! After evaluation, any resource string of the form `<...>` (such as
//! `<provide-a-valid-DPS-resource-name>`, left from documentation) is reported; all of them at once,
//! in [`ArmError::Placeholders`].
//!
//! `uniqueString()` and `guid()` are deterministic but are not byte-identical to Azure's.
//!
//! A template is input from a client: evaluation is bounded ([`Limits`]) by ARM's documented
//! template limits (256 parameters, 512 variables, 800 resources, 64 outputs, 24,576 characters
//! per expression, 4 MB per template and 1 MB per resource after expansion) and by bounds of its
//! own (1 MiB per string, 10,000 elements per array or properties per object, values 128 levels
//! deep, 256 levels of evaluation nesting, 32 MiB of values produced and 2 million steps per
//! deployment). Whatever the template, evaluation ends with a result or an error, in bounded
//! memory, stack and time; a bound reached is an [`ArmError::Limit`] that names the field and the
//! expression.
//!
//! Not supported (each an [`ArmError::Unsupported`] naming the place): `copy` loops, nested
//! deployments (`Microsoft.Resources/deployments`), user-defined `functions`, `languageVersion`
//! 2.0 templates, Key Vault references in parameters files, and functions that need a live Azure
//! (`reference`, `list*`, `deployment`, `environment`, `utcNow`, `newGuid`, ...).

mod error;
mod expr;
mod functions;
mod hash;
mod limits;
mod relax;
mod template;

use serde_json::{Map, Value};

pub use error::ArmError;
pub use limits::Limits;
pub use relax::relax_json;

/// What to deploy, and where.
#[derive(Debug, Clone, Copy)]
pub struct DeploymentInput<'a> {
    /// The template file's text.
    pub template_text: &'a str,
    /// From `--parameters k=v`, in command-line order (a later pair wins). Values are converted to
    /// the declared parameter type: `int` to a number, `bool` from `true`/`false`, `object` and
    /// `array` parsed as JSON, `string` and `securestring` taken as they are.
    pub parameters: &'a [(String, String)],
    /// The text of a parameters file in the ARM format
    /// (`{"$schema": ..., "contentVersion": ..., "parameters": {"name": {"value": ...}}}`), applied
    /// before `parameters`. A plain `{"name": value}` map is not accepted.
    pub parameters_file_text: Option<&'a str>,
    /// The resource group deployed to, as `resourceGroup()` and `resourceId()` see it.
    pub resource_group: ResourceGroup<'a>,
}

/// The target resource group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResourceGroup<'a> {
    pub name: &'a str,
    pub location: &'a str,
    pub subscription_id: &'a str,
}

/// One evaluated resource.
#[derive(Debug, Clone, PartialEq)]
pub struct Resource {
    /// The type as written, e.g. `Microsoft.Devices/ProvisioningServices` (for a nested child
    /// resource, prefixed with its parent's type).
    pub resource_type: String,
    pub api_version: Option<String>,
    /// The name (for a nested child resource, prefixed with its parent's name and a `/`).
    pub name: String,
    /// The whole evaluated resource object: `type`, `apiVersion`, `name`, `location`, `sku`,
    /// `properties`, `tags`, `dependsOn`, `condition`, ... (nested child `resources` are not kept
    /// here: they are resources of their own).
    pub body: Value,
}

/// The result of evaluating a template.
#[derive(Debug, Clone, PartialEq)]
pub struct Deployment {
    /// Resources in template order (conditions that evaluated to false left out).
    pub resources: Vec<Resource>,
    /// Each output's evaluated `value`, by output name.
    pub outputs: Map<String, Value>,
    /// The effective value of every declared parameter, by declared name.
    pub parameters: Map<String, Value>,
}

/// Evaluates a template: parameters, variables, resources and outputs.
///
/// Errors come one at a time (the first met), except placeholders: every resource field still
/// holding one is listed in a single [`ArmError::Placeholders`].
///
/// Evaluation is bounded by [`Limits::default`]: see [`evaluate_with_limits`].
pub fn evaluate(input: &DeploymentInput<'_>) -> Result<Deployment, ArmError> {
    template::evaluate(input, &Limits::default())
}

/// [`evaluate`] within other [`Limits`]. Whatever the template, evaluation ends, within the
/// limits' memory and work, with a result or an error; a bound reached is an
/// [`ArmError::Limit`] naming the template field and the expression.
pub fn evaluate_with_limits(input: &DeploymentInput<'_>, limits: &Limits) -> Result<Deployment, ArmError> {
    template::evaluate(input, limits)
}
