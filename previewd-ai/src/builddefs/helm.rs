//! Helm values files: which service a changed image reference belongs to.
//!
//! Charts name the images they run in their values files, in one of the shapes Helm
//! charts use: `image: ghcr.io/acme/api:1.2`, or a mapping
//! `image: {registry, repository, tag, digest}` under the service's own key
//! (`api: {image: {repository: ghcr.io/acme/api, tag: "1.2"}}`). A changed line in such a
//! file is placed in the YAML structure the patch shows ([`super::yaml`]); scalar values
//! go through the YAML parser, so quoting and escapes read as YAML reads them. The
//! service is named by the image repository (on the line or beside it) or, for a `tag`
//! whose repository the patch does not show, by the key the image sits under. Other
//! settings (replicas, resources, ingress) change how a service runs, not its image, and
//! affect nothing, as compose runtime settings do.

use super::diff::Hunk;
use super::yaml;

/// Keys that hold (part of) an image reference.
const IMAGE_KEYS: &[&str] = &[
    "image",
    "repository",
    "tag",
    "digest",
    "registry",
    "imageName",
    "imageTag",
    "imageRepository",
];

/// Keys whose value is an image repository (possibly with a tag).
const REPOSITORY_KEYS: &[&str] = &["image", "repository", "imageName", "imageRepository"];

/// Whether a key holds (part of) an image reference: the usual keys, and any key
/// naming an image or a registry (`imageRegistry`, `image_tag`).
fn is_image_key(key: &str) -> bool {
    let lower = key.to_ascii_lowercase();
    IMAGE_KEYS.contains(&key) || lower.contains("image") || lower.contains("registry")
}

/// One changed line of a values file, placed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ValuesChange {
    /// A changed image reference.
    Image {
        /// Repositories visible on the line or beside it (`ghcr.io/acme/api:1.2`, `acme/api`).
        repositories: Vec<String>,
        /// The keys above the line, outermost first (`api`, `image`).
        keys: Vec<String>,
        /// What changed (`api.image.tag`).
        detail: String,
    },
    /// Any other setting.
    Setting {
        /// The keys above the line, outermost first, then its own.
        keys: Vec<String>,
        /// What changed.
        detail: String,
    },
}

/// Places every changed line of a values file's patch.
pub fn values_changes(hunks: &[Hunk]) -> Vec<ValuesChange> {
    let mut out = Vec::new();
    for (h, _new, lines, changed) in super::sides(hunks) {
        for i in changed {
            let line = &lines[i];
            let loc = yaml::locate(&lines, i, &h.section);
            let keys: Vec<String> = loc.keys().map(str::to_owned).collect();
            let own = line.key.as_deref();
            let above: Vec<String> = match own {
                Some(_) => keys[..keys.len().saturating_sub(1)].to_vec(),
                None => keys.clone(),
            };
            let detail = keys.join(".");
            let in_image = above.last().is_some_and(|k| k == "image" || k == "images");
            // a list item under `image(s):` (no key of its own) is an image too; a
            // `pullPolicy` beside the repository is not
            let is_image = match own {
                Some(k) => is_image_key(k),
                None => in_image,
            };
            if !is_image {
                out.push(ValuesChange::Setting { keys, detail });
                continue;
            }
            let mut repositories = Vec::new();
            for (k, v) in siblings(&lines, i) {
                if REPOSITORY_KEYS.contains(&k.as_str()) {
                    let v = scalar(&v);
                    if !v.is_empty() {
                        repositories.push(v);
                    }
                }
            }
            repositories.sort();
            repositories.dedup();
            out.push(ValuesChange::Image {
                repositories,
                keys: above,
                detail,
            });
        }
    }
    out
}

