//! The compiled catalogue and the deterministic rule.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use previewd_core::ServiceCatalogue;

use super::pattern::{IgnoreRules, PathPattern};
use super::{
    AffectedServices, CONFIDENCE_ASSUMED_ALL, CONFIDENCE_PATH_EVIDENCE, ChangeInput, Evidence,
    GITHUB_FILE_LIST_CAP, ServicesError,
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

    /// The deterministic answer for one change.
    pub fn affected(&self, change: &ChangeInput) -> AffectedServices {
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
        for raw in &change.files {
            let path = normalise_path(raw);
            if path.is_empty() || !seen.insert(path) {
                continue;
            }
            let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
            let shared = self.shared.iter().any(|p| p.matches_segments(&segs));
            let mut claimed = shared;
            for (i, svc) in self.services.iter().enumerate() {
                if shared {
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
            if !claimed {
                result.unmapped_files.push(path.to_owned());
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
        result.confidence = CONFIDENCE_PATH_EVIDENCE;
        result
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
