//! Check constraints of a simple form, parsed from `pg_get_constraintdef` text into rules the
//! generators honour: `col IN (...)` (printed `col = ANY (ARRAY[...])`), ranges
//! (`col >= 0`, `col > 0 AND col <= 5`), non-empty text (`col <> ''`, `length(col) > 0`),
//! length bounds and comparisons between two columns (`ends_at > starts_at`). Anything
//! else is left to the database to enforce and reported as not understood.

/// A constraint on one column's values.
#[derive(Debug, Clone, PartialEq)]
pub enum ColumnRule {
    /// The value is one of these literals.
    OneOf(Vec<String>),
    /// Lower bound.
    Min {
        /// Bound.
        value: f64,
        /// `>=` rather than `>`.
        inclusive: bool,
    },
    /// Upper bound.
    Max {
        /// Bound.
        value: f64,
        /// `<=` rather than `<`.
        inclusive: bool,
    },
    /// Text length bounds (characters).
    Length {
        /// Minimum length.
        min: Option<u32>,
        /// Maximum length.
        max: Option<u32>,
    },
    /// The value is greater than (or equal to) another column of the same row.
    After {
        /// Index of the other column.
        column: usize,
        /// `>=` rather than `>`.
        or_equal: bool,
    },
    /// `IS NOT NULL`.
    NotNull,
}

/// Parses a table check constraint; `Some` only when every part of it was understood.
pub fn parse_table_check(definition: &str, columns: &[&str]) -> Option<Vec<(usize, ColumnRule)>> {
    let body = check_body(definition)?;
    let mut rules = Vec::new();
    for part in split_top_level_and(body) {
        rules.push(parse_comparison(part, columns)?);
    }
    (!rules.is_empty()).then_some(rules)
}

/// Parses a domain check (`VALUE` stands for the column); only single-column rules.
pub fn parse_domain_check(definition: &str) -> Option<ColumnRule> {
    let rules = parse_table_check(definition, &["value"])?;
    match rules.as_slice() {
        [(0, rule)] if !matches!(rule, ColumnRule::After { .. }) => Some(rule.clone()),
        _ => None,
    }
}

/// Whether `text` mentions the identifier `name` (as a whole word or quoted).
pub fn mentions_identifier(text: &str, name: &str) -> bool {
    let quoted = format!("\"{}\"", name.replace('"', "\"\""));
    if text.contains(&quoted) {
        return true;
    }
    let bytes = text.as_bytes();
    let mut start = 0;
    while let Some(pos) = text[start..].find(name) {
        let at = start + pos;
        let end = at + name.len();
        let before = at == 0 || !is_ident_byte(bytes[at - 1]);
        let after = end >= bytes.len() || !is_ident_byte(bytes[end]);
        if before && after {
            return true;
        }
        start = end;
    }
    false
}

fn is_ident_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'$'
}

fn check_body(definition: &str) -> Option<&str> {
    let d = definition.trim();
    let d = d.strip_prefix("CHECK")?.trim();
    let d = d.strip_suffix("NOT VALID").map_or(d, str::trim);
    Some(strip_parens(d))
}

/// Removes parentheses that enclose the whole expression.
fn strip_parens(mut s: &str) -> &str {
    loop {
        s = s.trim();
        if s.starts_with('(') && s.ends_with(')') && closing_paren(s, 0) == Some(s.len() - 1) {
            s = &s[1..s.len() - 1];
        } else {
            return s;
        }
    }
}

