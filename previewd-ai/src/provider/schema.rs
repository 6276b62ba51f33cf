//! Client-side validation of model answers against the JSON schema subset that previewd
//! uses in its requests.
//!
//! Supported keywords: `type` (a name or a list of names: `object`, `array`, `string`,
//! `integer`, `number`, `boolean`, `null`), `enum`, `const`, `properties`, `required`,
//! `additionalProperties` (`false` or a schema), `items`, `minItems`, `maxItems`,
//! `uniqueItems`, `minimum`, `maximum`, `minLength` and `maxLength`. Unknown keywords are
//! ignored, as JSON Schema prescribes; servers that enforce schemas only understand this
//! subset reliably anyway.

use serde_json::Value;

/// Checks `value` against `schema`; the error names the first offending JSON pointer.
pub fn validate(schema: &Value, value: &Value) -> Result<(), String> {
    check(schema, value, "")
}

fn type_matches(name: &str, value: &Value) -> bool {
    match name {
        "object" => value.is_object(),
        "array" => value.is_array(),
        "string" => value.is_string(),
        "boolean" => value.is_boolean(),
        "null" => value.is_null(),
        "number" => value.is_number(),
        "integer" => {
            value.is_i64()
                || value.is_u64()
                || value
                    .as_f64()
                    .is_some_and(|f| f.is_finite() && f.fract() == 0.0)
        }
        _ => false,
    }
}

fn at(path: &str) -> &str {
    if path.is_empty() { "/" } else { path }
}

