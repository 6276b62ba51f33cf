//! Generates a service catalogue from a repository's build definitions: a compose file,
//! or a directory of Dockerfiles.
//!
//! Each service's `paths` are its build inputs: the Dockerfile, and every source of
//! `COPY`/`ADD` (without `--from`) and `RUN --mount=type=bind` resolved against the build
//! context (`COPY . .` is the whole context; a `${VAR}` inside a source becomes `*`). Its
//! `ignorePaths` are the patterns of the `.dockerignore` governing the context
//! (`<Dockerfile>.dockerignore`, else `<context>/.dockerignore`), prefixed with the
//! context, with the Dockerfile re-included (Docker always sends it). Compose
//! substitution (`${VAR}`, `${VAR:-default}`) reads the `.env` beside the compose file.
//!
//! The functions are pure over a [`RepoFiles`] view of the repository; [`DirFiles`]
//! reads a checkout on disk.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use previewd_core::{CatalogueService, ServiceCatalogue};
use serde_json::Value;

use super::{
    BuildDefinitions, ServiceBuild, dockerfile, interpolate, join, parent, parse_env, variables_in,
};

/// Largest file read, in bytes.
pub const MAX_FILE_BYTES: u64 = 1024 * 1024;
/// Most files listed under a directory.
pub const MAX_LISTED_FILES: usize = 100_000;

/// A read-only view of a repository; paths are repository-relative with `/`.
pub trait RepoFiles {
    /// The text of a file, `None` when absent or unreadable.
    fn read(&self, path: &str) -> Option<String>;
    /// Whether a file or directory exists.
    fn exists(&self, path: &str) -> bool;
    /// Files below a directory (recursively), repository-relative.
    fn list(&self, dir: &str) -> Vec<String>;
}

/// A checkout on disk. Symbolic links are not followed, so nothing outside the root is
/// read.
#[derive(Clone, Debug)]
pub struct DirFiles {
    root: PathBuf,
}

impl DirFiles {
    /// A view of the directory `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        DirFiles { root: root.into() }
    }

    fn full(&self, path: &str) -> Option<PathBuf> {
        let rel = join("", path)?;
        Some(if rel.is_empty() {
            self.root.clone()
        } else {
            self.root.join(rel)
        })
    }
}

impl RepoFiles for DirFiles {
    fn read(&self, path: &str) -> Option<String> {
        let full = self.full(path)?;
        let meta = std::fs::symlink_metadata(&full).ok()?;
        if !meta.is_file() || meta.len() > MAX_FILE_BYTES {
            return None;
        }
        std::fs::read_to_string(full).ok()
    }

    fn exists(&self, path: &str) -> bool {
        self.full(path)
            .is_some_and(|p| std::fs::symlink_metadata(p).is_ok())
    }

    fn list(&self, dir: &str) -> Vec<String> {
        let Some(start) = self.full(dir) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        let mut stack = vec![start];
        while let Some(d) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&d) else {
                continue;
            };
            let mut entries: Vec<_> = entries.flatten().collect();
            entries.sort_by_key(|e| e.file_name());
            for e in entries {
                let name = e.file_name().to_string_lossy().into_owned();
                let Ok(ft) = e.file_type() else { continue };
                let path = e.path();
                if ft.is_dir() {
                    if name == ".git" || name == "node_modules" {
                        continue;
                    }
                    stack.push(path);
                } else if ft.is_file() {
                    if let Ok(rel) = path.strip_prefix(&self.root) {
                        out.push(rel.to_string_lossy().replace('\\', "/"));
                    }
                    if out.len() >= MAX_LISTED_FILES {
                        return out;
                    }
                }
            }
        }
        out.sort();
        out
    }
}

/// An in-memory repository (tests, embedders that fetched the files).
#[derive(Clone, Debug, Default)]
pub struct MapFiles(pub BTreeMap<String, String>);

impl MapFiles {
    /// From `(path, text)` pairs.
    pub fn new<I: IntoIterator<Item = (S, S)>, S: Into<String>>(files: I) -> Self {
        MapFiles(
            files
                .into_iter()
                .map(|(p, t)| (p.into(), t.into()))
                .collect(),
        )
    }
}

