//! The compiled catalogue and the deterministic rule.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use std::sync::Arc;

use previewd_core::ServiceCatalogue;

use super::pattern::{IgnoreRules, PathPattern};
use super::{
    AffectedServices, CONFIDENCE_ASSUMED_ALL, CONFIDENCE_PATH_EVIDENCE, ChangeInput, Evidence,
    GITHUB_FILE_LIST_CAP, ServicesError,
};
use crate::builddefs::{
    self, BuildDefinitions, ChangeDiff, DiffLine, FileDiff, FileKind, FileStatus, Hunk, Outcome,
    ServiceBuild, YamlChange,
};

#[derive(Clone, Debug)]
struct CompiledService {
    name: String,
    paths: Vec<PathPattern>,
    ignore: IgnoreRules,
}

/// A catalogue with its patterns compiled and its dependency graph inverted; build it once
/// per catalogue and reuse it for every change.
#[derive(Clone, Debug)]
pub struct CompiledCatalogue {
    services: Vec<CompiledService>,
    shared: Vec<PathPattern>,
    /// `dependents[i]` = services that depend on service `i`.
    dependents: Vec<Vec<usize>>,
    /// Catalogue as given (names, paths) for the model's context.
    source: ServiceCatalogue,
    /// How the services are built, when known.
    builds: Option<Arc<BuildDefinitions>>,
}

