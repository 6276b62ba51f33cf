//! PR commands: `/preview <verb> [argument]` in a pull-request comment.
//!
//! | command | effect |
//! |---|---|
//! | `/preview extend [duration]` | keep the environment until now + duration (default: its TTL), never past `maxLifespan` |
//! | `/preview sleep` | scale every workload to zero; namespace and data kept |
//! | `/preview wake` | restore the replicas of the spec |
//! | `/preview redeploy` | restart every workload |
//! | `/preview retry` | rebuild a failed environment with a fresh readiness deadline |
//! | `/preview delete` | delete the environment now |
//! | `/preview help`, anything else | the list of commands |
//!
//! Pure: parsing. The comment body is untrusted: only the first line that starts with
//! `/preview` is read, at most [`MAX_COMMAND_CHARS`] characters of it.
//!
//! Who may run commands is decided by the commenter's permission on the repository
//! ([`crate::permission`]), not by the comment's `author_association`. [`CommandPolicy`]
//! keeps the old association list only as an optional filter in front of that check: it
//! can refuse more, never allow anyone the permission check refuses.

use std::fmt;

use previewd_core::Ttl;

/// Longest command line read.
pub const MAX_COMMAND_CHARS: usize = 200;

/// The help text (Markdown).
pub const HELP: &str = "commands: `/preview extend [duration]` (e.g. `4h`), `/preview sleep`, \
`/preview wake`, `/preview redeploy`, `/preview retry`, `/preview delete`";

/// One PR command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// Keep the environment longer (`None`: by its TTL).
    Extend(Option<Ttl>),
    /// Scale to zero.
    Sleep,
    /// Restore the replicas.
    Wake,
    /// Restart every workload.
    Redeploy,
    /// Rebuild a failed environment.
    Retry,
    /// Delete now.
    Delete,
    /// Asked for help, or a command previewd does not know (the text says why).
    Help(String),
}

impl Command {
    /// Short word for logs, metrics and replies.
    pub const fn verb(&self) -> &'static str {
        match self {
            Command::Extend(_) => "extend",
            Command::Sleep => "sleep",
            Command::Wake => "wake",
            Command::Redeploy => "redeploy",
            Command::Retry => "retry",
            Command::Delete => "delete",
            Command::Help(_) => "help",
        }
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Command::Extend(Some(ttl)) => write!(f, "/preview extend {ttl}"),
            other => write!(f, "/preview {}", other.verb()),
        }
    }
}

/// The command in a comment body, if any line starts with `/preview`.
pub fn parse(body: &str) -> Option<Command> {
    let line = body
        .lines()
        .map(str::trim)
        .find(|l| l == &"/preview" || l.starts_with("/preview ") || l.starts_with("/preview\t"))?;
    let line: String = line.chars().take(MAX_COMMAND_CHARS).collect();
    let mut words = line.split_whitespace().skip(1);
    let verb = words.next().map(str::to_ascii_lowercase);
    let arg = words.next();
    let extra = words.next().is_some();
    let unknown = |why: String| Some(Command::Help(why));
    let no_arg = |cmd: Command| {
        if arg.is_some() {
            unknown(format!("`/preview {}` takes no argument", cmd.verb()))
        } else {
            Some(cmd)
        }
    };
    if extra {
        return unknown("too many arguments".into());
    }
    match verb.as_deref() {
        Some("extend") => match arg.map(str::parse::<Ttl>) {
            None => Some(Command::Extend(None)),
            Some(Ok(ttl)) => Some(Command::Extend(Some(ttl))),
            Some(Err(err)) => unknown(err.to_string()),
        },
        Some("sleep") => no_arg(Command::Sleep),
        Some("wake") => no_arg(Command::Wake),
        Some("redeploy") => no_arg(Command::Redeploy),
        Some("retry") => no_arg(Command::Retry),
        Some("delete") => no_arg(Command::Delete),
        Some("help") | None => unknown(String::new()),
        Some(other) => {
            let shown: String = other.chars().take(20).collect();
            unknown(format!("unknown command {shown:?}"))
        }
    }
}

/// A filter on commenters in front of the permission check (deprecated).
///
/// `author_association` does not say what someone may do (`COLLABORATOR` includes
/// read-only collaborators, `MEMBER` every organisation member) and arrives as
/// `CONTRIBUTOR` for members whose membership is private, so it never authorises a
/// command: the commenter's permission on the repository does
/// ([`crate::permission`]). A non-empty list only refuses, before any request to
/// GitHub, comments whose association it does not name. Default: empty, no filter.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CommandPolicy {
    /// Author associations (`OWNER`, `MEMBER`, `COLLABORATOR`, ...) whose comments go on
    /// to the permission check; compared case-insensitively. Empty: every comment does.
    pub allowed_associations: Vec<String>,
}