impl RepoFiles for MapFiles {
    fn read(&self, path: &str) -> Option<String> {
        self.0.get(path).cloned()
    }
    fn exists(&self, path: &str) -> bool {
        let dir = format!("{}/", path.trim_end_matches('/'));
        self.0.contains_key(path) || self.0.keys().any(|k| k.starts_with(&dir))
    }
    fn list(&self, dir: &str) -> Vec<String> {
        let prefix = if dir.is_empty() {
            String::new()
        } else {
            format!("{}/", dir.trim_end_matches('/'))
        };
        self.0
            .keys()
            .filter(|k| k.starts_with(&prefix))
            .cloned()
            .collect()
    }
}

/// Errors generating a catalogue.
#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    /// A file that must exist does not.
    #[error("{0} not found")]
    NotFound(String),
    /// The compose file is not valid YAML of the expected shape.
    #[error("{path}: {message}")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
}

/// A generated catalogue, the build definitions behind it, and what needs a human look.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Generated {
    /// The catalogue (for `PreviewRepository.spec.catalogue`).
    pub catalogue: ServiceCatalogue,
    /// How each service is built.
    pub builds: BuildDefinitions,
    /// Guesses and skipped entries.
    pub warnings: Vec<String>,
}

/// The catalogue of the services a compose file builds (services without `build` are
/// listed without paths).
pub fn from_compose(files: &dyn RepoFiles, compose: &str) -> Result<Generated, GenerateError> {
    let compose = join("", compose).ok_or_else(|| GenerateError::NotFound(compose.to_owned()))?;
    let text = files
        .read(&compose)
        .ok_or_else(|| GenerateError::NotFound(compose.clone()))?;
    let doc: Value = serde_saphyr::from_str(&text).map_err(|e| GenerateError::Invalid {
        path: compose.clone(),
        message: e.to_string(),
    })?;
    let dir = parent(&compose).to_owned();
    let env_path = join(&dir, ".env").unwrap_or_else(|| ".env".to_owned());
    let env = match files.read(&env_path) {
        Some(t) => parse_env(&t).map_err(|message| GenerateError::Invalid {
            path: env_path.clone(),
            message,
        })?,
        None => BTreeMap::new(),
    };
    let services = doc
        .get("services")
        .and_then(Value::as_object)
        .ok_or_else(|| GenerateError::Invalid {
            path: compose.clone(),
            message: "no `services` mapping".to_owned(),
        })?;
    let mut out = Generated::default();
    let mut names = BTreeSet::new();
    for (key, def) in services {
        let name = dns_label(key);
        if name != *key {
            out.warnings
                .push(format!("service {key:?} is named {name:?} (a DNS label)"));
        }
        if !names.insert(name.clone()) {
            out.warnings
                .push(format!("service {key:?}: name {name:?} taken; skipped"));
            continue;
        }
        let image = def
            .get("image")
            .and_then(Value::as_str)
            .map(|i| interpolate(i, &env));
        let Some(build) = def.get("build") else {
            out.catalogue.services.push(CatalogueService {
                name: name.clone(),
                image: image.unwrap_or_else(|| key.clone()),
                port: container_port(def),
                replicas: 1,
                ..CatalogueService::default()
            });
            continue;
        };
        let (context_raw, dockerfile_raw, args, target) = match build {
            Value::String(ctx) => (ctx.clone(), None, BTreeMap::new(), None),
            Value::Object(b) => {
                let ctx = b
                    .get("context")
                    .and_then(Value::as_str)
                    .unwrap_or(".")
                    .to_owned();
                let df = b
                    .get("dockerfile")
                    .and_then(Value::as_str)
                    .map(str::to_owned);
                if b.contains_key("dockerfile_inline") {
                    out.warnings.push(format!(
                        "service {key:?}: inline Dockerfile; only the context is its input"
                    ));
                }
                let args = compose_args(b.get("args"));
                let target = b.get("target").and_then(Value::as_str).map(str::to_owned);
                (ctx, df, args, target)
            }
            _ => {
                out.warnings
                    .push(format!("service {key:?}: unreadable `build`; skipped"));
                continue;
            }
        };
        let mut variables = variables_in(&context_raw);
        for v in dockerfile_raw.iter().chain(target.iter()) {
            variables.extend(variables_in(v));
        }
        for v in args.values().flatten() {
            variables.extend(variables_in(v));
        }
        let context_value = interpolate(&context_raw, &env);
        if context_value.contains("://") || context_value.starts_with("git@") {
            out.warnings.push(format!(
                "service {key:?}: remote build context {context_value:?}; no paths"
            ));
            continue;
        }
        let Some(context) = join(&dir, &context_value) else {
            out.warnings.push(format!(
                "service {key:?}: context {context_value:?} leaves the repository; skipped"
            ));
            continue;
        };
        let df_value = dockerfile_raw
            .as_deref()
            .map(|d| interpolate(d, &env))
            .unwrap_or_else(|| "Dockerfile".to_owned());
        let Some(dockerfile) = join(&context, &df_value) else {
            out.warnings.push(format!(
                "service {key:?}: Dockerfile {df_value:?} leaves the repository; skipped"
            ));
            continue;
        };
        let resolved_args: BTreeMap<String, String> = args
            .iter()
            .map(|(k, v)| {
                let value = match v {
                    Some(v) => interpolate(v, &env),
                    None => env.get(k).cloned().unwrap_or_default(),
                };
                (k.clone(), value)
            })
            .collect();
        let inputs = service_inputs(
            files,
            &context,
            &dockerfile,
            &resolved_args,
            &mut out.warnings,
            &name,
        );
        if image.is_some() {
            out.warnings.push(format!(
                "service {key:?}: image {:?} taken from compose; give it a per-pull-request tag such as :pr-{{{{number}}}}",
                image.as_deref().unwrap_or_default()
            ));
        }
        out.catalogue.services.push(CatalogueService {
            name: name.clone(),
            image: image.clone().unwrap_or_else(|| default_image(&name)),
            port: container_port(def),
            replicas: 1,
            paths: inputs.paths,
            ignore_paths: inputs.ignore,
            ..CatalogueService::default()
        });
        out.builds.services.push(ServiceBuild {
            name: name.clone(),
            defined_in: Some(compose.clone()),
            key: (name != *key).then(|| key.clone()),
            context,
            dockerfile,
            dockerignore: inputs.dockerignore,
            args,
            target,
            variables,
            env_files: vec![env_path.clone()],
            images: Vec::new(),
        });
    }
    Ok(out)
}