impl CompiledCatalogue {
    /// Compiles a catalogue, checking patterns, names and dependencies.
    pub fn new(catalogue: &ServiceCatalogue) -> Result<Self, ServicesError> {
        let mut index = BTreeMap::new();
        let mut services = Vec::with_capacity(catalogue.services.len());
        for (i, svc) in catalogue.services.iter().enumerate() {
            if index.insert(svc.name.clone(), i).is_some() {
                return Err(ServicesError::DuplicateService(svc.name.clone()));
            }
            let paths = svc
                .paths
                .iter()
                .map(|p| {
                    PathPattern::new(p).map_err(|reason| ServicesError::InvalidPattern {
                        service: svc.name.clone(),
                        pattern: p.clone(),
                        reason,
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            let ignore = IgnoreRules::new(&svc.ignore_paths).map_err(|(pattern, reason)| {
                ServicesError::InvalidPattern {
                    service: svc.name.clone(),
                    pattern,
                    reason,
                }
            })?;
            services.push(CompiledService {
                name: svc.name.clone(),
                paths,
                ignore,
            });
        }
        let mut dependents = vec![Vec::new(); services.len()];
        for (i, svc) in catalogue.services.iter().enumerate() {
            for dep in &svc.depends_on {
                let Some(&d) = index.get(dep) else {
                    return Err(ServicesError::UnknownDependency {
                        service: svc.name.clone(),
                        dependency: dep.clone(),
                    });
                };
                if !dependents[d].contains(&i) {
                    dependents[d].push(i);
                }
            }
        }
        let shared = catalogue
            .shared_paths
            .iter()
            .map(|p| {
                PathPattern::new(p).map_err(|reason| ServicesError::InvalidPattern {
                    service: "shared".to_owned(),
                    pattern: p.clone(),
                    reason,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(CompiledCatalogue {
            services,
            shared,
            dependents,
            source: catalogue.clone(),
            builds: None,
        })
    }

    /// Service names in catalogue order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.services.iter().map(|s| s.name.as_str())
    }

    /// Number of services.
    pub fn len(&self) -> usize {
        self.services.len()
    }

    /// Whether the catalogue has no services.
    pub fn is_empty(&self) -> bool {
        self.services.is_empty()
    }

    /// The catalogue this was compiled from.
    pub fn catalogue(&self) -> &ServiceCatalogue {
        &self.source
    }

    /// Adds how the services are built (compose, skaffold, Dockerfiles): the build
    /// definition rules then know which service a compose entry, an env variable, a
    /// Dockerfile or a `.dockerignore` belongs to.
    pub fn with_build_definitions(mut self, builds: BuildDefinitions) -> Self {
        self.builds = Some(Arc::new(builds));
        self
    }

    /// The build definitions, when given.
    pub fn build_definitions(&self) -> Option<&BuildDefinitions> {
        self.builds.as_deref()
    }

    /// Whether the diff would tell more than the file list: some changed file is a build
    /// definition (compose, skaffold, `.env`, Dockerfile, `.dockerignore`). Callers that
    /// fetch the diff only when needed should fetch it then.
    pub fn needs_diff(&self, change: &ChangeInput) -> bool {
        change
            .files
            .iter()
            .any(|f| builddefs::kind_of(normalise_path(f), self.build_definitions()).is_some())
    }

    /// The deterministic answer for one change; the build-definition rules read
    /// `change.diff` when it is there.
    pub fn affected(&self, change: &ChangeInput) -> AffectedServices {
        let diff = change.diff.as_deref().map(ChangeDiff::from_unified);
        self.affected_with_diff(change, diff.as_ref())
    }

    /// The deterministic answer for one change, with its diff as per-file patches
    /// ([`ChangeDiff::from_unified`], [`ChangeDiff::from_changed_files`]); `None` when no
    /// diff is available. Without a diff, or for a file the diff does not show (truncated,
    /// binary, no patch), build-definition files are matched by path only and
    /// [`AffectedServices::notes`] says so.
    pub fn affected_with_diff(
        &self,
        change: &ChangeInput,
        diff: Option<&ChangeDiff>,
    ) -> AffectedServices {
        let mut result = AffectedServices::default();
        let all_reason = if change.file_list_incomplete {
            Some("the list of changed files is incomplete".to_owned())
        } else if change.files.len() >= GITHUB_FILE_LIST_CAP {
            Some(format!(
                "{} changed files reach the GitHub file-list cap of {GITHUB_FILE_LIST_CAP}",
                change.files.len()
            ))
        } else {
            None
        };
        if let Some(reason) = all_reason {
            for svc in &self.services {
                result.services.insert(svc.name.clone());
                result.evidence.insert(
                    svc.name.clone(),
                    vec![Evidence::AllServices {
                        reason: reason.clone(),
                    }],
                );
            }
            result.all_services_reason = Some(reason);
            result.confidence = CONFIDENCE_ASSUMED_ALL;
            return result;
        }

        let mut hit = vec![false; self.services.len()];
        let mut seen = BTreeSet::new();
        let mut notes = Notes::default();
        for raw in &change.files {
            let path = normalise_path(raw);
            if path.is_empty() || !seen.insert(path) {
                continue;
            }
            let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
            let finding = self.build_finding(path, diff, &mut notes);
            let understood = matches!(
                finding,
                Some((_, Outcome::Affects(_))) | Some((_, Outcome::NoEffect(_)))
            );
            let shared = self.shared.iter().any(|p| p.matches_segments(&segs));
            let mut claimed = shared || understood;
            if shared && understood {
                notes.push(format!(
                    "{path} is a shared path; its diff was read instead of selecting every service"
                ));
            }
            for (i, svc) in self.services.iter().enumerate() {
                if shared && !understood {
                    hit[i] = true;
                    result.add_evidence(
                        &svc.name,
                        Evidence::SharedPath {
                            path: path.to_owned(),
                        },
                    );
                    continue;
                }
                if svc.paths.iter().any(|p| p.matches_segments(&segs)) {
                    claimed = true;
                    if !svc.ignore.is_ignored(path) {
                        hit[i] = true;
                        result.add_evidence(
                            &svc.name,
                            Evidence::Path {
                                path: path.to_owned(),
                            },
                        );
                    }
                }
            }
            if let Some((kind, Outcome::Affects(list))) = finding {
                for (name, detail) in list {
                    let Some(i) = self.index_of(&name) else {
                        continue;
                    };
                    hit[i] = true;
                    // details quote the diff: untrusted text, kept short
                    let detail = cap(&detail, MAX_DETAIL_CHARS);
                    let evidence = match kind {
                        FileKind::EnvFile => Evidence::BuildArgument {
                            path: path.to_owned(),
                            variables: detail.split(", ").map(str::to_owned).collect(),
                        },
                        FileKind::DockerIgnore => Evidence::IgnoreFile {
                            path: path.to_owned(),
                            pattern: detail,
                        },
                        _ => Evidence::BuildDefinition {
                            path: path.to_owned(),
                            detail,
                        },
                    };
                    result.add_evidence(&name, evidence);
                }
            }
            if !claimed {
                result.unmapped_files.push(path.to_owned());
            }
        }

        // Renames: the new path of a file a service claims belongs to that service.
        if let Some(diff) = diff {
            for f in &diff.files {
                let Some(from) = f.previous_path.as_deref() else {
                    continue;
                };
                let (from, to) = (normalise_path(from), normalise_path(&f.path));
                for (i, svc) in self.services.iter().enumerate() {
                    let owns = |p: &str| {
                        let segs: Vec<&str> = p.split('/').filter(|s| !s.is_empty()).collect();
                        svc.paths.iter().any(|pat| pat.matches_segments(&segs))
                            && !svc.ignore.is_ignored(p)
                    };
                    if owns(from) || owns(to) {
                        result.unmapped_files.retain(|u| u != from && u != to);
                        if owns(from) && !owns(to) {
                            hit[i] = true;
                            result.add_evidence(
                                &svc.name,
                                Evidence::Renamed {
                                    from: from.to_owned(),
                                    to: to.to_owned(),
                                },
                            );
                        }
                    }
                }
            }
        }

        // Dependency closure: dependents of affected services are affected.
        let mut queue: VecDeque<usize> = (0..hit.len()).filter(|&i| hit[i]).collect();
        while let Some(i) = queue.pop_front() {
            for &d in &self.dependents[i] {
                if !hit[d] {
                    hit[d] = true;
                    let via = self.services[i].name.clone();
                    result.add_evidence(
                        &self.services[d].name.clone(),
                        Evidence::DependsOn { service: via },
                    );
                    queue.push_back(d);
                }
            }
        }
        for (i, svc) in self.services.iter().enumerate() {
            if hit[i] {
                result.services.insert(svc.name.clone());
            }
        }
        result.notes = notes.0;
        result.confidence = CONFIDENCE_PATH_EVIDENCE;
        result
    }

    fn index_of(&self, name: &str) -> Option<usize> {
        self.services.iter().position(|s| s.name == name)
    }

    /// What the diff says about `path` when it is a build-definition file; `None` for
    /// other files, and for Dockerfiles and ignore files no build definition names (path
    /// matching is exact for those).
    fn build_finding(
        &self,
        path: &str,
        diff: Option<&ChangeDiff>,
        notes: &mut Notes,
    ) -> Option<(FileKind, Outcome)> {
        let builds = self.build_definitions();
        let kind = builddefs::kind_of(path, builds)?;
        let named_by_builds = builds.is_some_and(|b| {
            b.services.iter().any(|s| match kind {
                FileKind::Dockerfile => s.dockerfile == path,
                FileKind::DockerIgnore => s.dockerignore.as_deref() == Some(path),
                _ => true,
            })
        });
        if matches!(kind, FileKind::Dockerfile | FileKind::DockerIgnore) && !named_by_builds {
            return None;
        }
        let outcome = match diff.map(|d| (d, d.file(path))) {
            None => Outcome::Unknown("no diff available".to_owned()),
            Some((d, None)) if d.truncated => {
                Outcome::Unknown("the diff is truncated before this file".to_owned())
            }
            Some((_, None)) => Outcome::Unknown("the diff does not show this file".to_owned()),
            Some((_, Some(f))) => match &f.hunks {
                None => Outcome::Unknown("the diff has no readable patch for it".to_owned()),
                Some(hunks) => self.read_build_file(path, kind, f, hunks),
            },
        };
        if let Outcome::Unknown(reason) = &outcome {
            notes.push(format!(
                "{} {path}: {reason}; matched by path only",
                kind.as_str()
            ));
        }
        Some((kind, outcome))
    }

    fn read_build_file(
        &self,
        path: &str,
        kind: FileKind,
        file: &FileDiff,
        hunks: &[Hunk],
    ) -> Outcome {
        let builds = self.build_definitions();
        let lines: usize = hunks.iter().map(|h| h.lines.len()).sum();
        if lines > MAX_PATCH_LINES {
            return Outcome::Unknown(format!(
                "its patch has {lines} lines, more than the {MAX_PATCH_LINES} the rules read"
            ));
        }
        match kind {
            FileKind::Compose | FileKind::Skaffold => {
                let changes = if kind == FileKind::Compose {
                    builddefs::compose_changes(hunks)
                } else {
                    builddefs::skaffold_changes(hunks)
                };
                self.yaml_outcome(path, kind, &changes)
            }
            FileKind::EnvFile => {
                let Some(builds) = builds else {
                    return Outcome::Unknown(
                        "no build definitions tell which services read its variables".to_owned(),
                    );
                };
                let changed = match builddefs::env_changes(hunks) {
                    Ok(c) => c,
                    Err(e) => return Outcome::Unknown(format!("not valid dotenv: {e}")),
                };
                if changed.is_empty() {
                    return Outcome::NoEffect("no variable changed value".to_owned());
                }
                let readers: Vec<&ServiceBuild> = builds
                    .services
                    .iter()
                    .filter(|s| s.env_files.iter().any(|e| e == path))
                    .collect();
                let mut out = Vec::new();
                for s in readers {
                    let used: Vec<&str> = changed
                        .iter()
                        .filter(|v| s.uses_variable(v))
                        .map(String::as_str)
                        .collect();
                    if !used.is_empty() {
                        out.push((s.name.clone(), used.join(", ")));
                    }
                }
                if out.is_empty() {
                    Outcome::NoEffect(format!(
                        "no build reads the changed variables ({})",
                        changed.iter().cloned().collect::<Vec<_>>().join(", ")
                    ))
                } else {
                    Outcome::Affects(out)
                }
            }
            FileKind::Dockerfile => {
                let mut detail = match file.status {
                    FileStatus::Added => "Dockerfile added".to_owned(),
                    FileStatus::Deleted => "Dockerfile deleted".to_owned(),
                    _ => "Dockerfile changed".to_owned(),
                };
                let args: BTreeSet<String> = hunks
                    .iter()
                    .flat_map(|h| h.lines.iter())
                    .filter_map(|l| match l {
                        DiffLine::Added(t) | DiffLine::Removed(t) => Some(t),
                        DiffLine::Context(_) => None,
                    })
                    .flat_map(|t| builddefs::dockerfile::args(&builddefs::dockerfile::parse(t)))
                    .map(|(k, _)| k)
                    .collect();
                if !args.is_empty() {
                    detail.push_str(&format!(
                        " (ARG {})",
                        args.into_iter().collect::<Vec<_>>().join(", ")
                    ));
                }
                let list = builds
                    .map(|b| {
                        b.services
                            .iter()
                            .filter(|s| s.dockerfile == path)
                            .map(|s| (s.name.clone(), detail.clone()))
                            .collect()
                    })
                    .unwrap_or_default();
                Outcome::Affects(list)
            }
            FileKind::HelmValues => self.values_outcome(&builddefs::helm::values_changes(hunks)),
            FileKind::DockerIgnore => {
                let patterns = builddefs::ignore_changes(hunks);
                let mut out = Vec::new();
                for s in builds.iter().flat_map(|b| b.services.iter()) {
                    if s.dockerignore.as_deref() != Some(path) {
                        continue;
                    }
                    let Some(i) = self.index_of(&s.name) else {
                        continue;
                    };
                    let svc = &self.services[i];
                    let hit = patterns.iter().find(|p| {
                        let body = p.strip_prefix('!').unwrap_or(p).trim();
                        let body = body.strip_prefix('/').unwrap_or(body);
                        match builddefs::join(&s.context, body) {
                            Some(full) => svc.paths.iter().any(|sp| sp.may_overlap(&full)),
                            None => false,
                        }
                    });
                    if let Some(p) = hit {
                        out.push((s.name.clone(), p.clone()));
                    }
                }
                if out.is_empty() {
                    Outcome::NoEffect("no changed pattern can match a service's inputs".to_owned())
                } else {
                    Outcome::Affects(out)
                }
            }
        }
    }

    fn yaml_outcome(&self, path: &str, kind: FileKind, changes: &[YamlChange]) -> Outcome {
        let dir = builddefs::parent(path);
        let defined_here: Vec<&ServiceBuild> = self
            .build_definitions()
            .map(|b| {
                b.services
                    .iter()
                    .filter(|s| s.defined_in.as_deref() == Some(path))
                    .collect()
            })
            .unwrap_or_default();
        let mut out: BTreeMap<String, String> = BTreeMap::new();
        let mut unknown = Vec::new();
        for change in changes {
            match change {
                YamlChange::NoBuild(_) => {}
                YamlChange::Build {
                    entry,
                    context,
                    detail,
                } => {
                    if let Some(name) =
                        self.resolve_entry(path, dir, entry.as_deref(), context.as_deref())
                    {
                        out.entry(name).or_insert_with(|| detail.clone());
                    } else if entry.is_none() && context.is_none() {
                        unknown.push((detail.clone(), builddefs::Hint::default()));
                    }
                    // an entry that names no catalogue service (a database image, a test
                    // image) affects nothing the catalogue deploys
                }
                YamlChange::Unplaced {
                    entry,
                    detail,
                    hint,
                } => match entry {
                    Some(e) => {
                        if let Some(name) = self.resolve_entry(path, dir, Some(e), None) {
                            out.entry(name).or_insert_with(|| {
                                format!("{detail}: could not tell whether the build changed")
                            });
                        }
                    }
                    None => unknown.push((detail.clone(), hint.clone())),
                },
            }
        }
        if !unknown.is_empty() {
            if defined_here.is_empty() {
                let details: Vec<&str> = unknown.iter().map(|(d, _)| d.as_str()).collect();
                return Outcome::Unknown(format!(
                    "could not place a change ({}) and no build definition says which services the file defines",
                    details.join("; ")
                ));
            }
            // Group the unplaced lines of one hunk and setting: the removed and the added
            // side of one modification. The services whose definition holds the setting's
            // old or new value are the ones it belongs to; when none does, every service
            // the file defines.
            let mut groups: BTreeMap<(usize, String), Vec<&builddefs::Hint>> = BTreeMap::new();
            for (detail, hint) in &unknown {
                groups
                    .entry((hint.hunk, detail.clone()))
                    .or_default()
                    .push(hint);
            }
            for ((_, detail), hints) in &groups {
                let matching: Vec<&&ServiceBuild> = defined_here
                    .iter()
                    .filter(|s| hints.iter().any(|h| hint_matches(s, h, dir)))
                    .collect();
                let (chosen, why): (Vec<&&ServiceBuild>, &str) = if matching.is_empty() {
                    (
                        defined_here.iter().collect(),
                        "every service the file defines",
                    )
                } else {
                    (
                        matching,
                        "the services whose definition holds the changed setting",
                    )
                };
                for s in chosen {
                    if self.index_of(&s.name).is_some() {
                        out.entry(s.name.clone())
                            .or_insert_with(|| format!("{detail} (service out of sight; {why})"));
                    }
                }
            }
        }
        if out.is_empty() {
            Outcome::NoEffect(format!(
                "no service's build changed in the {}",
                kind.as_str()
            ))
        } else {
            Outcome::Affects(
                out.into_iter()
                    .map(|(n, d)| (n, format!("{}: {d}", kind.as_str())))
                    .collect(),
            )
        }
    }

    /// The catalogue service a compose service key or a skaffold artifact (image,
    /// context) names.
    /// What the changed lines of a Helm values file do: an image reference affects the
    /// service it names, by repository (catalogue image, [`ServiceBuild::images`]) or by
    /// the key it sits under; other settings affect nothing. One image line that names no
    /// service, and is not surely an image no service uses, leaves the file to path
    /// matching.
    fn values_outcome(&self, changes: &[builddefs::helm::ValuesChange]) -> Outcome {
        use builddefs::helm::ValuesChange;
        let mut out: BTreeMap<String, String> = BTreeMap::new();
        let mut unplaced = Vec::new();
        let mut foreign = BTreeSet::new();
        for change in changes {
            match change {
                ValuesChange::Image {
                    repositories,
                    keys,
                    detail,
                } => {
                    if !repositories.is_empty() {
                        let named: BTreeSet<String> = repositories
                            .iter()
                            .filter_map(|r| self.service_of_image(r))
                            .collect();
                        if named.is_empty() {
                            if repositories.iter().all(|r| self.surely_foreign(r)) {
                                foreign.extend(repositories.iter().cloned());
                            } else {
                                unplaced.push(format!("{detail} {}", repositories.join(", ")));
                            }
                        }
                        for name in named {
                            out.entry(name).or_insert_with(|| detail.clone());
                        }
                    } else if let Some(name) = self.service_of_keys(keys) {
                        out.entry(name).or_insert_with(|| detail.clone());
                    } else {
                        unplaced.push(detail.clone());
                    }
                }
                // how a service runs, not what image it runs
                ValuesChange::Setting { .. } => {}
            }
        }
        // the details quote the patch: untrusted, so few and short
        let quote = |items: Vec<String>| {
            let n = items.len();
            let mut shown: Vec<String> = items
                .into_iter()
                .take(MAX_QUOTED)
                .map(|d| cap(&d, MAX_DETAIL_CHARS))
                .collect();
            if n > MAX_QUOTED {
                shown.push(format!("{} more", n - MAX_QUOTED));
            }
            shown.join("; ")
        };
        if !unplaced.is_empty() {
            unplaced.sort();
            unplaced.dedup();
            return Outcome::Unknown(format!(
                "no service is named by the change ({})",
                quote(unplaced)
            ));
        }
        if out.is_empty() {
            return Outcome::NoEffect(format!(
                "no catalogue service's image changed{}",
                if foreign.is_empty() {
                    String::new()
                } else {
                    format!(" (other images: {})", quote(foreign.into_iter().collect()))
                }
            ));
        }
        Outcome::Affects(out.into_iter().collect())
    }

    /// The catalogue service whose image `reference` names: the one whose catalogue image
    /// or declared image repository is the same repository, else the one named like the
    /// repository's last segment. `None` when no service, or more than one, matches.
    fn service_of_image(&self, reference: &str) -> Option<String> {
        use builddefs::helm::{image_repository, key_names, same_repository};
        let wanted = image_repository(reference);
        if wanted.is_empty() || wanted.contains("{{") {
            return None;
        }
        let builds = self.build_definitions();
        let mut found = BTreeSet::new();
        for svc in &self.source.services {
            let template = svc.image.replace("{{service}}", &svc.name);
            let mut repos = vec![image_repository(&template)];
            repos.extend(
                builds
                    .iter()
                    .flat_map(|b| b.services.iter())
                    .filter(|b| b.name == svc.name)
                    .flat_map(|b| b.images.iter().map(|i| image_repository(i))),
            );
            if repos
                .iter()
                .any(|r| !r.contains("{{") && same_repository(r, &wanted))
            {
                found.insert(svc.name.clone());
            }
        }
        if found.is_empty() {
            let last = wanted.rsplit('/').next().unwrap_or(&wanted);
            found.extend(
                self.names()
                    .filter(|n| key_names(last, n))
                    .map(str::to_owned),
            );
        }
        (found.len() == 1)
            .then(|| found.into_iter().next())
            .flatten()
    }

    /// Whether an image reference surely belongs to no catalogue service: every service's
    /// image repository is known (no placeholder in it), and `reference` is neither one of
    /// them nor a registry or organisation prefix of one (a chart-wide `repository` that
    /// every service's image is built from).
    fn surely_foreign(&self, reference: &str) -> bool {
        use builddefs::helm::image_repository;
        let wanted = image_repository(reference);
        if wanted.is_empty() || wanted.contains("{{") {
            return false;
        }
        self.source.services.iter().all(|svc| {
            let repo = image_repository(&svc.image.replace("{{service}}", &svc.name));
            !repo.is_empty()
                && !repo.contains("{{")
                && !repo.starts_with(&format!("{wanted}/"))
                && !repo.ends_with(&format!("/{wanted}"))
                && repo != wanted
        })
    }

    /// The catalogue service a key above a values line names (innermost first): its name,
    /// or its compose key, ignoring case, `-` and `_`.
    fn service_of_keys(&self, keys: &[String]) -> Option<String> {
        use builddefs::helm::key_names;
        let builds = self.build_definitions();
        keys.iter().rev().find_map(|k| {
            self.names()
                .find(|n| key_names(k, n))
                .map(str::to_owned)
                .or_else(|| {
                    builds?
                        .services
                        .iter()
                        .find(|b| b.key.as_deref().is_some_and(|bk| key_names(k, bk)))
                        .filter(|b| self.index_of(&b.name).is_some())
                        .map(|b| b.name.clone())
                })
        })
    }

    fn resolve_entry(
        &self,
        file: &str,
        dir: &str,
        entry: Option<&str>,
        context: Option<&str>,
    ) -> Option<String> {
        let builds = self.build_definitions();
        if let Some(e) = entry {
            if let Some(s) = builds.and_then(|b| {
                b.services.iter().find(|s| {
                    s.defined_in.as_deref() == Some(file)
                        && (s.key.as_deref() == Some(e) || s.name == e)
                })
            }) && self.index_of(&s.name).is_some()
            {
                return Some(s.name.clone());
            }
            // an image reference: registry/path/name:tag@digest
            let base = e.split('@').next().unwrap_or(e);
            let base = base.rsplit('/').next().unwrap_or(base);
            let base = base.split(':').next().unwrap_or(base);
            for candidate in [e, base] {
                let norm = candidate.to_ascii_lowercase().replace('_', "-");
                if let Some(i) = self.index_of(candidate).or_else(|| self.index_of(&norm)) {
                    return Some(self.services[i].name.clone());
                }
            }
        }
        if let Some(ctx) = context {
            let full = builddefs::join(dir, yaml_unquote(ctx))?;
            if let Some(s) = builds.and_then(|b| {
                b.services
                    .iter()
                    .find(|s| s.context == full && self.index_of(&s.name).is_some())
            }) {
                return Some(s.name.clone());
            }
            let last = full.rsplit('/').next().unwrap_or(&full);
            if let Some(i) = self.index_of(last) {
                return Some(self.services[i].name.clone());
            }
        }
        None
    }
}

/// Whether a build definition holds the setting a changed line shows.
fn hint_matches(s: &ServiceBuild, hint: &builddefs::Hint, dir: &str) -> bool {
    let Some(key) = hint.key.as_deref() else {
        return false;
    };
    let value = hint.value.as_str();
    let parent = hint.parent.as_deref();
    if matches!(parent, Some("args") | Some("buildArgs")) {
        return s.args.contains_key(key);
    }
    match key {
        "context" => {
            !value.is_empty()
                && (builddefs::join(dir, value).is_some_and(|c| c == s.context)
                    || builddefs::variables_in(value)
                        .iter()
                        .any(|v| s.variables.contains(v)))
        }
        "dockerfile" => {
            let v = value.trim_start_matches("./");
            !v.is_empty() && (s.dockerfile == v || s.dockerfile.ends_with(&format!("/{v}")))
        }
        "target" => s.target.as_deref() == Some(value),
        _ => false,
    }
}

/// Longest patch (in hunk lines) of one build-definition file the rules read; a longer
/// one is matched by path (placing a line costs up to the hunk's length).
pub const MAX_PATCH_LINES: usize = 5_000;

/// Longest evidence detail, in characters.
const MAX_DETAIL_CHARS: usize = 200;
/// Most details of one file quoted in a note.
const MAX_QUOTED: usize = 5;

fn cap(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_owned()
    } else {
        let mut out: String = s.chars().take(n).collect();
        out.push('…');
        out
    }
}

fn yaml_unquote(v: &str) -> &str {
    builddefs::yaml::unquote(v)
}

/// Notes for [`AffectedServices::notes`], deduplicated and capped.
#[derive(Default)]
struct Notes(Vec<String>);

impl Notes {
    const MAX: usize = 10;

    fn push(&mut self, note: String) {
        if self.0.len() < Self::MAX && !self.0.contains(&note) {
            self.0.push(note);
        }
    }
}

fn normalise_path(path: &str) -> &str {
    let mut p = path.trim();
    loop {
        if let Some(rest) = p.strip_prefix("./") {
            p = rest;
        } else if let Some(rest) = p.strip_prefix('/') {
            p = rest;
        } else {
            return p;
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use previewd_core::CatalogueService;

    fn svc(name: &str, paths: &[&str], ignore: &[&str], deps: &[&str]) -> CatalogueService {
        CatalogueService {
            name: name.to_owned(),
            image: format!("example/{name}"),
            paths: paths.iter().map(|s| s.to_string()).collect(),
            ignore_paths: ignore.iter().map(|s| s.to_string()).collect(),
            depends_on: deps.iter().map(|s| s.to_string()).collect(),
            ..CatalogueService::default()
        }
    }

    fn catalogue() -> ServiceCatalogue {
        ServiceCatalogue {
            services: vec![
                svc(
                    "api",
                    &["services/api/"],
                    &["services/api/**/*.md"],
                    &["auth"],
                ),
                svc("auth", &["services/auth/", "proto/auth.proto"], &[], &[]),
                svc("web", &["web/"], &["web/node_modules"], &["api"]),
                svc("worker", &["services/worker/"], &[], &["worker2"]),
                svc("worker2", &["services/worker2/"], &[], &["worker"]),
            ],
            shared_paths: vec!["go.work".to_owned()],
        }
    }

    #[test]
    fn paths_ignores_and_closure() {
        let c = CompiledCatalogue::new(&catalogue()).unwrap();
        let r = c.affected(&ChangeInput::from_files(["proto/auth.proto", "docs/x.md"]));
        // auth by path, api depends on auth, web depends on api
        assert_eq!(
            r.services.iter().map(String::as_str).collect::<Vec<_>>(),
            ["api", "auth", "web"]
        );
        assert_eq!(r.unmapped_files, ["docs/x.md"]);
        assert_eq!(
            r.evidence["web"],
            [Evidence::DependsOn {
                service: "api".to_owned()
            }]
        );
        assert_eq!(r.confidence, CONFIDENCE_PATH_EVIDENCE);

        let r = c.affected(&ChangeInput::from_files(["services/api/README.md"]));
        assert!(r.services.is_empty(), "ignored file affects nothing: {r:?}");
        assert!(
            r.unmapped_files.is_empty(),
            "an ignored file is still claimed"
        );
    }

    #[test]
    fn cycles_terminate() {
        let c = CompiledCatalogue::new(&catalogue()).unwrap();
        let r = c.affected(&ChangeInput::from_files(["services/worker/main.go"]));
        assert_eq!(
            r.services.iter().map(String::as_str).collect::<Vec<_>>(),
            ["worker", "worker2"]
        );
    }

    #[test]
    fn shared_paths_and_caps_select_everything() {
        let c = CompiledCatalogue::new(&catalogue()).unwrap();
        let r = c.affected(&ChangeInput::from_files(["./go.work"]));
        assert_eq!(r.services.len(), 5);
        let many: Vec<String> = (0..GITHUB_FILE_LIST_CAP)
            .map(|i| format!("docs/{i}.md"))
            .collect();
        let r = c.affected(&ChangeInput::from_files(many));
        assert_eq!(r.services.len(), 5);
        assert!(r.all_services_reason.is_some());
        assert_eq!(r.confidence, CONFIDENCE_ASSUMED_ALL);
        let r = c.affected(&ChangeInput {
            files: vec!["docs/a.md".to_owned()],
            file_list_incomplete: true,
            ..ChangeInput::default()
        });
        assert_eq!(r.services.len(), 5);
    }

    #[test]
    fn catalogue_errors() {
        let mut cat = catalogue();
        cat.services[0].depends_on.push("nope".to_owned());
        assert_eq!(
            CompiledCatalogue::new(&cat).unwrap_err().category(),
            "unknown_dependency"
        );
        let mut cat = catalogue();
        cat.services.push(cat.services[0].clone());
        assert_eq!(
            CompiledCatalogue::new(&cat).unwrap_err().category(),
            "duplicate_service"
        );
        let mut cat = catalogue();
        cat.services[0].paths.push("src/[".to_owned());
        assert_eq!(
            CompiledCatalogue::new(&cat).unwrap_err().category(),
            "invalid_pattern"
        );
    }
}
