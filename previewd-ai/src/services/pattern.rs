//! Repository path patterns and `.dockerignore`-style exclusion rules.

#[derive(Clone, Debug, PartialEq, Eq)]
enum Token {
    Char(char),
    /// `*`: any run of characters within one segment.
    Star,
    /// `?`: one character within one segment.
    One,
    /// `[...]`: a character class.
    Class {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Segment {
    /// `**`: zero or more whole segments.
    AnyDirs,
    /// A segment without wildcards.
    Literal(String),
    /// A segment with wildcards.
    Glob(Vec<Token>),
}

/// A compiled repository path pattern (see the module documentation for the syntax).
///
/// A pattern matches a path when it matches the path itself or one of its parent
/// directories; a pattern ending in `/` only matches parent directories (so `src/a/`
/// matches `src/a/main.go` but not a file called `src/a`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathPattern {
    raw: String,
    segments: Vec<Segment>,
    dir_only: bool,
}

impl PathPattern {
    /// Parses a pattern. Leading `/` and `./`, repeated `/` and `.` segments are ignored;
    /// `.`, `/` and `**` match every path.
    pub fn new(pattern: &str) -> Result<Self, String> {
        let trimmed = pattern.trim();
        if trimmed.is_empty() {
            return Err("empty pattern".to_owned());
        }
        let dir_only = trimmed.ends_with('/') && trimmed.len() > 1;
        let mut segments = Vec::new();
        for part in trimmed.split('/') {
            if part.is_empty() || part == "." {
                continue;
            }
            if part == ".." {
                return Err("`..` is not allowed".to_owned());
            }
            segments.push(parse_segment(part)?);
        }
        if segments.is_empty() {
            // `.` or `/`: the whole repository.
            segments.push(Segment::AnyDirs);
        }
        Ok(PathPattern {
            raw: pattern.to_owned(),
            segments,
            dir_only,
        })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.raw
    }

    /// Whether the pattern matches `path` (repository-relative, `/`-separated) or one of
    /// its parent directories.
    pub fn matches(&self, path: &str) -> bool {
        let segs: Vec<&str> = path
            .split('/')
            .filter(|s| !s.is_empty() && *s != ".")
            .collect();
        self.matches_segments(&segs)
    }

    /// Whether some path could match both this pattern and `other` (another pattern,
    /// repository-relative): one's literal leading directories lead to the other's, and
    /// when one side is a plain path the other pattern matches it.
    pub fn may_overlap(&self, other: &str) -> bool {
        let Ok(other) = PathPattern::new(other) else {
            return true;
        };
        let literal = |p: &PathPattern| p.segments.iter().all(|s| matches!(s, Segment::Literal(_)));
        let prefix = |p: &PathPattern| -> Vec<String> {
            p.segments
                .iter()
                .map_while(|s| match s {
                    Segment::Literal(l) => Some(l.clone()),
                    _ => None,
                })
                .collect()
        };
        let as_path = |p: &PathPattern| prefix(p).join("/");
        if literal(self) && !self.dir_only {
            // a plain path: does the other pattern match it, or lie below it?
            let mine = as_path(self);
            return other.matches(&mine) || {
                let theirs = prefix(&other);
                let me = prefix(self);
                theirs.len() >= me.len() && theirs[..me.len()] == me[..]
            };
        }
        if literal(&other) && !other.dir_only {
            let theirs = as_path(&other);
            return self.matches(&theirs) || {
                let me = prefix(self);
                let t = prefix(&other);
                me.len() >= t.len() && me[..t.len()] == t[..]
            };
        }
        let (a, b) = (prefix(self), prefix(&other));
        let n = a.len().min(b.len());
        a[..n] == b[..n]
    }