/// The catalogue of every `Dockerfile` below `dir`: one service per Dockerfile, named
/// after its directory, built with that directory as context (or the repository root
/// when its `COPY` sources only exist there).
pub fn from_dockerfiles(files: &dyn RepoFiles, dir: &str) -> Result<Generated, GenerateError> {
    let dir = join("", dir).ok_or_else(|| GenerateError::NotFound(dir.to_owned()))?;
    if !dir.is_empty() && !files.exists(&dir) {
        return Err(GenerateError::NotFound(dir));
    }
    let mut out = Generated::default();
    let mut names = BTreeSet::new();
    for path in files.list(&dir) {
        let base = path.rsplit('/').next().unwrap_or(&path);
        if base != "Dockerfile" {
            continue;
        }
        let ctx_dir = parent(&path).to_owned();
        let dir_name = ctx_dir.rsplit('/').next().unwrap_or(&ctx_dir);
        let mut name = dns_label(if dir_name.is_empty() { "app" } else { dir_name });
        if !names.insert(name.clone()) {
            let alt = dns_label(&ctx_dir.replace('/', "-"));
            out.warnings
                .push(format!("{path}: name {name:?} taken; named {alt:?}"));
            name = alt;
            if !names.insert(name.clone()) {
                continue;
            }
        }
        let text = files.read(&path).unwrap_or_default();
        let sources = dockerfile::context_sources(&dockerfile::parse(&text));
        // Context guess: the Dockerfile's directory, unless the plain sources are missing
        // there and present at the repository root.
        let plain: Vec<&str> = sources
            .iter()
            .map(|s| s.source.trim_start_matches("./").trim_start_matches('/'))
            .filter(|s| !s.is_empty() && *s != "." && !s.contains(['*', '?', '[', '$']))
            .collect();
        let context = if !plain.is_empty()
            && !ctx_dir.is_empty()
            && plain
                .iter()
                .all(|s| join(&ctx_dir, s).is_none_or(|p| !files.exists(&p)))
            && plain.iter().all(|s| files.exists(s))
        {
            out.warnings.push(format!(
                "{path}: its COPY sources exist at the repository root; guessed the root as context"
            ));
            String::new()
        } else {
            ctx_dir.clone()
        };
        let inputs = service_inputs(
            files,
            &context,
            &path,
            &BTreeMap::new(),
            &mut out.warnings,
            &name,
        );
        out.catalogue.services.push(CatalogueService {
            name: name.clone(),
            image: default_image(&name),
            port: DEFAULT_PORT,
            replicas: 1,
            paths: inputs.paths,
            ignore_paths: inputs.ignore,
            ..CatalogueService::default()
        });
        out.builds.services.push(ServiceBuild {
            name,
            context,
            dockerfile: path.clone(),
            dockerignore: inputs.dockerignore,
            ..ServiceBuild::default()
        });
    }
    Ok(out)
}

