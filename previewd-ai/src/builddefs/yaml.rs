//! Where a changed line of a YAML build definition sits, from the lines a patch shows.
//!
//! A patch shows a few lines around each change, not the whole file, so the file cannot be
//! handed to a YAML parser. Block-style YAML (what compose and skaffold files are written
//! in) nests by indentation, so the keys above a changed line can be read from the visible
//! lines with smaller indentation: a careful line grammar for that one question. Git's hunk
//! header names the last top-level line above the hunk (`@@ ... @@ services:`), which
//! supplies the root when the hunk starts deeper. Whatever cannot be seen stays unknown;
//! the rules then answer conservatively.

/// One visible line, classified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct YamlLine {
    /// Column of the first non-space character (the `-` of a list item).
    pub indent: usize,
    /// The line starts a list item (`- ...`).
    pub item: bool,
    /// The mapping key on the line (`key: value`, `- key: value`), without quotes.
    pub key: Option<String>,
    /// Column of the key (after `- ` for list items).
    pub key_indent: usize,
    /// The value after `key:` or `- `, trimmed, without a trailing comment.
    pub value: String,
    /// Blank or comment-only line.
    pub trivia: bool,
    /// A document marker (`---`, `...`).
    pub document: bool,
}

/// Classifies one line of block-style YAML.
pub fn classify(text: &str) -> YamlLine {
    let indent = text.len() - text.trim_start_matches(' ').len();
    let rest = text[indent..].trim_end();
    let mut line = YamlLine {
        indent,
        item: false,
        key: None,
        key_indent: indent,
        value: String::new(),
        trivia: rest.is_empty() || rest.starts_with('#'),
        document: rest == "---" || rest == "..." || rest.starts_with("--- "),
    };
    if line.trivia || line.document {
        return line;
    }
    let mut body = rest;
    let mut col = indent;
    while body == "-" || body.starts_with("- ") {
        line.item = true;
        let after = body[1..].trim_start();
        col += body.len() - after.len();
        body = after;
    }
    line.key_indent = col;
    match split_key(body) {
        Some((k, v)) => {
            line.key = Some(k);
            line.value = strip_comment(v).trim().to_owned();
        }
        None => line.value = strip_comment(body).trim().to_owned(),
    }
    line
}

/// `key: value` → (key, value); quoted keys are unquoted. Flow collections and plain
/// scalars without `: ` are not keys.
fn split_key(body: &str) -> Option<(String, &str)> {
    if body.starts_with('{') || body.starts_with('[') {
        return None;
    }
    if let Some(q) = body.chars().next().filter(|c| *c == '"' || *c == '\'') {
        let end = body[1..].find(q)? + 1;
        let after = &body[end + 1..];
        let v = after.strip_prefix(':')?;
        if !(v.is_empty() || v.starts_with(' ')) {
            return None;
        }
        return Some((body[1..end].to_owned(), v));
    }
    let mut idx = None;
    let bytes = body.as_bytes();
    for (i, b) in bytes.iter().enumerate() {
        if *b == b'#' && i > 0 && bytes[i - 1] == b' ' {
            break;
        }
        if *b == b':' && (i + 1 == bytes.len() || bytes[i + 1] == b' ') {
            idx = Some(i);
            break;
        }
    }
    let i = idx?;
    let key = body[..i].trim();
    if key.is_empty() || key.contains(' ') && !key.starts_with('<') {
        return None;
    }
    Some((key.to_owned(), &body[i + 1..]))
}

fn strip_comment(v: &str) -> &str {
    let mut in_s = false;
    let mut in_d = false;
    let bytes = v.as_bytes();
    for (i, b) in bytes.iter().enumerate() {
        match b {
            b'\'' if !in_d => in_s = !in_s,
            b'"' if !in_s => in_d = !in_d,
            b'#' if !in_s && !in_d && (i == 0 || bytes[i - 1] == b' ') => return &v[..i],
            _ => {}
        }
    }
    v
}

/// A node above a line: a mapping key, or a list item (with the first key on its line).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Node {
    /// `key:`.
    Key(String),
    /// `- ...`; the index in `lines` of the item's first line.
    Item(usize),
}

/// Where a line sits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Location {
    /// The top-level key, when known (seen, or from the hunk header).
    pub root: Option<String>,
    /// Whether every level between the root and the line was visible.
    pub complete: bool,
    /// Visible ancestors, outermost first, then the line's own key (if any).
    pub path: Vec<Node>,
    /// Indentation of the outermost visible ancestor (or of the line).
    pub outer_indent: usize,
}

impl Location {
    /// The keys of the path (items skipped).
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.path.iter().filter_map(|n| match n {
            Node::Key(k) => Some(k.as_str()),
            Node::Item(_) => None,
        })
    }
}

