//! Names of the things previewd creates: namespaces, environment objects, hosts.
//!
//! Kubernetes names are DNS-1123 labels (at most 63 characters of `[a-z0-9-]`, starting
//! and ending with a letter or digit); branch names are almost anything (up to 250
//! bytes, any Unicode, slashes, dots, upper case). Mapping one onto the other:
//!
//! 1. Lower-case; fold common Latin accented letters to ASCII (`é` → `e`, `ß` → `ss`);
//!    drop combining marks; turn every other character (`/`, `.`, `_`, spaces, other
//!    scripts) into `-`; collapse runs of `-` and trim them from both ends.
//! 2. If that was lossless (the branch already was the sanitised text), the name fits
//!    in 63 characters, and the text does not end in something that looks like our hash
//!    suffix (`-` and 8 hex digits, or just 8 hex digits), use it as is:
//!    `feature-login` → `preview-12-feature-login`.
//! 3. Otherwise truncate so that the result stays within 63 characters and append
//!    `-` plus the first 8 hex digits of SHA-256 of the original branch:
//!    `Feature/Login` → `preview-12-feature-login-3f9c1a2b`.
//!
//! Names from step 2 are injective (the branch is spelled out), names from step 3 end
//! with a hash suffix that step 2 names never end with, so two different branches can
//! share a name only if they share the truncated text *and* 32 bits of SHA-256.
//!
//! Namespaces do not include the repository; environments of two repositories that
//! share a PR number and branch name map to the same namespace, which the controller
//! detects through the `previewd.io/repo` label.

use sha2::{Digest, Sha256};

/// Longest DNS-1123 label.
pub const DNS1123_LABEL_MAX: usize = 63;
/// Longest DNS-1123 subdomain.
pub const DNS1123_SUBDOMAIN_MAX: usize = 253;
/// Length of the hash suffix, in hex digits.
pub const HASH_SUFFIX_LEN: usize = 8;

/// Why a string is not a valid DNS-1123 name.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// Empty name (or an empty dot-separated part of a subdomain).
    #[error("invalid name {name:?}: empty name or empty part between dots")]
    Empty {
        /// The name.
        name: String,
    },
    /// Longer than allowed.
    #[error("invalid name {name:?}: {len} characters, at most {max} allowed")]
    TooLong {
        /// The name.
        name: String,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A character outside `[a-z0-9-]` (plus `.` for subdomains).
    #[error(
        "invalid name {name:?}: character {character:?} is not allowed (lower-case letters, digits and '-' only)"
    )]
    InvalidCharacter {
        /// The name.
        name: String,
        /// The offending character.
        character: char,
    },
    /// Starts or ends with `-`.
    #[error("invalid name {name:?}: must start and end with a lower-case letter or digit")]
    BadEdge {
        /// The name.
        name: String,
    },
}

impl NameError {
    /// Short static category for metrics labels and Event reasons.
    pub const fn category(&self) -> &'static str {
        "InvalidName"
    }
}

fn check_part(whole: &str, part: &str) -> Result<(), NameError> {
    if part.is_empty() {
        return Err(NameError::Empty {
            name: whole.to_owned(),
        });
    }
    if let Some(character) = part
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        return Err(NameError::InvalidCharacter {
            name: whole.to_owned(),
            character,
        });
    }
    if part.starts_with('-') || part.ends_with('-') {
        return Err(NameError::BadEdge {
            name: whole.to_owned(),
        });
    }
    Ok(())
}

/// Checks a DNS-1123 label (namespace names, Service names, label-safe names).
pub fn validate_dns1123_label(name: &str) -> Result<(), NameError> {
    if name.len() > DNS1123_LABEL_MAX {
        return Err(NameError::TooLong {
            name: name.to_owned(),
            len: name.len(),
            max: DNS1123_LABEL_MAX,
        });
    }
    check_part(name, name)
}

/// True for a valid DNS-1123 label.
pub fn is_dns1123_label(name: &str) -> bool {
    validate_dns1123_label(name).is_ok()
}

/// Checks a DNS-1123 subdomain (object names, host names): at most 253 characters,
/// dot-separated parts of `[a-z0-9-]` starting and ending with a letter or digit.
pub fn validate_dns1123_subdomain(name: &str) -> Result<(), NameError> {
    if name.len() > DNS1123_SUBDOMAIN_MAX {
        return Err(NameError::TooLong {
            name: name.to_owned(),
            len: name.len(),
            max: DNS1123_SUBDOMAIN_MAX,
        });
    }
    if name.is_empty() {
        return Err(NameError::Empty {
            name: name.to_owned(),
        });
    }
    name.split('.').try_for_each(|part| check_part(name, part))
}

/// True for a valid DNS-1123 subdomain.
pub fn is_dns1123_subdomain(name: &str) -> bool {
    validate_dns1123_subdomain(name).is_ok()
}

