//! Build definitions: how each service's image is built, and what a change to the files
//! that define builds does to each service.
//!
//! Path matching is right for source files, but compose files, skaffold files, `.env`
//! files, Dockerfiles and `.dockerignore` files are one path for many services: matching
//! them by path either misses the change or selects every service. When the pull
//! request's diff is available, the rules below read **what changed inside** those files:
//!
//! | file | rule |
//! |---|---|
//! | compose (`compose*.y*ml`, `docker-compose*.y*ml`) | a changed line under `services.<name>.build` (or a `build:` shorthand, or a new service entry) affects `<name>`; runtime settings (`environment`, `ports`, `image`, ...) affect nothing; a change the patch does not show enough of to place affects every service the file defines |
//! | skaffold (`skaffold*.y*ml`) | a changed `context`, `docker.dockerfile`, `docker.buildArgs` or `docker.target` of a `build.artifacts` entry affects the service of that artifact (named by its image or context); an image a Helm release deploys (`setValues: {image.tag: ...}`) affects the service it names (by repository, else by the release's name); other profile, deploy and tag policy settings affect nothing |
//! | `.env` | a variable whose value changed affects the services whose build definition substitutes it (`${VAR}`, `${VAR:-default}`, `$VAR`) or passes it as a build argument |
//! | Dockerfile | every service built from it ([`ServiceBuild::dockerfile`]); `ARG` changes are named in the evidence |
//! | `.dockerignore` | the services whose context it governs, only when a changed pattern can match one of their inputs |
//! | Helm values (`values*.y*ml`, `*-values.y*ml`, `*.values.y*ml`) | a changed `image`, `repository`, `tag` or `digest` affects the service whose image it names (by the repository beside it, else by the key it sits under); an image no catalogue service uses and settings that are not images (replicas, resources) affect nothing; an image change that names no service (a chart-wide registry) keeps the path-matching answer ([`helm`]) |
//!
//! Lines are parsed with real grammars: [`yaml`] places a changed line in the YAML
//! structure from the lines the patch shows (a whole YAML parser needs the whole file,
//! which a patch does not carry), `.env` lines go through `dotenvy`, Dockerfiles through
//! the [`dockerfile`] line grammar. Which service uses which variable, Dockerfile and
//! ignore file comes from [`BuildDefinitions`], generated from the repository's compose
//! file or Dockerfiles by [`generate`].
//!
//! Whatever cannot be read (no diff, a file cut from a truncated diff, a binary patch, no
//! build definitions for a variable) is reported as [`Outcome::Unknown`]: the caller keeps
//! the path-matching answer for that file and says so.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

pub mod diff;
pub mod dockerfile;
pub mod generate;
pub mod helm;
pub mod yaml;

pub use diff::{ChangeDiff, DiffLine, FileDiff, FileStatus, Hunk};

/// How the services of a repository are built.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BuildDefinitions {
    /// One entry per built service.
    #[serde(default)]
    pub services: Vec<ServiceBuild>,
}

/// How one service's image is built. Paths are repository-relative, `""` is the root.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceBuild {
    /// Catalogue service name.
    pub name: String,
    /// The compose or skaffold file holding the definition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub defined_in: Option<String>,
    /// Name of the service (compose) or image (skaffold) inside `defined_in`, when it
    /// differs from `name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Build context directory.
    #[serde(default)]
    pub context: String,
    /// Dockerfile.
    #[serde(default)]
    pub dockerfile: String,
    /// The `.dockerignore` that governs the context, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dockerignore: Option<String>,
    /// Build arguments as written (`None`: taken from the environment).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub args: BTreeMap<String, Option<String>>,
    /// Build target stage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// Variables the definition substitutes or passes through.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub variables: BTreeSet<String>,
    /// Env files whose variables the definition's file substitutes (`.env` beside a
    /// compose file).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env_files: Vec<String>,
    /// Image repositories that name the service in Helm values or skaffold files, besides
    /// its catalogue image.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub images: Vec<String>,
}

impl ServiceBuild {
    /// Variables whose value reaches the build: substituted ones and arguments taken from
    /// the environment.
    pub fn uses_variable(&self, var: &str) -> bool {
        self.variables.contains(var) || self.args.get(var).is_some_and(Option::is_none)
    }
}