/// For a changed line under skaffold's `deploy`, `manifests` or `profiles`: when it sets
/// an image value of a Helm release (`setValues`, `setValueTemplates`, `valuesFiles`
/// neighbours such as `image.tag: v2`, `api.image.repository: ...`), the image it names
/// (the repository on the line or beside it, else the first segment of a dotted key, else
/// the release's `name`) and a detail; `None` for any other line.
pub fn deployed_image(
    lines: &[yaml::YamlLine],
    i: usize,
    loc: &yaml::Location,
) -> Option<(Option<String>, String)> {
    let key = lines[i].key.as_deref()?;
    let segments: Vec<&str> = key.split('.').collect();
    let last = segments.last().copied().unwrap_or(key);
    if !is_image_key(last) || !loc.keys().any(|k| k.starts_with("setValue")) {
        return None;
    }
    let detail = loc.keys().collect::<Vec<_>>().join(".");
    let concrete = |v: &str| {
        let v = scalar(v);
        (!v.is_empty() && !v.contains("{{")).then_some(v)
    };
    let from_repository = siblings(lines, i).into_iter().find_map(|(k, v)| {
        let last = k.rsplit('.').next().unwrap_or(&k);
        REPOSITORY_KEYS
            .contains(&last)
            .then(|| concrete(&v))
            .flatten()
    });
    let from_key = (segments.len() > 2).then(|| segments[0].to_owned());
    let from_release = loc.path.iter().rev().find_map(|n| match n {
        yaml::Node::Item(start) => yaml::item_fields(lines, *start)
            .into_iter()
            .find(|(k, _)| k == "name")
            .and_then(|(_, v)| concrete(&v)),
        yaml::Node::Key(_) => None,
    });
    Some((from_repository.or(from_key).or(from_release), detail))
}

/// The keys and values of the line and of the visible lines of the same mapping.
fn siblings(lines: &[yaml::YamlLine], i: usize) -> Vec<(String, String)> {
    let me = &lines[i];
    let col = me.key_indent;
    let mut out = Vec::new();
    if let Some(k) = &me.key {
        out.push((k.clone(), me.value.clone()));
    }
    // upwards to the mapping's first line, downwards to its last
    for range in [
        (0..i).rev().collect::<Vec<_>>(),
        (i + 1..lines.len()).collect(),
    ] {
        for j in range {
            let l = &lines[j];
            if l.trivia {
                continue;
            }
            if l.document || (l.key_indent < col) || (l.indent < col && !l.item) {
                break;
            }
            if l.key_indent == col
                && let Some(k) = &l.key
            {
                out.push((k.clone(), l.value.clone()));
            }
            if l.item && l.indent < col {
                // the first line of the list item holding the mapping
                break;
            }
        }
    }
    out
}

/// A scalar as YAML reads it (quotes, escapes); the text itself when it is not one.
pub fn scalar(v: &str) -> String {
    if v.is_empty() {
        return String::new();
    }
    match serde_saphyr::from_str::<String>(v) {
        Ok(s) => s,
        Err(_) => yaml::unquote(v).to_owned(),
    }
}

/// The repository of an image reference: without tag and digest, without Docker Hub's
/// implicit `docker.io/` and `library/`, lower case.
pub fn image_repository(reference: &str) -> String {
    let r = reference.trim();
    let r = r.split('@').next().unwrap_or(r);
    // a `:` after the last `/` starts the tag (a `:` before it is a registry port)
    let r = match (r.rfind(':'), r.rfind('/')) {
        (Some(c), Some(s)) if c > s => &r[..c],
        (Some(c), None) => &r[..c],
        _ => r,
    };
    let r = r.strip_prefix("docker.io/").unwrap_or(r);
    let r = r.strip_prefix("index.docker.io/").unwrap_or(r);
    let r = r.strip_prefix("library/").unwrap_or(r);
    r.to_ascii_lowercase()
}

/// Whether two repositories name the same image: equal, or one is the other without its
/// registry or organisation (`acme/api` and `ghcr.io/acme/api`; values files often split
/// `registry` from `repository`). A single segment (`api`) matches only itself.
pub fn same_repository(a: &str, b: &str) -> bool {
    if a.is_empty() || b.is_empty() {
        return false;
    }
    if a == b {
        return true;
    }
    let (short, long) = if a.len() < b.len() { (a, b) } else { (b, a) };
    short.contains('/') && long.ends_with(short) && long[..long.len() - short.len()].ends_with('/')
}

