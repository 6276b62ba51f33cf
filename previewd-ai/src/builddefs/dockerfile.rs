//! A line grammar for Dockerfiles: the instructions that decide a build's inputs.
//!
//! Handles line continuations (the `# escape=` directive included), comments, JSON
//! (exec) and shell forms, flags (`--from`, `--chown`, `--link`, `--exclude`, `--parents`),
//! heredocs (their bodies are skipped: they are not files of the context), `ARG` with and
//! without defaults, and `RUN --mount=type=bind`.

use std::collections::BTreeMap;

/// One instruction, after joining continuation lines.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Instruction {
    /// Upper-cased keyword (`COPY`, `ARG`, ...).
    pub keyword: String,
    /// `--name=value` flags in order (a flag without `=` has an empty value).
    pub flags: Vec<(String, String)>,
    /// Arguments after the flags (JSON form decoded).
    pub args: Vec<String>,
    /// 1-based line of the instruction's first line.
    pub line: usize,
}

/// A source of `COPY`/`ADD`/`RUN --mount=type=bind` read from the build context.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContextSource {
    /// The source as written, relative to the context (`${VAR}` kept).
    pub source: String,
    /// `--exclude` patterns of the instruction.
    pub excludes: Vec<String>,
}

/// Splits a Dockerfile into instructions.
pub fn parse(text: &str) -> Vec<Instruction> {
    let mut escape = '\\';
    let mut out = Vec::new();
    let mut lines = text.lines().enumerate().peekable();
    let mut directives = true;
    while let Some((n, raw)) = lines.next() {
        let trimmed = raw.trim();
        if directives {
            // parser directives: `# name=value` lines before anything else
            if let Some((k, v)) = trimmed.strip_prefix('#').and_then(|d| d.split_once('='))
                && !k.trim().is_empty()
                && k.trim().chars().all(|c| c.is_ascii_alphanumeric())
            {
                if k.trim().eq_ignore_ascii_case("escape")
                    && let Some(c) = v.trim().chars().next()
                {
                    escape = c;
                }
                continue;
            }
            directives = false;
        }
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let mut logical = String::new();
        let mut cur = raw.trim_end().to_owned();
        loop {
            match cur.strip_suffix(escape) {
                Some(head) => {
                    logical.push_str(head);
                    logical.push(' ');
                    // continuation: skip comment and blank lines inside it
                    let mut next = None;
                    for (_, l) in lines.by_ref() {
                        let t = l.trim();
                        if t.starts_with('#') {
                            continue;
                        }
                        next = Some(l.trim_end().to_owned());
                        break;
                    }
                    match next {
                        Some(l) => cur = l,
                        None => break,
                    }
                }
                None => {
                    logical.push_str(&cur);
                    break;
                }
            }
        }
        let logical = logical.trim();
        let (kw, rest) = logical
            .split_once(|c: char| c.is_whitespace())
            .unwrap_or((logical, ""));
        let keyword = kw.to_ascii_uppercase();
        let mut rest = rest.trim();
        let mut flags = Vec::new();
        while let Some(f) = rest.strip_prefix("--") {
            let (flag, tail) = f.split_once(|c: char| c.is_whitespace()).unwrap_or((f, ""));
            let (name, value) = flag.split_once('=').unwrap_or((flag, ""));
            flags.push((name.to_ascii_lowercase(), value.to_owned()));
            rest = tail.trim_start();
        }
        let heredoc = rest.contains("<<");
        let args = if rest.starts_with('[') {
            serde_json::from_str::<Vec<String>>(rest)
                .unwrap_or_else(|_| rest.split_whitespace().map(str::to_owned).collect())
        } else {
            rest.split_whitespace().map(str::to_owned).collect()
        };
        if heredoc {
            // skip heredoc bodies: `<<EOF` / `<<-"EOF"` up to the delimiter line
            let delims: Vec<String> = args
                .iter()
                .filter_map(|a| a.strip_prefix("<<"))
                .map(|d| {
                    d.trim_start_matches('-')
                        .trim_matches(['"', '\''])
                        .to_owned()
                })
                .filter(|d| !d.is_empty())
                .collect();
            for d in delims {
                for (_, l) in lines.by_ref() {
                    if l.trim() == d {
                        break;
                    }
                }
            }
        }
        out.push(Instruction {
            keyword,
            flags,
            args,
            line: n + 1,
        });
    }
    out
}