/// Build definitions from a `PreviewRepository`'s `spec.buildDefinitions`.
///
/// Paths are normalised to the repository-relative form the rules compare against
/// (`./src/api/` becomes `src/api`). An entry whose context or Dockerfile leaves the
/// repository describes no file a pull request can change: it is left out, and so is any
/// other path that leaves the repository. The returned strings say what was left out.
#[cfg(feature = "kube")]
pub fn from_spec(
    spec: &previewd_kube::crd::BuildDefinitionsSpec,
) -> (BuildDefinitions, Vec<String>) {
    let mut warnings = Vec::new();
    let mut services = Vec::with_capacity(spec.services.len());
    for s in &spec.services {
        let mut inside = |what: &str, p: &str| -> Option<String> {
            let joined = join("", p);
            if joined.is_none() {
                warnings.push(format!(
                    "service {:?}: {what} {p:?} leaves the repository",
                    s.name
                ));
            }
            joined
        };
        let (Some(context), Some(dockerfile)) = (
            inside("context", &s.context),
            inside("dockerfile", &s.dockerfile),
        ) else {
            continue;
        };
        let defined_in = s.defined_in.as_deref().and_then(|p| inside("definedIn", p));
        let dockerignore = s
            .dockerignore
            .as_deref()
            .and_then(|p| inside("dockerignore", p));
        let env_files = s
            .env_files
            .iter()
            .filter_map(|p| inside("envFiles entry", p))
            .collect();
        services.push(ServiceBuild {
            name: s.name.clone(),
            defined_in,
            key: s.key.clone(),
            context,
            dockerfile,
            dockerignore,
            args: s.args.clone(),
            target: s.target.clone(),
            variables: s.variables.clone(),
            env_files,
            images: s.images.clone(),
        });
    }
    (BuildDefinitions { services }, warnings)
}

/// What kind of build-definition file a path is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FileKind {
    /// A compose file.
    Compose,
    /// A skaffold file.
    Skaffold,
    /// A `.env` file.
    EnvFile,
    /// A Dockerfile.
    Dockerfile,
    /// A `.dockerignore` file.
    DockerIgnore,
    /// A Helm values file.
    HelmValues,
}

impl FileKind {
    /// Short name used in evidence and breakdowns.
    pub fn as_str(self) -> &'static str {
        match self {
            FileKind::Compose => "compose file",
            FileKind::Skaffold => "skaffold file",
            FileKind::EnvFile => "env file",
            FileKind::Dockerfile => "Dockerfile",
            FileKind::DockerIgnore => ".dockerignore",
            FileKind::HelmValues => "Helm values file",
        }
    }
}

/// The kind of build-definition file `path` is, by name or because `builds` names it.
pub fn kind_of(path: &str, builds: Option<&BuildDefinitions>) -> Option<FileKind> {
    let base = path.rsplit('/').next().unwrap_or(path);
    let lower = base.to_ascii_lowercase();
    let yaml = lower.ends_with(".yml") || lower.ends_with(".yaml");
    if yaml && (lower.starts_with("compose") || lower.starts_with("docker-compose")) {
        return Some(FileKind::Compose);
    }
    if yaml && lower.starts_with("skaffold") {
        return Some(FileKind::Skaffold);
    }
    if yaml
        && (lower.starts_with("values.")
            || lower.starts_with("values-")
            || lower.contains("-values.")
            || lower.contains(".values."))
    {
        return Some(FileKind::HelmValues);
    }
    if lower.ends_with(".dockerignore") {
        return Some(FileKind::DockerIgnore);
    }
    if lower == ".env" {
        return Some(FileKind::EnvFile);
    }
    if let Some(b) = builds {
        if b.services.iter().any(|s| s.dockerfile == path) {
            return Some(FileKind::Dockerfile);
        }
        if b.services
            .iter()
            .any(|s| s.env_files.iter().any(|e| e == path))
        {
            return Some(FileKind::EnvFile);
        }
        if b.services
            .iter()
            .any(|s| s.defined_in.as_deref() == Some(path))
        {
            return Some(if lower.starts_with("skaffold") {
                FileKind::Skaffold
            } else {
                FileKind::Compose
            });
        }
    }
    if lower == "dockerfile"
        || lower.starts_with("dockerfile.")
        || lower.ends_with(".dockerfile")
        || lower.ends_with("-dockerfile")
    {
        return Some(FileKind::Dockerfile);
    }
    None
}

/// What a changed build-definition file does to the services.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// These services' builds changed, each with a detail for the evidence.
    Affects(Vec<(String, String)>),
    /// The change reaches no service's build (the reason says why).
    NoEffect(String),
    /// The change could not be read; keep the path-matching answer (the reason says why).
    Unknown(String),
}