/// ASCII spelling of common Latin letters with diacritics (input is lower case).
fn fold_latin(c: char) -> Option<&'static str> {
    Some(match c {
        'à'..='å' | 'ā' | 'ă' | 'ą' => "a",
        'æ' => "ae",
        'ç' | 'ć' | 'ĉ' | 'ċ' | 'č' => "c",
        'ď' | 'đ' | 'ð' => "d",
        'è'..='ë' | 'ē' | 'ĕ' | 'ė' | 'ę' | 'ě' => "e",
        'ĝ' | 'ğ' | 'ġ' | 'ģ' => "g",
        'ĥ' | 'ħ' => "h",
        'ì'..='ï' | 'ĩ' | 'ī' | 'ĭ' | 'į' | 'ı' => "i",
        'ĳ' => "ij",
        'ĵ' => "j",
        'ķ' => "k",
        'ĺ' | 'ļ' | 'ľ' | 'ŀ' | 'ł' => "l",
        'ñ' | 'ń' | 'ņ' | 'ň' => "n",
        'ò'..='ö' | 'ø' | 'ō' | 'ŏ' | 'ő' => "o",
        'œ' => "oe",
        'ŕ' | 'ŗ' | 'ř' => "r",
        'ś' | 'ŝ' | 'ş' | 'š' => "s",
        'ß' => "ss",
        'ţ' | 'ť' | 'ŧ' => "t",
        'þ' => "th",
        'ù'..='ü' | 'ũ' | 'ū' | 'ŭ' | 'ů' | 'ű' | 'ų' => "u",
        'ŵ' => "w",
        'ý' | 'ÿ' | 'ŷ' => "y",
        'ź' | 'ż' | 'ž' => "z",
        _ => return None,
    })
}

/// Sanitises free text into `[a-z0-9-]*` with no leading, trailing or doubled `-`.
pub fn sanitize(input: &str) -> String {
    let mut out = String::with_capacity(input.len());
    let push_dash = |out: &mut String| {
        if !out.is_empty() && !out.ends_with('-') {
            out.push('-');
        }
    };
    for c in input.chars().flat_map(char::to_lowercase) {
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            out.push(c);
        } else if let Some(folded) = fold_latin(c) {
            out.push_str(folded);
        } else if ('\u{0300}'..='\u{036f}').contains(&c) {
            // Combining diacritical marks: dropped (`e` + U+0301 is `e`).
        } else {
            push_dash(&mut out);
        }
    }
    while out.ends_with('-') {
        out.pop();
    }
    out
}

/// First 8 hex digits of SHA-256 of `input`.
pub fn short_hash(input: &str) -> String {
    let digest = Sha256::digest(input.as_bytes());
    let mut hex = hex::encode(&digest[..HASH_SUFFIX_LEN / 2]);
    hex.truncate(HASH_SUFFIX_LEN);
    hex
}

/// True when `s` is 8 hex digits or ends with `-` and 8 hex digits.
fn looks_hashed(s: &str) -> bool {
    let bytes = s.as_bytes();
    if bytes.len() < HASH_SUFFIX_LEN {
        return false;
    }
    let tail = &bytes[bytes.len() - HASH_SUFFIX_LEN..];
    let hexlike = tail
        .iter()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b));
    hexlike && (bytes.len() == HASH_SUFFIX_LEN || bytes[bytes.len() - HASH_SUFFIX_LEN - 1] == b'-')
}

/// Builds `{head}-{text}{tail}` (just `{text}{tail}` for an empty head) with the
/// collision rule of the module documentation. `head` and `tail` are fixed, DNS-safe
/// parts; `raw` is the free text placed between them.
fn compose(head: &str, raw: &str, tail: &str) -> String {
    let sanitized = sanitize(raw);
    let join = |middle: &str| -> String {
        let mut name = String::with_capacity(DNS1123_LABEL_MAX);
        name.push_str(head);
        if !head.is_empty() && !middle.is_empty() {
            name.push('-');
        }
        name.push_str(middle);
        name.push_str(tail);
        name
    };
    if !sanitized.is_empty() && sanitized == raw && !looks_hashed(&sanitized) {
        let name = join(&sanitized);
        if name.len() <= DNS1123_LABEL_MAX {
            return name;
        }
    }
    let hash = short_hash(raw);
    // Fixed parts: head, '-' between head and text, '-' + hash, tail.
    let separator = usize::from(!head.is_empty());
    let fixed = head.len() + separator + 1 + HASH_SUFFIX_LEN + tail.len();
    let room = DNS1123_LABEL_MAX.saturating_sub(fixed);
    // `sanitized` is ASCII, so byte slicing is on character boundaries.
    let kept = sanitized[..sanitized.len().min(room)].trim_end_matches('-');
    if kept.is_empty() {
        join(&hash)
    } else {
        join(&format!("{kept}-{hash}"))
    }
}

/// The namespace of a pull request's environment: `preview-{pr}-{sanitised-branch}`,
/// a DNS-1123 label for any branch (see the module documentation).
pub fn namespace_name(pr: u64, branch: &str) -> String {
    compose(&format!("preview-{pr}"), branch, "")
}