impl CommandPolicy {
    /// Whether a comment by a commenter with `association` goes on to the permission
    /// check (with an empty list, every one does).
    pub fn allows(&self, association: &str) -> bool {
        if self
            .allowed_associations
            .iter()
            .all(|a| a.trim().is_empty())
        {
            return true;
        }
        let association = association.trim();
        !association.is_empty()
            && self
                .allowed_associations
                .iter()
                .any(|a| a.trim().eq_ignore_ascii_case(association))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn commands_parse_from_the_first_command_line() {
        assert_eq!(parse("/preview sleep"), Some(Command::Sleep));
        assert_eq!(
            parse("LGTM\n  /preview   WAKE  \nthanks"),
            Some(Command::Wake)
        );
        assert_eq!(parse("/preview extend"), Some(Command::Extend(None)));
        assert_eq!(
            parse("/preview extend 4h"),
            Some(Command::Extend(Some("4h".parse().unwrap())))
        );
        assert_eq!(parse("/preview redeploy"), Some(Command::Redeploy));
        assert_eq!(parse("/preview retry"), Some(Command::Retry));
        assert_eq!(parse("/preview delete"), Some(Command::Delete));
        assert_eq!(parse("no command here /preview sleep"), None);
        assert_eq!(parse("/previewer sleep"), None);
        assert_eq!(parse(""), None);
    }

    #[test]
    fn unknown_and_malformed_commands_ask_for_help() {
        assert!(matches!(parse("/preview"), Some(Command::Help(_))));
        assert!(matches!(parse("/preview help"), Some(Command::Help(_))));
        let Some(Command::Help(why)) = parse("/preview destroy-everything") else {
            panic!()
        };
        assert!(why.contains("unknown command"));
        let Some(Command::Help(why)) = parse("/preview extend forever") else {
            panic!()
        };
        assert!(why.contains("invalid duration"), "{why}");
        assert!(matches!(
            parse("/preview sleep now"),
            Some(Command::Help(_))
        ));
        assert!(matches!(
            parse("/preview extend 1h 2h"),
            Some(Command::Help(_))
        ));
        let long = format!("/preview {}", "x".repeat(100_000));
        let Some(Command::Help(why)) = parse(&long) else {
            panic!()
        };
        assert!(
            why.len() < 100,
            "the reply never echoes much untrusted text"
        );
    }

    #[test]
    fn the_association_filter_is_off_by_default_and_only_narrows() {
        // Off: the permission check decides for everyone, private members included.
        let policy = CommandPolicy::default();
        for any in ["OWNER", "CONTRIBUTOR", "NONE", ""] {
            assert!(policy.allows(any), "{any}");
        }
        let listed = CommandPolicy {
            allowed_associations: vec!["OWNER".into(), "member".into()],
        };
        assert!(listed.allows("OWNER") && listed.allows("MEMBER"));
        for refused in ["COLLABORATOR", "CONTRIBUTOR", "NONE", ""] {
            assert!(!listed.allows(refused), "{refused}");
        }
    }
}

/// A reaction on the command's comment: how previewd acknowledges it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reaction {
    /// Accepted and recorded.
    Accepted,
    /// Refused (not a maintainer, permission unknown, fork policy, no environment).
    Refused,
    /// Not understood: help is on the sticky comment.
    Confused,
}

impl Reaction {
    /// The GitHub reactions API `content`.
    pub const fn content(self) -> &'static str {
        match self {
            Reaction::Accepted => "+1",
            Reaction::Refused => "-1",
            Reaction::Confused => "confused",
        }
    }
}

/// Acknowledges commands on GitHub (a reaction on the comment). Implementations must
/// not block: the webhook calls it from a background task.
#[async_trait::async_trait]
pub trait CommandResponder: Send + Sync {
    /// Adds `reaction` to comment `comment_id` of `repository` (`owner/name`).
    async fn react(&self, repository: &str, comment_id: u64, reaction: Reaction);
}

#[async_trait::async_trait]
impl CommandResponder for crate::client::GitHubClient {
    async fn react(&self, repository: &str, comment_id: u64, reaction: Reaction) {
        let Some(repo) = previewd_core::source_control::RepoRef::parse(repository) else {
            return;
        };
        if let Err(err) = self.react_to_comment(&repo, comment_id, reaction).await {
            tracing::warn!(repository, comment_id, error = %err, "could not react to a PR command");
        }
    }
}
