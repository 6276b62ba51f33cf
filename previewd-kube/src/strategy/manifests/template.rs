//! Variables in templated manifests: `{{name}}` in string values, substituted after the
//! template was parsed, so that a value (a branch name chosen by a pull request's
//! author, say) can never add a key or a document.
//!
//! A `{{ident}}` whose name is not a variable is an error (a typo fails loudly instead
//! of deploying an empty string); text between braces that is not a plain identifier,
//! such as a Go template's `{{ .Values.x }}`, is left alone.

use std::collections::BTreeMap;

use serde_json::Value;

/// The variables of one environment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Variables {
    values: BTreeMap<&'static str, String>,
    undefined: BTreeMap<&'static str, &'static str>,
}

impl Variables {
    /// The variables of a pull request's environment, the same as image templates'
    /// (`number`, `sha`, `shortSha`, `branch`, made safe for an image tag) plus the
    /// environment's `namespace` and `host` (undefined without an Ingress).
    pub fn new(
        number: i64,
        sha: &str,
        branch: &str,
        namespace: &str,
        host: Option<&str>,
    ) -> Variables {
        let mut values = BTreeMap::new();
        values.insert("number", number.to_string());
        values.insert("sha", sha.to_string());
        values.insert("shortSha", sha.chars().take(7).collect());
        values.insert("branch", tag_safe(branch));
        values.insert("namespace", namespace.to_string());
        let mut undefined = BTreeMap::new();
        match host {
            Some(h) => {
                values.insert("host", h.to_string());
            }
            None => {
                undefined.insert("host", "the environment has no Ingress");
            }
        }
        Variables { values, undefined }
    }

    /// Replaces every variable in `text`.
    pub fn substitute(&self, text: &str) -> Result<String, String> {
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(start) = rest.find("{{") {
            out.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            let Some(end) = after.find("}}") else {
                out.push_str(&rest[start..]);
                return Ok(out);
            };
            let inner = after[..end].trim();
            if is_identifier(inner) {
                match self.values.get(inner) {
                    Some(v) => out.push_str(v),
                    None => {
                        return Err(match self.undefined.get(inner) {
                            Some(why) => format!("variable {{{{{inner}}}}} is undefined: {why}"),
                            None => format!(
                                "unknown variable {{{{{inner}}}}} (known: {})",
                                self.names().join(", ")
                            ),
                        });
                    }
                }
                rest = &after[end + 2..];
            } else {
                out.push_str("{{");
                rest = after;
            }
        }
        out.push_str(rest);
        Ok(out)
    }

    /// Substitutes into every string value of `value` (never into keys). The error
    /// names the path of the value.
    pub fn render(&self, value: &mut Value) -> Result<(), String> {
        self.render_at(value, &mut String::new())
    }

    fn render_at(&self, value: &mut Value, path: &mut String) -> Result<(), String> {
        match value {
            Value::String(s) => {
                if s.contains("{{") {
                    *s = self
                        .substitute(s)
                        .map_err(|e| format!("{}: {e}", display_path(path)))?;
                }
                Ok(())
            }
            Value::Array(items) => {
                for (i, item) in items.iter_mut().enumerate() {
                    let len = path.len();
                    path.push_str(&format!("[{i}]"));
                    self.render_at(item, path)?;
                    path.truncate(len);
                }
                Ok(())
            }
            Value::Object(map) => {
                for (k, v) in map.iter_mut() {
                    let len = path.len();
                    path.push('.');
                    path.push_str(k);
                    self.render_at(v, path)?;
                    path.truncate(len);
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    fn names(&self) -> Vec<&'static str> {
        self.values
            .keys()
            .chain(self.undefined.keys())
            .copied()
            .collect()
    }
}

fn display_path(path: &str) -> &str {
    if path.is_empty() {
        "."
    } else {
        path.trim_start_matches('.')
    }
}

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The branch as image templates see it: characters outside `[A-Za-z0-9_.-]` become
/// `-`, at most 128 characters.
fn tag_safe(branch: &str) -> String {
    let mut tag: String = branch
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    tag.truncate(128);
    tag
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    fn vars(host: Option<&str>) -> Variables {
        Variables::new(
            42,
            "0123456789abcdef0123456789abcdef01234567",
            "feat/x y",
            "preview-42-shop",
            host,
        )
    }

    #[test]
    fn substitutes_every_variable() {
        let v = vars(Some("pr-42.preview.test"));
        assert_eq!(
            v.substitute("{{number}} {{ sha }} {{shortSha}} {{branch}} {{namespace}} {{host}}")
                .unwrap(),
            "42 0123456789abcdef0123456789abcdef01234567 0123456 feat-x-y preview-42-shop pr-42.preview.test"
        );
        assert_eq!(v.substitute("plain").unwrap(), "plain");
        assert_eq!(v.substitute("a {{ b").unwrap(), "a {{ b");
    }

    #[test]
    fn unknown_and_undefined_variables_fail() {
        let e = vars(None).substitute("x-{{numbr}}").unwrap_err();
        assert!(e.contains("unknown variable {{numbr}}"), "{e}");
        let e = vars(None).substitute("{{host}}").unwrap_err();
        assert!(e.contains("no Ingress"), "{e}");
    }

    #[test]
    fn non_identifiers_between_braces_are_text() {
        assert_eq!(
            vars(None).substitute("{{ .Values.x }}-{{number}}").unwrap(),
            "{{ .Values.x }}-42"
        );
    }

    #[test]
    fn only_string_values_change_and_structure_cannot() {
        // A hostile branch name full of YAML and JSON syntax stays one string value.
        let v = Variables::new(1, "abcdef0", "x\n  evil: true\"}", "ns", None);
        let mut obj = json!({
            "metadata": {"name": "app-{{number}}", "labels": {"{{branch}}": "b-{{branch}}"}},
            "spec": {"replicas": 1, "args": ["--ref={{shortSha}}"], "flag": true}
        });
        v.render(&mut obj).unwrap();
        assert_eq!(
            obj,
            json!({
                "metadata": {"name": "app-1", "labels": {"{{branch}}": "b-x---evil--true--"}},
                "spec": {"replicas": 1, "args": ["--ref=abcdef0"], "flag": true}
            })
        );
        let mut bad = json!({"spec": {"containers": [{"image": "{{tag}}"}]}});
        let e = v.render(&mut bad).unwrap_err();
        assert!(e.starts_with("spec.containers[0].image: "), "{e}");
    }
}