/// Variables a string substitutes: `${VAR}`, `${VAR:-default}` (and the other `${VAR...}`
/// forms, defaults included) and `$VAR`; `$$` is an escaped dollar.
pub fn variables_in(s: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'$' {
            i += 1;
            continue;
        }
        if b.get(i + 1) == Some(&b'$') {
            i += 2;
            continue;
        }
        if b.get(i + 1) == Some(&b'{') {
            let start = i + 2;
            let mut end = start;
            while end < b.len() && (b[end].is_ascii_alphanumeric() || b[end] == b'_') {
                end += 1;
            }
            if end > start {
                out.insert(s[start..end].to_owned());
            }
            // the default may itself substitute: scan inside the braces too
            i = end;
            continue;
        }
        let start = i + 1;
        let mut end = start;
        while end < b.len() && (b[end].is_ascii_alphanumeric() || b[end] == b'_') {
            end += 1;
        }
        if end > start && !b[start].is_ascii_digit() {
            out.insert(s[start..end].to_owned());
        }
        i = end.max(i + 1);
    }
    out
}

/// Substitutes `${VAR}`, `${VAR:-default}`, `${VAR-default}`, `${VAR:?err}`, `$VAR` and
/// `$$` from `env` the way compose does (unset and, for `:-`, empty use the default).
pub fn interpolate(s: &str, env: &BTreeMap<String, String>) -> String {
    interpolate_depth(s, env, 0)
}

/// Nested defaults deeper than this are left as written.
const MAX_INTERPOLATION_DEPTH: usize = 16;

fn interpolate_depth(s: &str, env: &BTreeMap<String, String>, depth: usize) -> String {
    if depth > MAX_INTERPOLATION_DEPTH {
        return s.to_owned();
    }
    let interpolate = |t: &str, e: &BTreeMap<String, String>| interpolate_depth(t, e, depth + 1);
    let mut out = String::with_capacity(s.len());
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'$' {
            let ch = s[i..].chars().next().unwrap_or('\u{fffd}');
            out.push(ch);
            i += ch.len_utf8();
            continue;
        }
        match b.get(i + 1) {
            Some(b'$') => {
                out.push('$');
                i += 2;
            }
            Some(b'{') => {
                // find the matching brace (defaults may nest one level of `${...}`)
                let mut depth = 0;
                let mut end = None;
                for (k, c) in b.iter().enumerate().skip(i + 1) {
                    match c {
                        b'{' => depth += 1,
                        b'}' => {
                            depth -= 1;
                            if depth == 0 {
                                end = Some(k);
                                break;
                            }
                        }
                        _ => {}
                    }
                }
                let Some(end) = end else {
                    out.push_str(&s[i..]);
                    break;
                };
                let inner = &s[i + 2..end];
                let name_end = inner
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(inner.len());
                let name = &inner[..name_end];
                let op = &inner[name_end..];
                let value = env.get(name);
                let resolved = if let Some(d) = op.strip_prefix(":-") {
                    match value.filter(|v| !v.is_empty()) {
                        Some(v) => v.clone(),
                        None => interpolate(d, env),
                    }
                } else if let Some(d) = op.strip_prefix('-') {
                    match value {
                        Some(v) => v.clone(),
                        None => interpolate(d, env),
                    }
                } else if let Some(alt) = op.strip_prefix(":+") {
                    match value.filter(|v| !v.is_empty()) {
                        Some(_) => interpolate(alt, env),
                        None => String::new(),
                    }
                } else if let Some(alt) = op.strip_prefix('+') {
                    match value {
                        Some(_) => interpolate(alt, env),
                        None => String::new(),
                    }
                } else {
                    value.cloned().unwrap_or_default()
                };
                out.push_str(&resolved);
                i = end + 1;
            }
            _ => {
                let start = i + 1;
                let mut end = start;
                while end < b.len() && (b[end].is_ascii_alphanumeric() || b[end] == b'_') {
                    end += 1;
                }
                if end == start {
                    out.push('$');
                    i += 1;
                } else {
                    out.push_str(env.get(&s[start..end]).map_or("", String::as_str));
                    i = end;
                }
            }
        }
    }
    out
}

/// Parses dotenv text (`KEY=value`, `export KEY=value`, quotes, comments).
pub fn parse_env(text: &str) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    for item in dotenvy::from_read_iter(text.as_bytes()) {
        let (k, v) = item.map_err(|e| e.to_string())?;
        out.insert(k, v);
    }
    Ok(out)
}