    pub(crate) fn matches_segments(&self, segs: &[&str]) -> bool {
        if segs.is_empty() {
            return false;
        }
        match_prefix(&self.segments, 0, segs, 0, self.dir_only)
    }
}

/// Whether `pat[pi..]` matches `segs[si..k]` for some `k` such that the whole consumed
/// prefix `segs[..k]` is non-empty, and a proper prefix when `dir_only`.
fn match_prefix(pat: &[Segment], pi: usize, segs: &[&str], si: usize, dir_only: bool) -> bool {
    if pi == pat.len() {
        return si >= 1
            && if dir_only {
                si < segs.len()
            } else {
                si <= segs.len()
            };
    }
    match &pat[pi] {
        Segment::AnyDirs => (si..=segs.len()).any(|s| match_prefix(pat, pi + 1, segs, s, dir_only)),
        Segment::Literal(lit) => {
            si < segs.len() && segs[si] == lit && match_prefix(pat, pi + 1, segs, si + 1, dir_only)
        }
        Segment::Glob(tokens) => {
            si < segs.len()
                && glob_segment(tokens, segs[si])
                && match_prefix(pat, pi + 1, segs, si + 1, dir_only)
        }
    }
}

fn parse_segment(part: &str) -> Result<Segment, String> {
    if part == "**" {
        return Ok(Segment::AnyDirs);
    }
    let chars: Vec<char> = part.chars().collect();
    let mut tokens = Vec::new();
    let mut wild = false;
    let mut i = 0;
    while i < chars.len() {
        match chars[i] {
            '*' => {
                wild = true;
                // `**` inside a segment behaves like `*` (Go semantics).
                if tokens.last() != Some(&Token::Star) {
                    tokens.push(Token::Star);
                }
            }
            '?' => {
                wild = true;
                tokens.push(Token::One);
            }
            '\\' => {
                i += 1;
                let c = *chars
                    .get(i)
                    .ok_or_else(|| "trailing backslash".to_owned())?;
                tokens.push(Token::Char(c));
            }
            '[' => {
                wild = true;
                i += 1;
                let mut negated = false;
                if matches!(chars.get(i), Some('^') | Some('!')) {
                    negated = true;
                    i += 1;
                }
                let mut ranges = Vec::new();
                let mut closed = false;
                let mut first = true;
                while i < chars.len() {
                    let mut c = chars[i];
                    if c == ']' && !first {
                        closed = true;
                        break;
                    }
                    first = false;
                    if c == '\\' {
                        i += 1;
                        c = *chars
                            .get(i)
                            .ok_or_else(|| "trailing backslash in class".to_owned())?;
                    }
                    let mut hi = c;
                    if chars.get(i + 1) == Some(&'-') && chars.get(i + 2).is_some_and(|n| *n != ']')
                    {
                        i += 2;
                        hi = chars[i];
                        if hi == '\\' {
                            i += 1;
                            hi = *chars
                                .get(i)
                                .ok_or_else(|| "trailing backslash in class".to_owned())?;
                        }
                        if hi < c {
                            return Err(format!("bad range {c}-{hi}"));
                        }
                    }
                    ranges.push((c, hi));
                    i += 1;
                }
                if !closed {
                    return Err("unterminated character class".to_owned());
                }
                tokens.push(Token::Class { negated, ranges });
            }
            c => tokens.push(Token::Char(c)),
        }
        i += 1;
    }
    if wild {
        Ok(Segment::Glob(tokens))
    } else {
        Ok(Segment::Literal(
            tokens
                .into_iter()
                .map(|t| match t {
                    Token::Char(c) => c,
                    // unreachable in practice: non-wild segments hold only characters
                    _ => '\u{fffd}',
                })
                .collect(),
        ))
    }
}

/// Go `filepath.Match` on one path segment (no `/` inside).
fn glob_segment(tokens: &[Token], name: &str) -> bool {
    let name: Vec<char> = name.chars().collect();
    // Iterative matcher with single-star backtracking.
    let (mut ti, mut ni) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while ni < name.len() {
        if ti < tokens.len() {
            match &tokens[ti] {
                Token::Star => {
                    star = Some((ti, ni));
                    ti += 1;
                    continue;
                }
                Token::One => {
                    ti += 1;
                    ni += 1;
                    continue;
                }
                Token::Char(c) if *c == name[ni] => {
                    ti += 1;
                    ni += 1;
                    continue;
                }
                Token::Class { negated, ranges } => {
                    let c = name[ni];
                    let inside = ranges.iter().any(|(lo, hi)| *lo <= c && c <= *hi);
                    if inside != *negated {
                        ti += 1;
                        ni += 1;
                        continue;
                    }
                }
                Token::Char(_) => {}
            }
        }
        match star {
            Some((st, sn)) => {
                ti = st + 1;
                ni = sn + 1;
                star = Some((st, sn + 1));
            }
            None => return false,
        }
    }
    tokens[ti..].iter().all(|t| *t == Token::Star)
}

/// Ordered exclusion rules with `.dockerignore` semantics: the last pattern matching the
/// path or one of its parent directories decides; `!pattern` re-includes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IgnoreRules {
    rules: Vec<(PathPattern, bool)>,
}

impl IgnoreRules {
    /// Compiles the rules; a trailing `/` is ignored, as Docker cleans patterns.
    pub fn new<S: AsRef<str>>(patterns: &[S]) -> Result<Self, (String, String)> {
        let mut rules = Vec::new();
        for p in patterns {
            let p = p.as_ref().trim();
            if p.is_empty() || p.starts_with('#') {
                continue;
            }
            let (negated, body) = match p.strip_prefix('!') {
                Some(rest) => (true, rest.trim()),
                None => (false, p),
            };
            let mut pattern = PathPattern::new(body).map_err(|reason| (p.to_owned(), reason))?;
            pattern.dir_only = false;
            rules.push((pattern, negated));
        }
        Ok(IgnoreRules { rules })
    }

