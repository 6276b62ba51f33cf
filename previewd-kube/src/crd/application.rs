//! Parts of a `PreviewRepository` that describe the application beyond the catalogue:
//! templated manifests, Secrets copied by reference, and the egress allow-list.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// One templated Kubernetes object of the `manifests` strategy.
///
/// The template is a structured object (not a YAML string): the API server checks it
/// when the repository is written (it must carry `apiVersion`, `kind` and `metadata`),
/// and the controller substitutes variables into its string values only, so a value can
/// never change the object's structure.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ManifestTemplate {
    /// Apply order: every object of a wave is applied only once every object of the
    /// earlier waves is ready (a database, then its migration Job, then the app).
    #[serde(default)]
    #[schemars(range(min = -100, max = 100))]
    pub wave: i32,
    /// The object. String values may use `{{number}}`, `{{sha}}`, `{{shortSha}}`,
    /// `{{branch}}`, `{{namespace}}` and `{{host}}`.
    #[schemars(schema_with = "embedded_object")]
    pub template: serde_json::Value,
}

fn embedded_object(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "x-kubernetes-embedded-resource": true,
        "x-kubernetes-preserve-unknown-fields": true,
    })
}

/// A Secret of the operator's secret source namespace, copied into every preview
/// namespace of the repository, kept in sync, and removed with the namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretReference {
    /// Name of the Secret in the source namespace; the copy has the same name. Only
    /// Secrets labelled `previewd.io/preview-secret: "true"` are copied.
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub name: String,
}

/// Destinations the pods of an environment may reach, besides DNS and their own
/// namespace (added to the environment's NetworkPolicy).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "(has(self.namespaces) && size(self.namespaces) > 0) || (has(self.cidrs) && size(self.cidrs) > 0)",
    "message": "an egress rule names at least one namespace or CIDR"
}]))]
pub struct EgressRule {
    /// Namespaces, by name (e.g. a shared staging service).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 20))]
    #[schemars(inner(regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")))]
    pub namespaces: Vec<String>,
    /// IP ranges in CIDR notation (e.g. an external API). The cloud metadata address
    /// 169.254.169.254 is always excluded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 20))]
    #[schemars(inner(length(max = 43)))]
    pub cidrs: Vec<String>,
    /// Ports; every port when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 20))]
    pub ports: Vec<EgressPort>,
}

/// A port (or range) of an egress rule.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EgressPort {
    /// Port number.
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// Last port of a range starting at `port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub end_port: Option<i32>,
    /// `TCP` (default), `UDP` or `SCTP`.
    #[serde(default)]
    pub protocol: Protocol,
}

/// A transport protocol.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum Protocol {
    /// TCP.
    #[default]
    TCP,
    /// UDP.
    UDP,
    /// SCTP.
    SCTP,
}

impl Protocol {
    /// The name Kubernetes uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::TCP => "TCP",
            Protocol::UDP => "UDP",
            Protocol::SCTP => "SCTP",
        }
    }
}