/// The variables whose value differs between the two sides of an env file's patch.
/// Each side's changed lines are parsed as dotenv; a variable on one side only counts
/// as changed.
pub fn env_changes(hunks: &[Hunk]) -> Result<BTreeSet<String>, String> {
    let mut old = String::new();
    let mut new = String::new();
    for h in hunks {
        for l in &h.lines {
            match l {
                DiffLine::Removed(t) => {
                    old.push_str(t);
                    old.push('\n');
                }
                DiffLine::Added(t) => {
                    new.push_str(t);
                    new.push('\n');
                }
                DiffLine::Context(_) => {}
            }
        }
    }
    let old = parse_env(&old)?;
    let new = parse_env(&new)?;
    let mut changed = BTreeSet::new();
    for (k, v) in &old {
        if new.get(k) != Some(v) {
            changed.insert(k.clone());
        }
    }
    for (k, v) in &new {
        if old.get(k) != Some(v) {
            changed.insert(k.clone());
        }
    }
    Ok(changed)
}

/// One changed line of a YAML build definition, placed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum YamlChange {
    /// The build of the named entry (compose service key, or skaffold artifact identity)
    /// changed.
    Build {
        /// Compose service key, or skaffold image.
        entry: Option<String>,
        /// Skaffold artifact context, when visible.
        context: Option<String>,
        /// What changed (`build.args`, `context`, ...).
        detail: String,
    },
    /// Nothing that builds an image changed (the detail says what did).
    NoBuild(String),
    /// The line could not be placed.
    Unplaced {
        /// Compose service key, when known.
        entry: Option<String>,
        /// What is known.
        detail: String,
        /// The line's own key and value, to match against build definitions.
        hint: Hint,
    },
}

/// Compose service settings that only affect how a container runs, not how its image is
/// built.
const COMPOSE_RUNTIME_KEYS: &[&str] = &[
    "annotations",
    "attach",
    "blkio_config",
    "cap_add",
    "cap_drop",
    "cgroup",
    "cgroup_parent",
    "command",
    "configs",
    "container_name",
    "cpu_count",
    "cpu_percent",
    "cpu_period",
    "cpu_quota",
    "cpu_rt_period",
    "cpu_rt_runtime",
    "cpu_shares",
    "cpus",
    "cpuset",
    "depends_on",
    "deploy",
    "develop",
    "device_cgroup_rules",
    "devices",
    "dns",
    "dns_opt",
    "dns_search",
    "domainname",
    "entrypoint",
    "env_file",
    "environment",
    "expose",
    "external_links",
    "extra_hosts",
    "group_add",
    "healthcheck",
    "hostname",
    "image",
    "init",
    "ipc",
    "isolation",
    "labels",
    "links",
    "logging",
    "mac_address",
    "mem_limit",
    "mem_reservation",
    "mem_swappiness",
    "memswap_limit",
    "network_mode",
    "networks",
    "oom_kill_disable",
    "oom_score_adj",
    "pid",
    "pids_limit",
    "platform",
    "ports",
    "privileged",
    "profiles",
    "pull_policy",
    "read_only",
    "restart",
    "runtime",
    "scale",
    "secrets",
    "security_opt",
    "shm_size",
    "stdin_open",
    "stop_grace_period",
    "stop_signal",
    "storage_opt",
    "sysctls",
    "tmpfs",
    "tty",
    "ulimits",
    "user",
    "userns_mode",
    "uts",
    "volumes",
    "volumes_from",
    "working_dir",
];

/// Keys that only appear inside a compose `build:` section.
const COMPOSE_BUILD_ONLY_KEYS: &[&str] = &[
    "context",
    "dockerfile",
    "dockerfile_inline",
    "args",
    "target",
    "additional_contexts",
    "cache_from",
    "cache_to",
    "no_cache",
    "pull",
    "ssh",
];

/// Compose top-level keys that define no build.
const COMPOSE_TOP_NO_BUILD: &[&str] = &[
    "version", "name", "networks", "volumes", "secrets", "configs", "models",
];

/// Whether `key` is a compose service setting.
fn is_service_property(key: &str) -> bool {
    key == "build" || key == "extends" || COMPOSE_RUNTIME_KEYS.contains(&key)
}