/// The location of `lines[i]` from the lines above it; `section` is the hunk header's
/// text (git's last top-level line above the hunk).
pub fn locate(lines: &[YamlLine], i: usize, section: &str) -> Location {
    let me = &lines[i];
    let mut path = Vec::new();
    if let Some(k) = &me.key {
        path.push(Node::Key(k.clone()));
    }
    if me.item {
        path.insert(0, Node::Item(i));
    }
    // The column the next ancestor must be left of (or at, for a list's parent key).
    let mut limit = me.indent;
    let mut in_item = me.item;
    let mut outer = me.indent;
    let mut root = None;
    let mut complete = false;
    if me.indent == 0 && me.key.is_some() && !me.item {
        root = me.key.clone();
        complete = true;
    }
    let mut j = i;
    while !complete && j > 0 {
        j -= 1;
        let l = &lines[j];
        if l.trivia {
            continue;
        }
        if l.document {
            break;
        }
        let is_parent = if in_item {
            // a compact sequence sits at its parent key's column
            (l.indent < limit) || (l.indent == limit && !l.item && l.key.is_some())
        } else {
            l.indent < limit
        };
        if !is_parent {
            continue;
        }
        if l.item && l.indent < limit {
            // the line sits inside this list item; its key is a sibling, not a parent
            path.insert(0, Node::Item(j));
            limit = l.indent;
            in_item = true;
        } else if let Some(k) = &l.key {
            path.insert(0, Node::Key(k.clone()));
            limit = l.indent;
            in_item = false;
        } else {
            limit = l.indent;
            in_item = l.item;
        }
        outer = l.indent;
        if l.indent == 0 && !l.item {
            root = l.key.clone();
            complete = true;
        }
    }
    if root.is_none() {
        let s = section.trim();
        if let Some(k) = s
            .strip_suffix(':')
            .filter(|k| !k.contains(' ') && !k.is_empty())
        {
            root = Some(k.to_owned());
            path.insert(0, Node::Key(k.to_owned()));
        } else if let Some((k, _)) = split_key(s).filter(|(k, _)| !k.starts_with('#')) {
            root = Some(k.clone());
            path.insert(0, Node::Key(k));
        }
    }
    Location {
        root,
        complete,
        path,
        outer_indent: outer,
    }
}

/// The smallest positive indentation among the key lines: the file's indentation step.
pub fn indent_step(lines: &[YamlLine]) -> usize {
    lines
        .iter()
        .filter(|l| !l.trivia && !l.document && l.indent > 0)
        .map(|l| l.indent)
        .min()
        .unwrap_or(2)
}

/// Keys and values of the list item starting at `lines[start]`, as far as visible.
pub fn item_fields(lines: &[YamlLine], start: usize) -> Vec<(String, String)> {
    let head = &lines[start];
    let mut out = Vec::new();
    if let Some(k) = &head.key {
        out.push((k.clone(), head.value.clone()));
    }
    for l in &lines[start + 1..] {
        if l.trivia {
            continue;
        }
        if l.document || l.indent <= head.indent {
            break;
        }
        if l.indent == head.key_indent
            && let Some(k) = &l.key
        {
            out.push((k.clone(), l.value.clone()));
        }
    }
    out
}

/// Removes matching quotes around a scalar.
pub fn unquote(v: &str) -> &str {
    let v = v.trim();
    for q in ['"', '\''] {
        if let Some(inner) = v.strip_prefix(q).and_then(|s| s.strip_suffix(q)) {
            return inner;
        }
    }
    v
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn lines(text: &str) -> Vec<YamlLine> {
        text.lines().map(classify).collect()
    }

    #[test]
    fn classifies_keys_items_and_trivia() {
        let l = classify("    - image: gcr.io/x/api # the api");
        assert!(l.item);
        assert_eq!(l.key.as_deref(), Some("image"));
        assert_eq!(l.value, "gcr.io/x/api");
        assert_eq!((l.indent, l.key_indent), (4, 6));
        assert!(classify("   # note").trivia);
        assert!(classify("").trivia);
        let l = classify("      - \"8080:80\"");
        assert!(l.item && l.key.is_none());
        let l = classify("  \"my key\": 1");
        assert_eq!(l.key.as_deref(), Some("my key"));
        assert!(classify("---").document);
        assert_eq!(classify("url: http://x:1/a").key.as_deref(), Some("url"));
    }

    #[test]
    fn locates_compose_keys_with_and_without_the_root() {
        let ls = lines("services:\n  api:\n    build:\n      args:\n        V: 1\n");
        let loc = locate(&ls, 4, "");
        assert!(loc.complete);
        assert_eq!(
            loc.keys().collect::<Vec<_>>(),
            ["services", "api", "build", "args", "V"]
        );
        // the hunk starts below `services:`; the header supplies the root
        let ls = lines("  api:\n    ports:\n      - \"80:80\"\n");
        let loc = locate(&ls, 2, "services:");
        assert!(!loc.complete);
        assert_eq!(loc.root.as_deref(), Some("services"));
        assert_eq!(loc.keys().collect::<Vec<_>>(), ["services", "api", "ports"]);
        assert_eq!(loc.outer_indent, 2);
    }

    #[test]
    fn compact_sequences_and_items() {
        let ls = lines(
            "build:\n  artifacts:\n  - image: api\n    context: src/api\n  - image: web\n    context: src/web\n",
        );
        let loc = locate(&ls, 5, "");
        assert!(loc.complete);
        assert_eq!(
            loc.keys().collect::<Vec<_>>(),
            ["build", "artifacts", "context"]
        );
        let Node::Item(start) = loc.path[2] else {
            panic!("item expected: {loc:?}")
        };
        assert_eq!(start, 4);
        assert_eq!(
            item_fields(&ls, start),
            [
                ("image".to_owned(), "web".to_owned()),
                ("context".to_owned(), "src/web".to_owned())
            ]
        );
    }
}