/// The `PreviewEnvironment` object name: `{sanitised-repo-name}-pr-{pr}`, where the repo
/// name is the part after the last `/` of `owner/name`, with the same collision rule
/// (`Shop.Web` → `shop-web-1a2b3c4d-pr-12`).
pub fn environment_name(repo: &str, pr: u64) -> String {
    let name = repo.rsplit('/').next().unwrap_or(repo);
    compose("", name, &format!("-pr-{pr}"))
}

/// The environment's host name: `pr-{pr}.{base_domain}`, lower-cased, surrounding
/// whitespace and dots trimmed from the domain.
pub fn ingress_host(pr: u64, base_domain: &str) -> String {
    let domain = base_domain.trim().trim_matches('.').to_ascii_lowercase();
    format!("pr-{pr}.{domain}")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn plain_branches_stay_readable() {
        assert_eq!(
            namespace_name(12, "feature-login"),
            "preview-12-feature-login"
        );
        assert_eq!(namespace_name(7, "main"), "preview-7-main");
        assert_eq!(namespace_name(7, "fix-123"), "preview-7-fix-123");
    }

    #[test]
    fn lossy_branches_get_a_hash() {
        let name = namespace_name(12, "feature/login");
        assert_eq!(
            name,
            format!("preview-12-feature-login-{}", short_hash("feature/login"))
        );
        assert_ne!(name, namespace_name(12, "Feature/Login"));
        assert_ne!(namespace_name(12, "feature-login"), name);
        let accents = namespace_name(3, "café/crème_brûlée");
        assert!(
            accents.starts_with("preview-3-cafe-creme-brulee-"),
            "{accents}"
        );
        let cjk = namespace_name(3, "修复");
        assert_eq!(cjk, format!("preview-3-{}", short_hash("修复")));
        assert_eq!(
            namespace_name(3, ""),
            format!("preview-3-{}", short_hash(""))
        );
        assert!(namespace_name(3, "--").starts_with("preview-3-"));
    }

    #[test]
    fn hash_lookalikes_are_hashed_too() {
        let lossy = "x/y";
        let lookalike = format!("x-y-{}", short_hash(lossy));
        assert_ne!(namespace_name(1, lossy), namespace_name(1, &lookalike));
        let bare = short_hash("修复");
        assert_ne!(namespace_name(1, "修复"), namespace_name(1, &bare));
        // Eight characters that are not all hex are fine.
        assert_eq!(namespace_name(1, "fix-deadbeeg"), "preview-1-fix-deadbeeg");
    }

    #[test]
    fn long_branches_are_truncated_and_distinct() {
        let prefix = "a".repeat(60);
        let a = namespace_name(u64::MAX, &format!("{prefix}-one"));
        let b = namespace_name(u64::MAX, &format!("{prefix}-two"));
        assert_ne!(a, b);
        for n in [&a, &b] {
            assert!(n.len() <= 63, "{n}");
            assert!(is_dns1123_label(n), "{n}");
        }
        let long = namespace_name(1, &"b".repeat(250));
        assert_eq!(long.len(), 63);
    }

    #[test]
    fn environment_names() {
        assert_eq!(environment_name("acme/shop", 12), "shop-pr-12");
        assert_eq!(environment_name("shop", 12), "shop-pr-12");
        let dotted = environment_name("acme/Shop.Web", 12);
        assert_eq!(dotted, format!("shop-web-{}-pr-12", short_hash("Shop.Web")));
        let long = environment_name(&"r".repeat(100), u64::MAX);
        assert!(is_dns1123_label(&long), "{long}");
        assert!(long.ends_with(&format!("-pr-{}", u64::MAX)));
        assert!(is_dns1123_label(&environment_name("acme/", 1)));
    }

    #[test]
    fn hosts() {
        assert_eq!(
            ingress_host(5, "Preview.Example.COM."),
            "pr-5.preview.example.com"
        );
        assert!(is_dns1123_subdomain(&ingress_host(
            5,
            "preview.example.com"
        )));
    }

    #[test]
    fn validators() {
        assert!(is_dns1123_label("a"));
        assert!(is_dns1123_label("0-a"));
        assert!(!is_dns1123_label(""));
        assert!(!is_dns1123_label("-a"));
        assert!(!is_dns1123_label("a-"));
        assert!(!is_dns1123_label("A"));
        assert!(!is_dns1123_label("a.b"));
        assert!(!is_dns1123_label(&"a".repeat(64)));
        assert!(is_dns1123_label(&"a".repeat(63)));
        assert!(is_dns1123_subdomain("a.b-c.d"));
        assert!(!is_dns1123_subdomain("a..b"));
        assert!(!is_dns1123_subdomain(".a"));
        assert!(!is_dns1123_subdomain(&"a".repeat(254)));
        let err = validate_dns1123_label("Ab").unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid name \"Ab\": character 'A' is not allowed (lower-case letters, digits and '-' only)"
        );
        assert_eq!(err.category(), "InvalidName");
    }
}