/// Places every changed line of a compose file's patch.
///
/// The service a line belongs to is the key under `services` when the patch shows it:
/// either the whole path up to `services:` is visible, or the outermost visible key is not
/// a service setting while the key below it is (`api:` above `build:`). Otherwise the
/// change is [`YamlChange::Unplaced`] with the line's key, value and parent as a hint.
pub fn compose_changes(hunks: &[Hunk]) -> Vec<YamlChange> {
    let mut out = Vec::new();
    for (h, side_new, lines, changed) in sides(hunks) {
        for i in changed {
            let line = &lines[i];
            let loc = yaml::locate(&lines, i, &h.section);
            let keys: Vec<&str> = loc.keys().collect();
            let mut hint = Hint::of(line, &loc, &lines);
            hint.hunk = hunks.iter().position(|x| std::ptr::eq(x, h)).unwrap_or(0);
            let Some(root) = loc.root.as_deref() else {
                out.push(YamlChange::Unplaced {
                    entry: None,
                    detail: "no top-level key visible".to_owned(),
                    hint,
                });
                continue;
            };
            if root != "services" {
                if COMPOSE_TOP_NO_BUILD.contains(&root) {
                    out.push(YamlChange::NoBuild(format!("top-level `{root}`")));
                } else {
                    // `x-` extensions are often merged into services through anchors
                    out.push(YamlChange::Unplaced {
                        entry: None,
                        detail: format!("top-level `{root}`"),
                        hint,
                    });
                }
                continue;
            }
            let rest = &keys[1..];
            let service = match rest.first() {
                Some(first) if loc.complete => Some(*first),
                Some(first)
                    if !is_service_property(first)
                        && !COMPOSE_BUILD_ONLY_KEYS.contains(first)
                        && rest.get(1).is_none_or(|k| is_service_property(k))
                        && (rest.len() > 1 || line.key.as_deref() == Some(*first)) =>
                {
                    Some(*first)
                }
                _ => None,
            };
            if let Some(svc) = service {
                let svc = svc.to_owned();
                match rest.get(1) {
                    None => {
                        if line.key.as_deref() == Some(svc.as_str()) && !line.item {
                            // the service's own line: a new or removed entry
                            if side_new {
                                out.push(YamlChange::Build {
                                    entry: Some(svc),
                                    context: None,
                                    detail: "service entry added".to_owned(),
                                });
                            } else {
                                out.push(YamlChange::NoBuild(format!("service `{svc}` removed")));
                            }
                        } else {
                            out.push(YamlChange::Unplaced {
                                entry: Some(svc),
                                detail: "a line directly under the service".to_owned(),
                                hint,
                            });
                        }
                    }
                    Some(&"build") => out.push(YamlChange::Build {
                        entry: Some(svc),
                        context: None,
                        detail: rest[1..].join("."),
                    }),
                    Some(prop) if is_service_property(prop) || prop.starts_with("x-") => {
                        out.push(YamlChange::NoBuild(format!("services.{svc}.{prop}")));
                    }
                    Some(prop) => out.push(YamlChange::Unplaced {
                        entry: Some(svc.clone()),
                        detail: format!("services.{svc}.{prop}"),
                        hint,
                    }),
                }
                continue;
            }
            // The service is out of sight: decide from the keys that are visible.
            if rest
                .iter()
                .any(|k| *k == "build" || COMPOSE_BUILD_ONLY_KEYS.contains(k))
            {
                out.push(YamlChange::Unplaced {
                    entry: None,
                    detail: format!("build setting {} of a service out of sight", rest.join(".")),
                    hint,
                });
            } else if let Some(k) = rest.iter().find(|k| COMPOSE_RUNTIME_KEYS.contains(k)) {
                out.push(YamlChange::NoBuild(format!("services.*.{k}")));
            } else {
                out.push(YamlChange::Unplaced {
                    entry: None,
                    detail: "a service setting out of sight".to_owned(),
                    hint,
                });
            }
        }
    }
    out
}

/// What a changed line says about itself, to tell which service it belongs to when the
/// service is out of sight: its key (or list item) and value, and its parent key.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Hint {
    /// The line's key, or for a list item `- NAME=value` / `- NAME` the name.
    pub key: Option<String>,
    /// The value, unquoted.
    pub value: String,
    /// The nearest visible key above the line.
    pub parent: Option<String>,
    /// Index of the hunk: the two sides of one modification share it.
    pub hunk: usize,
}