fn check(schema: &Value, value: &Value, path: &str) -> Result<(), String> {
    let Some(schema) = schema.as_object() else {
        // `true` accepts everything, `false` nothing.
        return match schema {
            Value::Bool(false) => Err(format!("{}: no value is allowed here", at(path))),
            _ => Ok(()),
        };
    };

    match schema.get("type") {
        Some(Value::String(name)) if !type_matches(name, value) => {
            return Err(format!(
                "{}: expected {name}, found {}",
                at(path),
                kind(value)
            ));
        }
        Some(Value::Array(names))
            if !names
                .iter()
                .filter_map(Value::as_str)
                .any(|n| type_matches(n, value)) =>
        {
            return Err(format!(
                "{}: expected one of {}, found {}",
                at(path),
                Value::Array(names.clone()),
                kind(value)
            ));
        }
        _ => {}
    }

    if let Some(Value::Array(allowed)) = schema.get("enum")
        && !allowed.contains(value)
    {
        return Err(format!("{}: {value} is not in the allow-list", at(path)));
    }
    if let Some(expected) = schema.get("const")
        && expected != value
    {
        return Err(format!("{}: expected {expected}, found {value}", at(path)));
    }

    match value {
        Value::Object(map) => {
            let properties = schema.get("properties").and_then(Value::as_object);
            if let Some(Value::Array(required)) = schema.get("required") {
                for name in required.iter().filter_map(Value::as_str) {
                    if !map.contains_key(name) {
                        return Err(format!("{}: missing required property {name:?}", at(path)));
                    }
                }
            }
            for (name, item) in map {
                let child = format!("{path}/{}", name.replace('~', "~0").replace('/', "~1"));
                match properties.and_then(|p| p.get(name)) {
                    Some(sub) => check(sub, item, &child)?,
                    None => match schema.get("additionalProperties") {
                        Some(Value::Bool(false)) => {
                            return Err(format!("{}: unexpected property {name:?}", at(path)));
                        }
                        Some(extra @ Value::Object(_)) => check(extra, item, &child)?,
                        _ => {}
                    },
                }
            }
        }
        Value::Array(items) => {
            if let Some(min) = schema.get("minItems").and_then(Value::as_u64)
                && (items.len() as u64) < min
            {
                return Err(format!(
                    "{}: {} items, at least {min} required",
                    at(path),
                    items.len()
                ));
            }
            if let Some(max) = schema.get("maxItems").and_then(Value::as_u64)
                && (items.len() as u64) > max
            {
                return Err(format!(
                    "{}: {} items, at most {max} allowed",
                    at(path),
                    items.len()
                ));
            }
            if schema.get("uniqueItems") == Some(&Value::Bool(true)) {
                for (i, item) in items.iter().enumerate() {
                    if items[..i].contains(item) {
                        return Err(format!("{}: duplicate item {item}", at(path)));
                    }
                }
            }
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter().enumerate() {
                    check(item_schema, item, &format!("{path}/{i}"))?;
                }
            }
        }
        Value::Number(n) => {
            if let Some(f) = n.as_f64() {
                if let Some(min) = schema.get("minimum").and_then(Value::as_f64)
                    && f < min
                {
                    return Err(format!("{}: {n} is below the minimum {min}", at(path)));
                }
                if let Some(max) = schema.get("maximum").and_then(Value::as_f64)
                    && f > max
                {
                    return Err(format!("{}: {n} is above the maximum {max}", at(path)));
                }
            }
        }
        Value::String(s) => {
            let len = s.chars().count() as u64;
            if let Some(min) = schema.get("minLength").and_then(Value::as_u64)
                && len < min
            {
                return Err(format!("{}: string shorter than {min}", at(path)));
            }
            if let Some(max) = schema.get("maxLength").and_then(Value::as_u64)
                && len > max
            {
                return Err(format!("{}: string longer than {max}", at(path)));
            }
        }
        Value::Bool(_) | Value::Null => {}
    }
    Ok(())
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_f64() => "number",
        Value::Number(_) => "integer",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::validate;
    use serde_json::json;

    fn schema() -> serde_json::Value {
        json!({
            "type": "object",
            "additionalProperties": false,
            "required": ["services", "tier", "hours", "confident"],
            "properties": {
                "services": {
                    "type": "array",
                    "items": {"type": "string", "enum": ["orders", "billing"]},
                    "minItems": 1,
                    "maxItems": 2,
                    "uniqueItems": true
                },
                "tier": {"type": "string", "enum": ["small", "large"]},
                "hours": {"type": "integer", "minimum": 1, "maximum": 168},
                "confident": {"type": "boolean"},
                "note": {"type": ["string", "null"], "maxLength": 5}
            }
        })
    }

    #[test]
    fn accepts_a_conforming_value() {
        let v = json!({"services": ["orders"], "tier": "small", "hours": 4, "confident": true, "note": null});
        assert_eq!(validate(&schema(), &v), Ok(()));
        let v = json!({"services": ["orders", "billing"], "tier": "large", "hours": 168.0, "confident": false, "note": "ok"});
        assert_eq!(validate(&schema(), &v), Ok(()));
    }

    #[test]
    fn rejects_each_kind_of_violation() {
        let cases = [
            (json!([]), "expected object"),
            (
                json!({"services": ["orders"], "tier": "small", "hours": 4}),
                "missing required property \"confident\"",
            ),
            (
                json!({"services": ["orders"], "tier": "small", "hours": 4, "confident": true, "x": 1}),
                "unexpected property \"x\"",
            ),
            (
                json!({"services": ["prod-db"], "tier": "small", "hours": 4, "confident": true}),
                "/services/0: \"prod-db\" is not in the allow-list",
            ),
            (
                json!({"services": [], "tier": "small", "hours": 4, "confident": true}),
                "at least 1",
            ),
            (
                json!({"services": ["orders", "billing", "orders"], "tier": "small", "hours": 4, "confident": true}),
                "at most 2",
            ),
            (
                json!({"services": ["orders", "orders"], "tier": "small", "hours": 4, "confident": true}),
                "duplicate",
            ),
            (
                json!({"services": ["orders"], "tier": "small", "hours": 4.5, "confident": true}),
                "expected integer",
            ),
            (
                json!({"services": ["orders"], "tier": "small", "hours": 0, "confident": true}),
                "below the minimum",
            ),
            (
                json!({"services": ["orders"], "tier": "small", "hours": 169, "confident": true}),
                "above the maximum",
            ),
            (
                json!({"services": ["orders"], "tier": "small", "hours": 1, "confident": "yes"}),
                "expected boolean",
            ),
            (
                json!({"services": ["orders"], "tier": "small", "hours": 1, "confident": true, "note": "too long"}),
                "longer than 5",
            ),
            (
                json!({"services": ["orders"], "tier": "small", "hours": 1, "confident": true, "note": 3}),
                "expected one of",
            ),
        ];
        for (value, needle) in cases {
            let err = validate(&schema(), &value).expect_err(&value.to_string());
            assert!(err.contains(needle), "{err:?} should contain {needle:?}");
        }
    }
}