/// Index of the parenthesis closing the one at `open`, skipping string literals.
fn closing_paren(s: &str, open: usize) -> Option<usize> {
    let mut depth = 0i32;
    let mut in_str = false;
    for (i, c) in s.char_indices().skip_while(|(i, _)| *i < open) {
        match c {
            '\'' => in_str = !in_str,
            '(' if !in_str => depth += 1,
            ')' if !in_str => {
                depth -= 1;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => {}
        }
    }
    None
}

/// Splits on ` AND ` at nesting depth zero.
fn split_top_level_and(s: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut depth = 0i32;
    let mut in_str = false;
    let mut last = 0;
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\'' => in_str = !in_str,
            b'(' if !in_str => depth += 1,
            b')' if !in_str => depth -= 1,
            b' ' if !in_str && depth == 0 && s[i..].starts_with(" AND ") => {
                parts.push(strip_parens(&s[last..i]));
                i += 5;
                last = i;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    parts.push(strip_parens(&s[last..]));
    parts
}

/// Finds a comparison operator at depth zero: returns (lhs, op, rhs).
fn split_comparison(s: &str) -> Option<(&str, &str, &str)> {
    let mut depth = 0i32;
    let mut in_str = false;
    let bytes = s.as_bytes();
    for i in 0..bytes.len() {
        match bytes[i] {
            b'\'' => in_str = !in_str,
            b'(' if !in_str => depth += 1,
            b')' if !in_str => depth -= 1,
            b'<' | b'>' | b'=' | b'!' if !in_str && depth == 0 => {
                let two = s.get(i..i + 2).unwrap_or("");
                let op = match two {
                    ">=" | "<=" | "<>" | "!=" => two,
                    _ if bytes[i] == b'!' => return None,
                    _ => &s[i..i + 1],
                };
                return Some((s[..i].trim(), op, s[i + op.len()..].trim()));
            }
            _ => {}
        }
    }
    None
}

fn parse_comparison(part: &str, columns: &[&str]) -> Option<(usize, ColumnRule)> {
    let part = strip_parens(part);
    if let Some(lhs) = part.strip_suffix("IS NOT NULL") {
        return Some((column_ref(lhs, columns)?, ColumnRule::NotNull));
    }
    let (lhs, op, rhs) = split_comparison(part)?;
    // col = ANY (ARRAY[...])
    if op == "=" && rhs.starts_with("ANY") {
        let column = column_ref(lhs, columns)?;
        return Some((column, ColumnRule::OneOf(array_literals(rhs)?)));
    }
    // length(col) op n
    if let Some(column) = length_ref(lhs, columns) {
        let n = number(rhs)?;
        if n < 0.0 {
            return None;
        }
        let n = n as u32;
        let (min, max) = match op {
            ">" => (Some(n + 1), None),
            ">=" => (Some(n), None),
            "<" => (None, Some(n.checked_sub(1)?)),
            "<=" => (None, Some(n)),
            _ => return None,
        };
        return Some((column, ColumnRule::Length { min, max }));
    }
    // col <> ''
    if (op == "<>" || op == "!=")
        && let Some(column) = column_ref(lhs, columns)
        && strip_cast(rhs) == "''"
    {
        return Some((
            column,
            ColumnRule::Length {
                min: Some(1),
                max: None,
            },
        ));
    }
    let left_col = column_ref(lhs, columns);
    let right_col = column_ref(rhs, columns);
    match (left_col, right_col) {
        (Some(a), Some(b)) if a != b => match op {
            ">" => Some((
                a,
                ColumnRule::After {
                    column: b,
                    or_equal: false,
                },
            )),
            ">=" => Some((
                a,
                ColumnRule::After {
                    column: b,
                    or_equal: true,
                },
            )),
            "<" => Some((
                b,
                ColumnRule::After {
                    column: a,
                    or_equal: false,
                },
            )),
            "<=" => Some((
                b,
                ColumnRule::After {
                    column: a,
                    or_equal: true,
                },
            )),
            _ => None,
        },
        (Some(a), None) => bound(a, op, number(rhs)?, false),
        (None, Some(b)) => bound(b, op, number(lhs)?, true),
        _ => None,
    }
}

fn bound(column: usize, op: &str, value: f64, reversed: bool) -> Option<(usize, ColumnRule)> {
    // `n < col` is `col > n`.
    let op = if reversed {
        match op {
            ">" => "<",
            "<" => ">",
            ">=" => "<=",
            "<=" => ">=",
            other => other,
        }
    } else {
        op
    };
    let rule = match op {
        ">" => ColumnRule::Min {
            value,
            inclusive: false,
        },
        ">=" => ColumnRule::Min {
            value,
            inclusive: true,
        },
        "<" => ColumnRule::Max {
            value,
            inclusive: false,
        },
        "<=" => ColumnRule::Max {
            value,
            inclusive: true,
        },
        _ => return None,
    };
    Some((column, rule))
}

/// `expr::type` → `expr` (repeatedly), and enclosing parentheses removed.
fn strip_cast(s: &str) -> &str {
    let mut s = strip_parens(s);
    loop {
        let Some(pos) = s.rfind("::") else {
            return s;
        };
        let ty = &s[pos + 2..];
        if ty
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, ' ' | '_' | '[' | ']' | '"' | '.'))
        {
            s = strip_parens(&s[..pos]);
        } else {
            return s;
        }
    }
}

fn column_ref(s: &str, columns: &[&str]) -> Option<usize> {
    let s = strip_cast(s);
    let name = if let Some(inner) = s.strip_prefix('"').and_then(|r| r.strip_suffix('"')) {
        inner.replace("\"\"", "\"")
    } else if !s.is_empty() && s.bytes().all(is_ident_byte) && !s.as_bytes()[0].is_ascii_digit() {
        s.to_string()
    } else {
        return None;
    };
    let name = if columns == ["value"] {
        name.to_ascii_lowercase()
    } else {
        name
    };
    columns.iter().position(|c| *c == name)
}

fn length_ref(s: &str, columns: &[&str]) -> Option<usize> {
    let s = strip_cast(s);
    for f in ["char_length(", "character_length(", "length("] {
        if let Some(rest) = s.strip_prefix(f)
            && let Some(inner) = rest.strip_suffix(')')
        {
            return column_ref(inner, columns);
        }
    }
    None
}

