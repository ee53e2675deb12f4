//! JSON Schema of the manifests, for editor completion and CI linting.

use crate::manifest::{FleetSpec, SiteSpec, StackSpec};

/// One schema accepting any of the three kinds, each selected by `kind`.
pub fn manifest_schema() -> serde_json::Value {
    let mut generator = schemars::generate::SchemaSettings::draft2020_12().into_generator();
    let fleet = generator.subschema_for::<FleetSpec>();
    let site = generator.subschema_for::<SiteSpec>();
    let stack = generator.subschema_for::<StackSpec>();
    let defs = generator.take_definitions(true);
    let with_kind = |kind: &str, schema: schemars::Schema| {
        serde_json::json!({
            "if": { "properties": { "kind": { "const": kind } }, "required": ["kind"] },
            "then": schema,
        })
    };
    serde_json::json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://vsa.dev/schema/vsa-v1.json",
        "title": "vsa manifest (apiVersion vsa/v1)",
        "type": "object",
        "required": ["apiVersion", "kind"],
        "properties": {
            "apiVersion": { "const": "vsa/v1" },
            "kind": { "enum": ["Fleet", "Site", "Stack"] }
        },
        "allOf": [
            with_kind("Fleet", fleet),
            with_kind("Site", site),
            with_kind("Stack", stack),
        ],
        "$defs": defs,
    })
}