    /// Whether the rules exclude `path`.
    pub fn is_ignored(&self, path: &str) -> bool {
        let segs: Vec<&str> = path
            .split('/')
            .filter(|s| !s.is_empty() && *s != ".")
            .collect();
        let mut ignored = false;
        for (pattern, negated) in &self.rules {
            if pattern.matches_segments(&segs) {
                ignored = !negated;
            }
        }
        ignored
    }

    /// Whether there are no rules.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn pat(p: &str) -> PathPattern {
        PathPattern::new(p).unwrap()
    }

    #[test]
    fn directory_prefix_matches_below_only() {
        let p = pat("src/a/");
        assert!(p.matches("src/a/main.go"));
        assert!(p.matches("src/a/x/y.go"));
        assert!(!p.matches("src/a"));
        assert!(!p.matches("src/ab/main.go"));
        assert!(!p.matches("other/src/a/main.go"));
    }

    #[test]
    fn single_file_and_directory_without_slash() {
        let p = pat("src/a/Dockerfile");
        assert!(p.matches("src/a/Dockerfile"));
        assert!(!p.matches("src/a/Dockerfile.debug"));
        // a matched directory includes everything below it
        let d = pat("src/a/gradle");
        assert!(d.matches("src/a/gradle/wrapper/gradle.properties"));
    }

    #[test]
    fn go_glob_semantics() {
        assert!(pat("src/a/package*.json").matches("src/a/package-lock.json"));
        assert!(pat("src/a/package*.json").matches("src/a/package.json"));
        assert!(!pat("src/*.go").matches("src/a/b.go"), "* never crosses /");
        assert!(pat("src/*/b.go").matches("src/a/b.go"));
        assert!(pat("src/?.go").matches("src/a.go"));
        assert!(!pat("src/?.go").matches("src/ab.go"));
        assert!(pat("src/[a-c].go").matches("src/b.go"));
        assert!(!pat("src/[a-c].go").matches("src/d.go"));
        assert!(pat("src/[^a-c].go").matches("src/d.go"));
        assert!(pat(r"src/\*.go").matches("src/*.go"));
        assert!(!pat(r"src/\*.go").matches("src/a.go"));
        assert!(PathPattern::new("src/[a-").is_err());
        assert!(PathPattern::new("").is_err());
    }

    #[test]
    fn overlap_between_inputs_and_ignore_patterns() {
        // a directory of inputs and a pattern below it
        assert!(pat("svc/").may_overlap("svc/build"));
        assert!(pat("svc/").may_overlap("svc/**/*.md"));
        assert!(!pat("svc/").may_overlap("other/*.md"));
        // single input files
        assert!(pat("svc/requirements.txt").may_overlap("svc/*.txt"));
        assert!(!pat("svc/requirements.txt").may_overlap("svc/*.in"));
        assert!(pat("svc/requirements.txt").may_overlap("**/requirements.txt"));
        // a pattern naming a directory that holds an input
        assert!(pat("svc/app/main.py").may_overlap("svc/app"));
        assert!(pat("svc/package*.json").may_overlap("svc/package.json"));
        assert!(!pat("svc/package*.json").may_overlap("svc/README.md"));
        assert!(pat("svc/package*.json").may_overlap("svc"));
        assert!(pat("svc/src").may_overlap("svc/src/**/*.test.js"));
        assert!(!pat("svc/src").may_overlap("svc/*.md"));
    }

    #[test]
    fn double_star() {
        assert!(pat("**/*.sh").matches("build.sh"));
        assert!(pat("**/*.sh").matches("a/b/c/build.sh"));
        assert!(!pat("**/*.sh").matches("a/b/c/build.bash"));
        assert!(pat("src/**/bin").matches("src/x/y/bin/tool"));
        assert!(pat("src/**/bin").matches("src/bin/tool"));
        assert!(pat("**").matches("anything/at/all"));
        assert!(pat(".").matches("README.md"));
        assert!(pat("./src/a/").matches("src/a/x"));
    }

    #[test]
    fn ignore_rules_follow_dockerignore() {
        let rules = IgnoreRules::new(&[
            "ctx/vendor",
            "ctx/**/*.md",
            "!ctx/docs/KEEP.md",
            "ctx/Dockerfile*",
            "!ctx/Dockerfile",
        ])
        .unwrap();
        assert!(
            rules.is_ignored("ctx/vendor/x/y.go"),
            "parent directory match"
        );
        assert!(rules.is_ignored("ctx/README.md"));
        assert!(rules.is_ignored("ctx/docs/a.md"));
        assert!(!rules.is_ignored("ctx/docs/KEEP.md"), "re-included");
        assert!(rules.is_ignored("ctx/Dockerfile.debug"));
        assert!(!rules.is_ignored("ctx/Dockerfile"));
        assert!(!rules.is_ignored("ctx/main.go"));
        assert!(!rules.is_ignored("ctx2/vendor/x"));
    }
}
