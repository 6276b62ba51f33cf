//! Image templates of the service catalogue: `ghcr.io/acme/{{service}}:pr-{{number}}`.
//!
//! A variable is `{{name}}`: a name (a letter, then letters, digits or `_`) between
//! double braces, without spaces. The names are those of [`VARIABLES`]; like a manifest
//! template, an image template naming another (`{{nubmer}}`) is refused, with the
//! variable in the message, instead of producing an image that fails later as a pull
//! error. A brace that is not part of a variable is refused too: an image reference
//! cannot contain one.
//!
//! The CRD schema carries the same rule as CEL ([`schema`]): [`TEMPLATE_PATTERN`]
//! admits exactly what [`check`] accepts (a property test compares them), so the API
//! server refuses a template the webhook could not render; its message names the first
//! unknown variable ([`VARIABLE_PATTERN`] found once the known ones are removed).

use schemars::{Schema, SchemaGenerator, json_schema};

/// The variables of an image template.
pub const VARIABLES: [&str; 5] = ["number", "sha", "shortSha", "branch", "service"];

/// Any variable (RE2 and Rust `regex` syntax, no backslashes: it sits in a CEL string).
pub const VARIABLE_PATTERN: &str = "[{][{][A-Za-z][A-Za-z0-9_]*[}][}]";

/// A whole valid template: characters other than braces, and variables of [`VARIABLES`].
pub const TEMPLATE_PATTERN: &str = "^([^{}]|[{][{](number|sha|shortSha|branch|service)[}][}])*$";

/// Longest image template, in characters.
pub const MAX_LENGTH: usize = 512;

/// Why an image template cannot be rendered.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ImageTemplateError {
    /// A variable whose name is not one of [`VARIABLES`].
    #[error(
        "unknown variable {variable} in image template {template:?} (known: {{{{number}}}}, {{{{sha}}}}, {{{{shortSha}}}}, {{{{branch}}}}, {{{{service}}}})"
    )]
    UnknownVariable {
        /// The variable as written, braces included.
        variable: String,
        /// The template.
        template: String,
    },
    /// A `{` or `}` that does not belong to a variable.
    #[error(
        "image template {template:?} has a brace at character {position} that is not part of a variable such as {{{{number}}}} (no spaces inside the braces)"
    )]
    StrayBrace {
        /// The template.
        template: String,
        /// Character offset of the brace (0-based).
        position: usize,
    },
}

/// A piece of a template: text, or a variable (its name, and the text as written).
#[derive(Clone, Debug, PartialEq, Eq)]
enum Piece<'a> {
    Text(&'a str),
    Variable { name: &'a str, written: &'a str },
}

/// Splits `template` into text and variables, refusing stray braces.
fn pieces(template: &str) -> Result<Vec<Piece<'_>>, ImageTemplateError> {
    let bytes = template.as_bytes();
    let stray = |at: usize| ImageTemplateError::StrayBrace {
        template: template.to_string(),
        position: template[..at].chars().count(),
    };
    let mut out = Vec::new();
    let mut text_start = 0;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'}' => return Err(stray(i)),
            b'{' => {
                if bytes.get(i + 1) != Some(&b'{') {
                    return Err(stray(i));
                }
                let mut j = i + 2;
                let name_start = j;
                if !bytes.get(j).is_some_and(u8::is_ascii_alphabetic) {
                    return Err(stray(i));
                }
                while bytes
                    .get(j)
                    .is_some_and(|b| b.is_ascii_alphanumeric() || *b == b'_')
                {
                    j += 1;
                }
                let name_end = j;
                if bytes.get(j) != Some(&b'}') || bytes.get(j + 1) != Some(&b'}') {
                    return Err(stray(i));
                }
                if text_start < i {
                    out.push(Piece::Text(&template[text_start..i]));
                }
                out.push(Piece::Variable {
                    name: &template[name_start..name_end],
                    written: &template[i..j + 2],
                });
                i = j + 2;
                text_start = i;
            }
            _ => i += 1,
        }
    }
    if text_start < bytes.len() {
        out.push(Piece::Text(&template[text_start..]));
    }
    Ok(out)
}