/// Port of a service whose definition names none (the catalogue's default).
pub const DEFAULT_PORT: i32 = 8080;

/// The container port of a compose service: the first `ports` entry (`"8080:80"`,
/// `"127.0.0.1:8080:80/tcp"`, `3000`, `{target: 80}`), else the first `expose`, else
/// [`DEFAULT_PORT`].
fn container_port(def: &Value) -> i32 {
    let parse = |v: &Value| -> Option<i32> {
        match v {
            Value::Number(n) => n.as_i64().and_then(|n| i32::try_from(n).ok()),
            Value::String(s) => {
                let s = s.split('/').next().unwrap_or(s);
                let last = s.rsplit(':').next().unwrap_or(s);
                // a range (`8000-8010`) uses its first port
                last.split('-').next().and_then(|p| p.trim().parse().ok())
            }
            Value::Object(m) => m
                .get("target")
                .and_then(|t| t.as_i64())
                .and_then(|n| i32::try_from(n).ok()),
            _ => None,
        }
    };
    ["ports", "expose"]
        .iter()
        .filter_map(|k| {
            def.get(*k)
                .and_then(Value::as_array)
                .and_then(|a| a.first())
        })
        .find_map(parse)
        .filter(|p| (1..=65535).contains(p))
        .unwrap_or(DEFAULT_PORT)
}

fn default_image(name: &str) -> String {
    format!("{name}:pr-{{{{number}}}}")
}

/// Compose `args`: a mapping, or a list of `KEY=value` / `KEY`.
fn compose_args(v: Option<&Value>) -> BTreeMap<String, Option<String>> {
    let mut out = BTreeMap::new();
    match v {
        Some(Value::Object(m)) => {
            for (k, v) in m {
                let value = match v {
                    Value::Null => None,
                    Value::String(s) => Some(s.clone()),
                    other => Some(other.to_string()),
                };
                out.insert(k.clone(), value);
            }
        }
        Some(Value::Array(items)) => {
            for item in items.iter().filter_map(Value::as_str) {
                match item.split_once('=') {
                    Some((k, v)) => out.insert(k.to_owned(), Some(v.to_owned())),
                    None => out.insert(item.to_owned(), None),
                };
            }
        }
        _ => {}
    }
    out
}

struct Inputs {
    paths: Vec<String>,
    ignore: Vec<String>,
    dockerignore: Option<String>,
}