fn number(s: &str) -> Option<f64> {
    let s = strip_cast(s);
    let s = s
        .strip_prefix('\'')
        .and_then(|r| r.strip_suffix('\''))
        .unwrap_or(s);
    let s = strip_parens(s);
    s.parse::<f64>().ok().filter(|v| v.is_finite())
}

/// The string literals of `ANY (ARRAY['a'::text, 'b'::text])` (casts in any place).
fn array_literals(s: &str) -> Option<Vec<String>> {
    let start = s.find("ARRAY[")? + "ARRAY[".len();
    let end = s.rfind(']')?;
    let inner = s.get(start..end)?;
    let mut values = Vec::new();
    let mut chars = inner.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                let mut v = String::new();
                loop {
                    match chars.next()? {
                        '\'' if chars.peek() == Some(&'\'') => {
                            chars.next();
                            v.push('\'');
                        }
                        '\'' => break,
                        other => v.push(other),
                    }
                }
                values.push(v);
            }
            c if c.is_ascii_digit() || c == '-' => {
                // Numeric literals: ARRAY[1, 2, 3].
                let mut v = String::from(c);
                while let Some(&d) = chars.peek() {
                    if d.is_ascii_digit() || d == '.' {
                        v.push(d);
                        chars.next();
                    } else {
                        break;
                    }
                }
                values.push(v);
            }
            _ => {}
        }
    }
    (!values.is_empty()).then_some(values)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    const COLS: &[&str] = &["status", "price", "rating", "starts_at", "ends_at", "name"];

    #[test]
    fn in_list_as_postgres_prints_it() {
        let r = parse_table_check(
            "CHECK ((status = ANY (ARRAY['pending'::text, 'paid'::text, 'it''s'::text])))",
            COLS,
        );
        assert_eq!(
            r,
            Some(vec![(
                0,
                ColumnRule::OneOf(vec!["pending".into(), "paid".into(), "it's".into()])
            )])
        );
        let r = parse_table_check(
            "CHECK (((status)::text = ANY ((ARRAY['a'::character varying, 'b'::character varying])::text[])))",
            COLS,
        );
        assert_eq!(
            r,
            Some(vec![(0, ColumnRule::OneOf(vec!["a".into(), "b".into()]))])
        );
    }

    #[test]
    fn ranges_and_between() {
        assert_eq!(
            parse_table_check("CHECK ((price >= (0)::numeric))", COLS),
            Some(vec![(
                1,
                ColumnRule::Min {
                    value: 0.0,
                    inclusive: true
                }
            )])
        );
        assert_eq!(
            parse_table_check("CHECK (((rating >= 1) AND (rating <= 5)))", COLS),
            Some(vec![
                (
                    2,
                    ColumnRule::Min {
                        value: 1.0,
                        inclusive: true
                    }
                ),
                (
                    2,
                    ColumnRule::Max {
                        value: 5.0,
                        inclusive: true
                    }
                )
            ])
        );
        assert_eq!(
            parse_table_check("CHECK ((price > '-1'::integer))", COLS),
            Some(vec![(
                1,
                ColumnRule::Min {
                    value: -1.0,
                    inclusive: false
                }
            )])
        );
    }

    #[test]
    fn column_comparisons_and_lengths() {
        assert_eq!(
            parse_table_check("CHECK ((ends_at > starts_at))", COLS),
            Some(vec![(
                4,
                ColumnRule::After {
                    column: 3,
                    or_equal: false
                }
            )])
        );
        assert_eq!(
            parse_table_check("CHECK ((starts_at <= ends_at))", COLS),
            Some(vec![(
                4,
                ColumnRule::After {
                    column: 3,
                    or_equal: true
                }
            )])
        );
        assert_eq!(
            parse_table_check("CHECK ((char_length(name) > 0))", COLS),
            Some(vec![(
                5,
                ColumnRule::Length {
                    min: Some(1),
                    max: None
                }
            )])
        );
        assert_eq!(
            parse_table_check("CHECK ((name <> ''::text))", COLS),
            Some(vec![(
                5,
                ColumnRule::Length {
                    min: Some(1),
                    max: None
                }
            )])
        );
    }

    #[test]
    fn what_is_not_understood_is_none() {
        assert_eq!(
            parse_table_check("CHECK (((status IS NULL) OR (price > 0)))", COLS),
            None
        );
        assert_eq!(
            parse_table_check("CHECK ((name ~ '^[a-z]+$'::text))", COLS),
            None
        );
        assert_eq!(parse_table_check("CHECK ((unknown > 0))", COLS), None);
    }

    #[test]
    fn domain_checks_use_value() {
        assert_eq!(
            parse_domain_check("CHECK ((VALUE > 0))"),
            Some(ColumnRule::Min {
                value: 0.0,
                inclusive: false
            })
        );
    }

    #[test]
    fn identifiers_are_found_as_words() {
        assert!(mentions_identifier("btree (lower(email))", "email"));
        assert!(!mentions_identifier("btree (lower(email2))", "email"));
        assert!(mentions_identifier("btree (\"Weird Col\")", "Weird Col"));
    }
}