/// Checks that `template` is well formed and names only [`VARIABLES`].
pub fn check(template: &str) -> Result<(), ImageTemplateError> {
    render(template, |_| Some(String::new())).map(|_| ())
}

/// Replaces every variable of `template` with `value(name)`; `value` is asked only for
/// names of [`VARIABLES`], and a `None` answer counts as unknown.
pub fn render(
    template: &str,
    value: impl Fn(&str) -> Option<String>,
) -> Result<String, ImageTemplateError> {
    let mut out = String::with_capacity(template.len());
    for piece in pieces(template)? {
        match piece {
            Piece::Text(text) => out.push_str(text),
            Piece::Variable { name, written } => {
                match VARIABLES.contains(&name).then(|| value(name)).flatten() {
                    Some(v) => out.push_str(&v),
                    None => {
                        return Err(ImageTemplateError::UnknownVariable {
                            variable: written.to_string(),
                            template: template.to_string(),
                        });
                    }
                }
            }
        }
    }
    Ok(out)
}

/// The CEL rule of an image template: [`TEMPLATE_PATTERN`].
pub fn rule() -> String {
    format!("self.matches('{TEMPLATE_PATTERN}')")
}

/// The CEL message of a template the rule refuses: the first unknown variable, found once
/// the known ones are removed, or else the stray brace.
pub fn message_expression() -> String {
    let mut unknown = String::from("self");
    for name in VARIABLES {
        unknown.push_str(&format!(".replace('{{{{{name}}}}}', '')"));
    }
    let known = "(known: {{number}}, {{sha}}, {{shortSha}}, {{branch}}, {{service}})";
    format!(
        "{unknown}.matches('{VARIABLE_PATTERN}') \
         ? 'unknown variable ' + {unknown}.find('{VARIABLE_PATTERN}') + ' in image template \"' + self + '\" {known}' \
         : 'image template \"' + self + '\" has a brace that is not part of a variable such as {{{{number}}}} (no spaces inside the braces)'"
    )
}

/// The schema of an image template field (`#[schemars(schema_with = "...")]`): a string
/// of 1 to [`MAX_LENGTH`] characters, with a CEL rule that refuses an unknown variable
/// (naming it) and a stray brace.
pub fn schema(_generator: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "string",
        "minLength": 1,
        "maxLength": MAX_LENGTH,
        "x-kubernetes-validations": [{
            "rule": rule(),
            "messageExpression": message_expression(),
        }],
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn values(name: &str) -> Option<String> {
        Some(format!("<{name}>"))
    }

    #[test]
    fn renders_every_variable() {
        assert_eq!(
            render(
                "r/{{service}}:pr-{{number}}-{{shortSha}}-{{sha}}-{{branch}}",
                values
            )
            .unwrap(),
            "r/<service>:pr-<number>-<shortSha>-<sha>-<branch>"
        );
        assert_eq!(render("plain:1", values).unwrap(), "plain:1");
        assert_eq!(render("", values).unwrap(), "");
    }

    #[test]
    fn unknown_variables_are_named() {
        let err = render("ghcr.io/acme/web:pr-{{nubmer}}", values).unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown variable {{nubmer}} in image template \"ghcr.io/acme/web:pr-{{nubmer}}\" (known: {{number}}, {{sha}}, {{shortSha}}, {{branch}}, {{service}})"
        );
        let err = check("x:{{Number}}").unwrap_err();
        assert!(
            matches!(err, ImageTemplateError::UnknownVariable { ref variable, .. } if variable == "{{Number}}"),
            "{err}"
        );
    }

    #[test]
    fn stray_braces_are_refused() {
        for (template, position) in [
            ("x:{number}", 2),
            ("x:{{number}", 2),
            ("x:{{ .Values.tag }}", 2),
            ("x:{{ number }}", 2),
            ("x:}", 2),
            ("x:{{number}}}", 12),
            ("é{", 1),
            ("{{a b}}", 0),
        ] {
            match check(template) {
                Err(ImageTemplateError::StrayBrace { position: p, .. }) => {
                    assert_eq!(p, position, "{template}")
                }
                other => panic!("{template}: {other:?}"),
            }
        }
    }
}