impl Hint {
    fn of(line: &yaml::YamlLine, loc: &yaml::Location, _lines: &[yaml::YamlLine]) -> Hint {
        let keys: Vec<&str> = loc.keys().collect();
        let own = line.key.clone();
        let parent_index = if own.is_some() {
            keys.len().checked_sub(2)
        } else {
            keys.len().checked_sub(1)
        };
        let parent = parent_index
            .and_then(|i| keys.get(i))
            .map(|k| (*k).to_owned());
        match own {
            Some(k) => Hint {
                key: Some(k),
                value: yaml::unquote(&line.value).to_owned(),
                parent,
                hunk: 0,
            },
            None => {
                let v = yaml::unquote(&line.value);
                let (k, v) = v.split_once('=').unwrap_or((v, ""));
                Hint {
                    key: (!k.is_empty()).then(|| k.to_owned()),
                    value: v.to_owned(),
                    parent,
                    hunk: 0,
                }
            }
        }
    }
}

/// Skaffold artifact settings that define the image build.
const SKAFFOLD_BUILD_KEYS: &[&str] = &[
    "context",
    "workspace",
    "docker",
    "dockerfile",
    "buildArgs",
    "target",
    "kaniko",
    "buildpacks",
    "custom",
    "bazel",
    "jib",
    "ko",
    "requires",
];

/// Places every changed line of a skaffold file's patch.
pub fn skaffold_changes(hunks: &[Hunk]) -> Vec<YamlChange> {
    let mut out = Vec::new();
    for (h, _side_new, lines, changed) in sides(hunks) {
        for i in changed {
            let loc = yaml::locate(&lines, i, &h.section);
            let keys: Vec<&str> = loc.keys().collect();
            let root = loc.root.as_deref();
            match root {
                Some("build") => {}
                Some(other) => {
                    let line = &lines[i];
                    let deploys = matches!(other, "deploy" | "manifests" | "profiles");
                    match deploys
                        .then(|| helm::deployed_image(&lines, i, &loc))
                        .flatten()
                    {
                        Some((entry, detail)) if entry.is_some() => out.push(YamlChange::Build {
                            entry,
                            context: None,
                            detail,
                        }),
                        Some((_, detail)) => out.push(YamlChange::Unplaced {
                            entry: None,
                            detail,
                            hint: Hint {
                                key: line.key.clone(),
                                value: yaml::unquote(&line.value).to_owned(),
                                ..Hint::default()
                            },
                        }),
                        None => out.push(YamlChange::NoBuild(format!("top-level `{other}`"))),
                    }
                    continue;
                }
                None => {
                    // multi-document files: `profiles`, `deploy` etc. may be out of sight
                    if !keys.contains(&"artifacts") {
                        out.push(YamlChange::Unplaced {
                            entry: None,
                            detail: "no top-level key visible".to_owned(),
                            hint: Hint::default(),
                        });
                        continue;
                    }
                }
            }
            let item = loc.path.iter().find_map(|n| match n {
                yaml::Node::Item(s) => Some(*s),
                yaml::Node::Key(_) => None,
            });
            // `build.artifacts` is the only list of mappings under `build`: an item whose
            // parent is out of sight is an artifact
            let in_artifacts = keys.contains(&"artifacts") || (item.is_some() && !loc.complete);
            if !in_artifacts {
                if loc.complete || keys.len() >= 2 {
                    out.push(YamlChange::NoBuild(format!(
                        "build.{}",
                        keys[1..].join(".")
                    )));
                } else {
                    out.push(YamlChange::Unplaced {
                        entry: None,
                        detail: "a build setting out of sight".to_owned(),
                        hint: Hint::default(),
                    });
                }
                continue;
            }
            let Some(start) = item else {
                out.push(YamlChange::Unplaced {
                    entry: None,
                    detail: "an artifact out of sight".to_owned(),
                    hint: Hint::default(),
                });
                continue;
            };
            let fields = yaml::item_fields(&lines, start);
            let field = |name: &str| {
                fields
                    .iter()
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| yaml::unquote(v).to_owned())
            };
            let image = field("image").or_else(|| field("imageName"));
            let context = field("context").or_else(|| field("workspace"));
            let after_artifacts: Vec<&str> = if keys.contains(&"artifacts") {
                keys.iter()
                    .skip_while(|k| **k != "artifacts")
                    .skip(1)
                    .copied()
                    .collect()
            } else {
                keys.iter().skip(1).copied().collect()
            };
            let own = after_artifacts.first().copied();
            match own {
                Some("image") | Some("imageName") if after_artifacts.len() == 1 => {
                    // renaming the image alone does not change what is built; an entry
                    // added as a whole also shows its context line as changed
                    out.push(YamlChange::NoBuild("artifact image name".to_owned()));
                }
                Some(k) if SKAFFOLD_BUILD_KEYS.contains(&k) => {
                    out.push(YamlChange::Build {
                        entry: image,
                        context,
                        detail: after_artifacts.join("."),
                    });
                }
                Some(k) if k == "sync" || k == "hooks" || k == "platforms" => {
                    out.push(YamlChange::NoBuild(format!("artifact {k}")));
                }
                _ => {
                    if image.is_none() && context.is_none() {
                        out.push(YamlChange::Unplaced {
                            entry: None,
                            detail: "an artifact out of sight".to_owned(),
                            hint: Hint::default(),
                        });
                    } else {
                        out.push(YamlChange::Build {
                            entry: image,
                            context,
                            detail: after_artifacts.join("."),
                        });
                    }
                }
            }
        }
    }
    out
}