/// Whether a key names a service: equal ignoring case, `-` and `_` (`authService`,
/// `auth-service` and `auth_service` all name `auth-service`).
pub fn key_names(key: &str, name: &str) -> bool {
    let norm = |s: &str| {
        s.chars()
            .filter(|c| *c != '-' && *c != '_')
            .map(|c| c.to_ascii_lowercase())
            .collect::<String>()
    };
    !name.is_empty() && norm(key) == norm(name)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::builddefs::diff::parse_hunks;

    #[test]
    fn repositories_drop_tags_digests_and_docker_hub_prefixes() {
        assert_eq!(image_repository("ghcr.io/acme/api:1.2"), "ghcr.io/acme/api");
        assert_eq!(
            image_repository("registry:5000/acme/api@sha256:abc"),
            "registry:5000/acme/api"
        );
        assert_eq!(image_repository("docker.io/library/redis:7"), "redis");
        assert_eq!(image_repository("Acme/API"), "acme/api");
        assert!(same_repository("acme/api", "ghcr.io/acme/api"));
        assert!(!same_repository("api", "ghcr.io/acme/api"));
        assert!(!same_repository("cme/api", "ghcr.io/acme/api"));
        assert!(key_names("authService", "auth-service"));
        assert!(!key_names("auth", "auth-service"));
    }

    #[test]
    fn a_changed_tag_is_read_with_its_repository() {
        // values.yaml of a chart deploying two services
        let hunks = parse_hunks(
            "@@ -3,9 +3,9 @@ api:\n   image:\n     repository: \"ghcr.io/acme/api\"\n-    tag: 1.4.0\n+    tag: 1.5.0\n     pullPolicy: IfNotPresent\n   replicaCount: 1\n web:\n   image:\n     repository: ghcr.io/acme/web\n     tag: 2.0.1\n",
        )
        .unwrap();
        let changes = values_changes(&hunks);
        assert_eq!(changes.len(), 2, "{changes:?}");
        for c in &changes {
            assert_eq!(
                c,
                &ValuesChange::Image {
                    repositories: vec!["ghcr.io/acme/api".to_owned()],
                    keys: vec!["api".to_owned(), "image".to_owned()],
                    detail: "api.image.tag".to_owned(),
                }
            );
        }
    }

    #[test]
    fn a_tag_out_of_sight_of_its_repository_keeps_its_keys() {
        let hunks = parse_hunks(
            "@@ -20,3 +20,3 @@ worker:\n   image:\n-    tag: \"sha-1\"\n+    tag: \"sha-2\"\n   resources: {}\n",
        )
        .unwrap();
        let changes = values_changes(&hunks);
        assert!(matches!(
            &changes[0],
            ValuesChange::Image { repositories, keys, .. }
                if repositories.is_empty() && keys == &["worker", "image"]
        ));
    }

    #[test]
    fn skaffold_helm_releases_name_their_images() {
        let text = "@@ -30,8 +30,8 @@ deploy:\n   helm:\n     releases:\n       - name: checkout\n         chartPath: charts/checkout\n         setValues:\n-          image.tag: v1\n+          image.tag: v2\n           replicaCount: 2\n         setValueTemplates:\n";
        let hunks = parse_hunks(text).unwrap();
        let side: Vec<yaml::YamlLine> = hunks[0]
            .side(true)
            .iter()
            .map(|(t, _)| yaml::classify(t))
            .collect();
        let at = |key: &str| {
            side.iter()
                .position(|l| l.key.as_deref() == Some(key))
                .unwrap()
        };
        let i = at("image.tag");
        let loc = yaml::locate(&side, i, &hunks[0].section);
        // no repository beside it: the release's name
        assert_eq!(
            deployed_image(&side, i, &loc),
            Some((
                Some("checkout".to_owned()),
                "deploy.helm.releases.setValues.image.tag".to_owned()
            ))
        );
        // replicas are not an image; chartPath is not under setValues
        let i = at("replicaCount");
        assert_eq!(
            deployed_image(&side, i, &yaml::locate(&side, i, "deploy:")),
            None
        );
        let i = at("chartPath");
        assert_eq!(
            deployed_image(&side, i, &yaml::locate(&side, i, "deploy:")),
            None
        );
    }

    #[test]
    fn inline_images_and_other_settings() {
        let hunks = parse_hunks(
            "@@ -1,4 +1,4 @@\n cache:\n-  image: 'docker.io/library/redis:7.0'\n+  image: 'docker.io/library/redis:7.2'\n api:\n-  replicaCount: 1\n+  replicaCount: 2\n",
        )
        .unwrap();
        let changes = values_changes(&hunks);
        assert!(matches!(
            &changes[0],
            ValuesChange::Image { repositories, .. }
                if repositories == &["docker.io/library/redis:7.0"]
        ));
        assert!(matches!(
            &changes[1],
            ValuesChange::Setting { keys, .. } if keys == &["api", "replicaCount"]
        ));
    }
}