/// Inputs of a build: its Dockerfile, the context sources it reads, and the ignore rules.
fn service_inputs(
    files: &dyn RepoFiles,
    context: &str,
    dockerfile_path: &str,
    args: &BTreeMap<String, String>,
    warnings: &mut Vec<String>,
    name: &str,
) -> Inputs {
    let whole_context = || {
        if context.is_empty() {
            "**".to_owned()
        } else {
            format!("{context}/")
        }
    };
    let mut paths: Vec<String> = Vec::new();
    match files.read(dockerfile_path) {
        Some(text) => {
            let ins = dockerfile::parse(&text);
            for src in dockerfile::context_sources(&ins) {
                // build args with known values resolve; other variables match anything
                let mut s = src.source.clone();
                for (k, v) in args {
                    s = s
                        .replace(&format!("${{{k}}}"), v)
                        .replace(&format!("${k}"), v);
                }
                let s = wildcard_variables(&s);
                let s = s.trim_start_matches('/');
                let p = if s.is_empty() || s == "." || s == "./" {
                    whole_context()
                } else {
                    match join(context, s) {
                        Some(p) if !p.is_empty() => p,
                        _ => {
                            warnings.push(format!(
                                "{name}: COPY source {:?} leaves the context",
                                src.source
                            ));
                            continue;
                        }
                    }
                };
                if !paths.contains(&p) {
                    paths.push(p);
                }
            }
        }
        None => {
            warnings.push(format!(
                "{name}: {dockerfile_path} not readable; the whole context is its input"
            ));
            paths.push(whole_context());
        }
    }
    if !paths.iter().any(|p| p == dockerfile_path) {
        paths.push(dockerfile_path.to_owned());
    }
    let per_dockerfile = format!("{dockerfile_path}.dockerignore");
    let in_context = join(context, ".dockerignore").unwrap_or_else(|| ".dockerignore".to_owned());
    let dockerignore = [per_dockerfile, in_context]
        .into_iter()
        .find(|p| files.exists(p));
    let mut ignore = Vec::new();
    if let Some(di) = &dockerignore {
        for line in files.read(di).unwrap_or_default().lines() {
            let t = line.trim();
            if t.is_empty() || t.starts_with('#') {
                continue;
            }
            let (neg, body) = match t.strip_prefix('!') {
                Some(b) => ("!", b.trim()),
                None => ("", t),
            };
            let body = body.trim_start_matches('/');
            if let Some(full) = join(context, body).filter(|p| !p.is_empty()) {
                ignore.push(format!("{neg}{full}"));
            }
        }
        if !ignore.is_empty() {
            ignore.push(format!("!{dockerfile_path}"));
        }
    }
    Inputs {
        paths,
        ignore,
        dockerignore,
    }
}

/// `${VAR}` and `$VAR` become `*`.
fn wildcard_variables(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(inner) = after.strip_prefix('{') {
            match inner.find('}') {
                Some(end) => {
                    out.push('*');
                    rest = &inner[end + 1..];
                }
                None => {
                    out.push_str(&rest[i..]);
                    rest = "";
                }
            }
        } else {
            let end = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            out.push(if end == 0 { '$' } else { '*' });
            rest = &after[end..];
        }
    }
    out.push_str(rest);
    out
}

/// A DNS-1123 label from a name: lower case, `[a-z0-9-]`, starting with a letter, at
/// most 50 characters.
pub fn dns_label(name: &str) -> String {
    let mut s: String = name
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    while s.contains("--") {
        s = s.replace("--", "-");
    }
    let mut s = s.trim_matches('-').to_owned();
    if !s.starts_with(|c: char| c.is_ascii_lowercase()) {
        s = format!("svc-{s}");
    }
    s.truncate(50);
    s.trim_end_matches('-').to_owned()
}

/// Writes `path` relative to the current directory as a repository path under `root`.
pub fn relative_to(root: &Path, path: &Path) -> Option<String> {
    let abs_root = root.canonicalize().ok()?;
    let abs = path.canonicalize().ok()?;
    let rel = abs.strip_prefix(&abs_root).ok()?;
    Some(rel.to_string_lossy().replace('\\', "/"))
}