/// For each hunk and side: the classified visible lines and the indices of the changed,
/// non-trivial ones.
fn sides(hunks: &[Hunk]) -> Vec<(&Hunk, bool, Vec<yaml::YamlLine>, Vec<usize>)> {
    let mut out = Vec::new();
    for h in hunks.iter() {
        for new in [false, true] {
            let side = h.side(new);
            let lines: Vec<yaml::YamlLine> = side.iter().map(|(t, _)| yaml::classify(t)).collect();
            let changed: Vec<usize> = side
                .iter()
                .enumerate()
                .filter(|(i, (_, c))| *c && !lines[*i].trivia && !lines[*i].document)
                .map(|(i, _)| i)
                .collect();
            if !changed.is_empty() {
                out.push((h, new, lines, changed));
            }
        }
    }
    out
}

/// The patterns added or removed by a `.dockerignore` patch (comments and blanks
/// dropped, `!` kept).
pub fn ignore_changes(hunks: &[Hunk]) -> Vec<String> {
    let mut out = Vec::new();
    for h in hunks {
        for l in &h.lines {
            let t = match l {
                DiffLine::Removed(t) | DiffLine::Added(t) => t.trim(),
                DiffLine::Context(_) => continue,
            };
            if t.is_empty() || t.starts_with('#') {
                continue;
            }
            out.push(t.to_owned());
        }
    }
    // a pattern removed and added again (moved) changes nothing by itself; keep both
    // sides anyway: order matters for `!` re-includes
    out
}

/// Joins a directory and a relative path, resolving `.` and `..`; `None` when the path
/// leaves the repository.
pub fn join(dir: &str, rel: &str) -> Option<String> {
    let mut parts: Vec<&str> = if rel.starts_with('/') {
        Vec::new()
    } else {
        dir.split('/')
            .filter(|s| !s.is_empty() && *s != ".")
            .collect()
    };
    for seg in rel.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            s => parts.push(s),
        }
    }
    Some(parts.join("/"))
}