impl Instruction {
    fn flag(&self, name: &str) -> Option<&str> {
        self.flags
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// The context files the build reads: sources of `COPY`/`ADD` without `--from` (URLs,
/// git sources and heredocs excluded) and of `RUN --mount=type=bind` without `from`.
pub fn context_sources(instructions: &[Instruction]) -> Vec<ContextSource> {
    let mut out = Vec::new();
    for ins in instructions {
        match ins.keyword.as_str() {
            "COPY" | "ADD" => {
                if ins.flag("from").is_some() || ins.args.len() < 2 {
                    continue;
                }
                let excludes: Vec<String> = ins
                    .flags
                    .iter()
                    .filter(|(n, _)| n == "exclude")
                    .map(|(_, v)| v.clone())
                    .collect();
                for src in &ins.args[..ins.args.len() - 1] {
                    if src.starts_with("<<") || src.contains("://") || src.starts_with("git@") {
                        continue;
                    }
                    out.push(ContextSource {
                        source: src.clone(),
                        excludes: excludes.clone(),
                    });
                }
            }
            "RUN" => {
                for (name, value) in &ins.flags {
                    if name != "mount" {
                        continue;
                    }
                    let opts: BTreeMap<&str, &str> = value
                        .split(',')
                        .map(|kv| kv.split_once('=').unwrap_or((kv, "")))
                        .collect();
                    if opts.get("type") != Some(&"bind") || opts.contains_key("from") {
                        continue;
                    }
                    let src = opts
                        .get("source")
                        .or_else(|| opts.get("src"))
                        .copied()
                        .unwrap_or(".");
                    out.push(ContextSource {
                        source: src.to_owned(),
                        excludes: Vec::new(),
                    });
                }
            }
            _ => {}
        }
    }
    out
}

/// `ARG` declarations: name → default (as written), in order of first declaration.
pub fn args(instructions: &[Instruction]) -> BTreeMap<String, Option<String>> {
    let mut out = BTreeMap::new();
    for ins in instructions.iter().filter(|i| i.keyword == "ARG") {
        for a in &ins.args {
            let (name, default) = match a.split_once('=') {
                Some((n, v)) => (n, Some(v.trim_matches(['"', '\'']).to_owned())),
                None => (a.as_str(), None),
            };
            out.entry(name.to_owned()).or_insert(default);
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const DOCKERFILE: &str = r#"# syntax=docker/dockerfile:1
ARG GO_VERSION=1.22
FROM golang:${GO_VERSION} AS build
WORKDIR /src
# dependencies first
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg \
    --mount=type=bind,source=internal/gen,target=/src/gen \
    go mod download
COPY --chown=app:app ["cmd/", "/src/cmd/"]
COPY --exclude=*.md . .
ADD https://example.com/ca.pem /etc/ca.pem
COPY <<EOF /etc/app.conf
COPY not-a-source /nowhere
EOF
FROM gcr.io/distroless/static
COPY --from=build /out/app /app
ARG BUILD_SHA
"#;

    #[test]
    fn reads_the_inputs_of_a_multi_stage_build() {
        let ins = parse(DOCKERFILE);
        assert_eq!(ins[0].keyword, "ARG");
        let sources: Vec<String> = context_sources(&ins)
            .into_iter()
            .map(|s| s.source)
            .collect();
        assert_eq!(sources, ["go.mod", "go.sum", "internal/gen", "cmd/", "."]);
        let excl = context_sources(&ins)
            .into_iter()
            .find(|s| s.source == ".")
            .unwrap();
        assert_eq!(excl.excludes, ["*.md"]);
        let a = args(&ins);
        assert_eq!(a["GO_VERSION"].as_deref(), Some("1.22"));
        assert_eq!(a["BUILD_SHA"], None);
    }

    #[test]
    fn escape_directive_and_continuations() {
        let ins = parse("# escape=`\nFROM x\nCOPY a `\n  b /dst/\n");
        let s: Vec<String> = context_sources(&ins)
            .into_iter()
            .map(|s| s.source)
            .collect();
        assert_eq!(s, ["a", "b"]);
    }
}