/// The directory of a repository path (`""` for the root).
pub fn parent(path: &str) -> &str {
    path.rfind('/').map_or("", |i| &path[..i])
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn variables_and_interpolation_follow_compose() {
        let v = variables_in("${NODE_VERSION:-20}-$BASE_$$HOME ${X-${Y}}");
        assert_eq!(
            v.into_iter().collect::<Vec<_>>(),
            ["BASE_", "NODE_VERSION", "X", "Y"]
        );
        let env: BTreeMap<String, String> = [
            ("A".to_owned(), "1".to_owned()),
            ("E".to_owned(), String::new()),
        ]
        .into();
        assert_eq!(
            interpolate("v${A}-${B:-2}-${E:-3}-${E-4}-$$A-$A", &env),
            "v1-2-3--$A-1"
        );
        assert_eq!(interpolate("${B-${A}}", &env), "1");
        // hostile nesting stops at a fixed depth instead of exhausting the stack
        let deep = format!("{}x{}", "${U:-".repeat(10_000), "}".repeat(10_000));
        assert!(interpolate(&deep, &env).len() < deep.len());
    }

    #[test]
    fn env_changes_compare_values_not_lines() {
        let hunks = diff::parse_hunks(
            "@@ -1,3 +1,3 @@\n # versions\n-NODE_VERSION=18\n+NODE_VERSION=20\n-export GO=1.22 # pinned\n+GO=\"1.22\"\n",
        )
        .unwrap();
        let changed = env_changes(&hunks).unwrap();
        assert_eq!(changed.into_iter().collect::<Vec<_>>(), ["NODE_VERSION"]);
    }

    #[test]
    fn kinds_by_name_and_by_definition() {
        assert_eq!(kind_of("docker-compose.yml", None), Some(FileKind::Compose));
        assert_eq!(
            kind_of("deploy/compose.prod.yaml", None),
            Some(FileKind::Compose)
        );
        assert_eq!(kind_of("skaffold.yaml", None), Some(FileKind::Skaffold));
        assert_eq!(
            kind_of("api/.dockerignore", None),
            Some(FileKind::DockerIgnore)
        );
        assert_eq!(
            kind_of("api/Dockerfile.prod", None),
            Some(FileKind::Dockerfile)
        );
        assert_eq!(kind_of(".env", None), Some(FileKind::EnvFile));
        assert_eq!(kind_of("src/main.rs", None), None);
        assert_eq!(
            kind_of("charts/shop/values.yaml", None),
            Some(FileKind::HelmValues)
        );
        assert_eq!(
            kind_of("deploy/values-staging.yml", None),
            Some(FileKind::HelmValues)
        );
        assert_eq!(
            kind_of("preview.values.yaml", None),
            Some(FileKind::HelmValues)
        );
        assert_eq!(kind_of("src/values.ts", None), None);
        let builds = BuildDefinitions {
            services: vec![ServiceBuild {
                name: "api".to_owned(),
                dockerfile: "docker/api.build".to_owned(),
                ..ServiceBuild::default()
            }],
        };
        assert_eq!(
            kind_of("docker/api.build", Some(&builds)),
            Some(FileKind::Dockerfile)
        );
    }

    #[cfg(feature = "kube")]
    #[test]
    fn repository_build_definitions_convert_to_repository_relative_paths() {
        // the shape `previewd catalogue --build-definitions` prints, as a platform
        // engineer pastes it under `spec.buildDefinitions`
        let spec: previewd_kube::crd::BuildDefinitionsSpec = serde_saphyr::from_str(
            r#"
services:
  - name: api
    definedIn: ./docker-compose.yml
    key: api-server
    context: ./src/api/
    dockerfile: src/api/Dockerfile
    dockerignore: src/api/.dockerignore
    args:
      NODE_VERSION: ${NODE_VERSION:-20}
      GIT_SHA: null
    target: prod
    variables: [NODE_VERSION]
    envFiles: [./.env]
    images: [ghcr.io/acme/api]
  - name: escape
    context: ../elsewhere
    dockerfile: ../elsewhere/Dockerfile
  - name: web
    context: web
    dockerfile: web/Dockerfile
    envFiles: [../outside.env, deploy/.env]
"#,
        )
        .unwrap();
        let (builds, warnings) = from_spec(&spec);
        let names: Vec<&str> = builds.services.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["api", "web"]);
        let api = &builds.services[0];
        assert_eq!(api.defined_in.as_deref(), Some("docker-compose.yml"));
        assert_eq!(api.key.as_deref(), Some("api-server"));
        assert_eq!(api.context, "src/api");
        assert_eq!(api.dockerfile, "src/api/Dockerfile");
        assert_eq!(api.dockerignore.as_deref(), Some("src/api/.dockerignore"));
        assert_eq!(api.env_files, [".env"]);
        assert_eq!(api.target.as_deref(), Some("prod"));
        assert_eq!(api.images, ["ghcr.io/acme/api"]);
        // an argument without a value comes from the environment; one with a value does not
        assert!(api.uses_variable("GIT_SHA"));
        assert!(api.uses_variable("NODE_VERSION"));
        assert!(!api.uses_variable("OTHER"));
        assert_eq!(builds.services[1].env_files, ["deploy/.env"]);
        assert_eq!(warnings.len(), 3, "{warnings:?}");
        assert!(warnings[0].contains("\"escape\": context"), "{warnings:?}");
        assert!(warnings[2].contains("outside.env"), "{warnings:?}");
        // the converted definitions are the ones the rules read
        assert_eq!(kind_of(".env", Some(&builds)), Some(FileKind::EnvFile));
        assert_eq!(
            kind_of("deploy/.env", Some(&builds)),
            Some(FileKind::EnvFile)
        );
    }

    #[test]
    fn paths_join_inside_the_repository() {
        assert_eq!(join("deploy", "../src/api").as_deref(), Some("src/api"));
        assert_eq!(join("", "./api/").as_deref(), Some("api"));
        assert_eq!(join("", "../x"), None);
        assert_eq!(parent("a/b/c"), "a/b");
        assert_eq!(parent("c"), "");
    }
}
