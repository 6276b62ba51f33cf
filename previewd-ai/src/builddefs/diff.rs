//! Unified diffs split into per-file patches.
//!
//! Two sources produce the same [`ChangeDiff`]: the text of `git diff` (or GitHub's
//! `application/vnd.github.diff`), and GitHub's per-file list, whose `patch` fields hold the
//! hunks without the `diff --git` headers. A hunk whose body is shorter than its header
//! announces, a `Binary files ... differ` entry or a file without a patch leave that file's
//! patch unknown, and the rules fall back to path matching for it.

use previewd_core::source_control::{ChangedFiles, FileChangeKind};

/// One line of a hunk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DiffLine {
    /// Present on both sides.
    Context(String),
    /// Only on the old side.
    Removed(String),
    /// Only on the new side.
    Added(String),
}

/// One hunk: `@@ -old_start,.. +new_start,.. @@ section`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Hunk {
    /// First line number on the old side (1-based; 0 for an empty side).
    pub old_start: usize,
    /// First line number on the new side.
    pub new_start: usize,
    /// The text after the second `@@`: git's "function context", for YAML the last
    /// top-level line above the hunk (e.g. `services:`).
    pub section: String,
    /// The body.
    pub lines: Vec<DiffLine>,
}

impl Hunk {
    /// The visible lines of one side, in order, with the index of each changed line.
    pub fn side(&self, new: bool) -> Vec<(&str, bool)> {
        self.lines
            .iter()
            .filter_map(|l| match l {
                DiffLine::Context(t) => Some((t.as_str(), false)),
                DiffLine::Removed(t) if !new => Some((t.as_str(), true)),
                DiffLine::Added(t) if new => Some((t.as_str(), true)),
                _ => None,
            })
            .collect()
    }
}

/// How a file changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileStatus {
    /// New file.
    Added,
    /// Deleted file.
    Deleted,
    /// Content or mode changed.
    Modified,
    /// Renamed (possibly with changes); `previous_path` holds the old name.
    Renamed,
}

/// The diff of one file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileDiff {
    /// Path after the change (the old path for a deletion).
    pub path: String,
    /// Path before a rename.
    pub previous_path: Option<String>,
    /// How the file changed.
    pub status: FileStatus,
    /// The hunks; `None` when unknown (binary, too large, cut off).
    pub hunks: Option<Vec<Hunk>>,
}

/// A change as per-file patches.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChangeDiff {
    /// Files, in diff order.
    pub files: Vec<FileDiff>,
    /// The diff is known to be cut short: files after the cut are absent.
    pub truncated: bool,
}

impl ChangeDiff {
    /// The diff of `path` (new or previous name).
    pub fn file(&self, path: &str) -> Option<&FileDiff> {
        self.files
            .iter()
            .find(|f| f.path == path || f.previous_path.as_deref() == Some(path))
    }

    /// Parses the text of a unified `git diff`. A line starting with `# [diff truncated`
    /// (the marker of cut diffs), or a hunk shorter than announced, marks the diff
    /// truncated; the file being cut keeps no patch.
    pub fn from_unified(text: &str) -> ChangeDiff {
        let mut out = ChangeDiff::default();
        let mut lines = text.lines().peekable();
        let mut current: Option<FileDiff> = None;
        // whether the current file has git's extended header lines (index, mode, rename,
        // binary): a header without them and without hunks carries no patch at all, as
        // when a per-file list had none for the file
        let mut extended = false;
        while let Some(line) = lines.next() {
            if let Some(rest) = line.strip_prefix("diff --git ") {
                if let Some(f) = current.take() {
                    out.files.push(finish(f, extended));
                }
                extended = false;
                let (a, b) = header_paths(rest);
                current = Some(FileDiff {
                    path: b.clone(),
                    previous_path: (a != b).then_some(a),
                    status: FileStatus::Modified,
                    hunks: Some(Vec::new()),
                });
                continue;
            }
            if line.starts_with("# [diff truncated") {
                out.truncated = true;
                if let Some(mut f) = current.take() {
                    f.hunks = None;
                    out.files.push(f);
                }
                break;
            }
            let Some(file) = current.as_mut() else {
                continue;
            };
            if [
                "index ",
                "old mode",
                "new mode",
                "new file mode",
                "deleted file mode",
                "similarity index",
                "dissimilarity index",
                "rename from",
                "rename to",
                "copy from",
                "copy to",
                "Binary files",
                "GIT binary patch",
            ]
            .iter()
            .any(|p| line.starts_with(p))
            {
                extended = true;
            }
            if line.starts_with("new file mode") {
                file.status = FileStatus::Added;
            } else if line.starts_with("deleted file mode") {
                file.status = FileStatus::Deleted;
            } else if let Some(p) = line.strip_prefix("rename from ") {
                file.previous_path = Some(unquote(p));
                file.status = FileStatus::Renamed;
            } else if let Some(p) = line.strip_prefix("rename to ") {
                file.path = unquote(p);
                file.status = FileStatus::Renamed;
            } else if line.starts_with("Binary files ") || line.starts_with("GIT binary patch") {
                file.hunks = None;
            } else if let Some(p) = line.strip_prefix("--- ") {
                if p != "/dev/null" {
                    let p = unquote(p);
                    let p = p.strip_prefix("a/").unwrap_or(&p).to_owned();
                    if file.status != FileStatus::Renamed {
                        file.previous_path = (p != file.path).then_some(p);
                    }
                }
            } else if let Some(p) = line.strip_prefix("+++ ") {
                if p == "/dev/null" {
                    file.status = FileStatus::Deleted;
                    if let Some(prev) = file.previous_path.take() {
                        file.path = prev;
                    }
                } else {
                    let p = unquote(p);
                    file.path = p.strip_prefix("b/").unwrap_or(&p).to_owned();
                }
            } else if line.starts_with("@@") {
                match read_hunk(line, &mut lines) {
                    Some(h) => {
                        if let Some(hunks) = file.hunks.as_mut() {
                            hunks.push(h);
                        }
                    }
                    None => {
                        file.hunks = None;
                        out.truncated = true;
                    }
                }
            }
        }
        if let Some(f) = current.take() {
            out.files.push(finish(f, extended));
        }
        for f in &mut out.files {
            if f.previous_path.is_some() && f.status == FileStatus::Modified {
                f.status = FileStatus::Renamed;
            }
        }
        out
    }

    /// Builds the diff from a per-file list (GitHub's "list pull request files"), whose
    /// patches are hunks without headers. `incomplete` lists are marked truncated.
    pub fn from_changed_files(files: &ChangedFiles) -> ChangeDiff {
        let mut out = ChangeDiff {
            files: Vec::with_capacity(files.files.len()),
            truncated: files.incomplete,
        };
        for f in &files.files {
            let status = match f.kind {
                FileChangeKind::Added | FileChangeKind::Copied => FileStatus::Added,
                FileChangeKind::Removed => FileStatus::Deleted,
                FileChangeKind::Renamed => FileStatus::Renamed,
                _ => FileStatus::Modified,
            };
            let hunks = f.patch.as_deref().and_then(parse_hunks);
            out.files.push(FileDiff {
                path: f.path.clone(),
                previous_path: f.previous_path.clone(),
                status,
                hunks,
            });
        }
        out
    }
}

/// A file without hunks and without extended headers has no known patch.
fn finish(mut f: FileDiff, extended: bool) -> FileDiff {
    if !extended && f.hunks.as_ref().is_some_and(Vec::is_empty) {
        f.hunks = None;
    }
    f
}

/// Parses bare hunks (a GitHub `patch` field); `None` when a hunk is cut short.
pub fn parse_hunks(patch: &str) -> Option<Vec<Hunk>> {
    let mut lines = patch.lines().peekable();
    let mut hunks = Vec::new();
    while let Some(line) = lines.next() {
        if line.starts_with("@@") {
            hunks.push(read_hunk(line, &mut lines)?);
        }
    }
    Some(hunks)
}

/// Reads the body of the hunk whose header is `header`; `None` when the body is shorter
/// than the header announces.
fn read_hunk<'a, I: Iterator<Item = &'a str>>(
    header: &str,
    lines: &mut std::iter::Peekable<I>,
) -> Option<Hunk> {
    let (old_start, mut old_left, new_start, mut new_left, section) = parse_header(header)?;
    let mut hunk = Hunk {
        old_start,
        new_start,
        section,
        lines: Vec::new(),
    };
    while old_left > 0 || new_left > 0 {
        let line = lines.next()?;
        if let Some(t) = line.strip_prefix('+') {
            new_left = new_left.checked_sub(1)?;
            hunk.lines.push(DiffLine::Added(t.to_owned()));
        } else if let Some(t) = line.strip_prefix('-') {
            old_left = old_left.checked_sub(1)?;
            hunk.lines.push(DiffLine::Removed(t.to_owned()));
        } else if line.starts_with('\\') {
            // "\ No newline at end of file"
        } else {
            // a context line; git writes " text", some tools drop the space of empty lines
            let t = line.strip_prefix(' ').unwrap_or(line);
            old_left = old_left.checked_sub(1)?;
            new_left = new_left.checked_sub(1)?;
            hunk.lines.push(DiffLine::Context(t.to_owned()));
        }
    }
    // a trailing "\ No newline" marker belongs to this hunk
    while lines.peek().is_some_and(|l| l.starts_with('\\')) {
        lines.next();
    }
    Some(hunk)
}

/// `@@ -a,b +c,d @@ section` → (a, b, c, d, section).
fn parse_header(header: &str) -> Option<(usize, usize, usize, usize, String)> {
    let rest = header.strip_prefix("@@ ")?;
    let (ranges, section) = rest.split_once(" @@").unwrap_or((rest, ""));
    let mut parts = ranges.split_whitespace();
    let old = parts.next()?.strip_prefix('-')?;
    let new = parts.next()?.strip_prefix('+')?;
    let range = |r: &str| -> Option<(usize, usize)> {
        match r.split_once(',') {
            Some((s, n)) => Some((s.parse().ok()?, n.parse().ok()?)),
            None => Some((r.parse().ok()?, 1)),
        }
    };
    let (a, b) = range(old)?;
    let (c, d) = range(new)?;
    Some((a, b, c, d, section.trim().to_owned()))
}

/// Paths of `a/x b/y` (without prefixes); paths with spaces split at ` b/`.
fn header_paths(rest: &str) -> (String, String) {
    let rest = rest.trim_end();
    if rest.starts_with('"') {
        // quoted paths: "a/x y" "b/x y"
        let parts: Vec<&str> = rest.split('"').filter(|s| !s.trim().is_empty()).collect();
        if parts.len() == 2 {
            let a = parts[0].strip_prefix("a/").unwrap_or(parts[0]).to_owned();
            let b = parts[1].strip_prefix("b/").unwrap_or(parts[1]).to_owned();
            return (a, b);
        }
    }
    match rest.split_once(" b/") {
        Some((a, b)) => (a.strip_prefix("a/").unwrap_or(a).to_owned(), b.to_owned()),
        None => (rest.to_owned(), rest.to_owned()),
    }
}

fn unquote(p: &str) -> String {
    let p = p.trim_end_matches('\t').trim();
    match p.strip_prefix('"').and_then(|s| s.strip_suffix('"')) {
        Some(inner) => inner.replace("\\\"", "\"").replace("\\\\", "\\"),
        None => p.to_owned(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use previewd_core::source_control::ChangedFile;

    const DIFF: &str = "\
diff --git a/docker-compose.yml b/docker-compose.yml
index 1111111..2222222 100644
--- a/docker-compose.yml
+++ b/docker-compose.yml
@@ -3,4 +3,4 @@ services:
   api:
     build:
       context: ./api
-      target: dev
+      target: prod
diff --git a/old/a.txt b/new/a.txt
similarity index 100%
rename from old/a.txt
rename to new/a.txt
diff --git a/gone.txt b/gone.txt
deleted file mode 100644
index 3333333..0000000
--- a/gone.txt
+++ /dev/null
@@ -1 +0,0 @@
-bye
diff --git a/logo.png b/logo.png
Binary files a/logo.png and b/logo.png differ
";

    #[test]
    fn parses_files_hunks_renames_and_deletions() {
        let d = ChangeDiff::from_unified(DIFF);
        assert!(!d.truncated);
        assert_eq!(d.files.len(), 4);
        let compose = &d.files[0];
        assert_eq!(compose.path, "docker-compose.yml");
        assert_eq!(compose.status, FileStatus::Modified);
        let hunks = compose.hunks.as_ref().unwrap();
        assert_eq!(hunks[0].section, "services:");
        assert_eq!(hunks[0].old_start, 3);
        assert_eq!(
            hunks[0].lines[3],
            DiffLine::Removed("      target: dev".to_owned())
        );
        assert_eq!(
            hunks[0].side(true).last().unwrap(),
            &("      target: prod", true)
        );
        let renamed = &d.files[1];
        assert_eq!(renamed.status, FileStatus::Renamed);
        assert_eq!(renamed.previous_path.as_deref(), Some("old/a.txt"));
        assert_eq!(renamed.path, "new/a.txt");
        assert_eq!(d.files[2].status, FileStatus::Deleted);
        assert_eq!(d.files[2].path, "gone.txt");
        assert!(d.files[3].hunks.is_none(), "binary files have no patch");
        assert!(d.file("old/a.txt").is_some());
    }

    #[test]
    fn a_cut_diff_is_truncated_and_the_cut_file_has_no_patch() {
        let cut = "diff --git a/.env b/.env\n--- a/.env\n+++ b/.env\n@@ -1,3 +1,3 @@\n A=1\n-B=2\n";
        let d = ChangeDiff::from_unified(cut);
        assert!(d.truncated);
        assert!(d.files[0].hunks.is_none());
        let marked = format!("{DIFF}# [diff truncated: 40000 bytes]\n");
        assert!(ChangeDiff::from_unified(&marked).truncated);
    }

    #[test]
    fn a_header_without_a_patch_is_unknown_but_a_pure_rename_is_empty() {
        // what PullRequestDiff::Files(..).to_text() writes for a file GitHub sent no
        // patch for, followed by a pure rename
        let d = ChangeDiff::from_unified(
            "diff --git a/compose.yaml b/compose.yaml\ndiff --git a/a.txt b/b.txt\nsimilarity index 100%\nrename from a.txt\nrename to b.txt\n",
        );
        assert!(d.files[0].hunks.is_none());
        assert_eq!(d.files[1].hunks.as_deref(), Some(&[][..]));
        assert_eq!(d.files[1].status, FileStatus::Renamed);
    }

    #[test]
    fn github_file_lists_become_diffs() {
        let files = ChangedFiles {
            files: vec![ChangedFile {
                path: ".env".to_owned(),
                previous_path: None,
                kind: FileChangeKind::Modified,
                additions: 1,
                deletions: 1,
                patch: Some("@@ -1,2 +1,2 @@\n A=1\n-B=2\n+B=3".to_owned()),
            }],
            incomplete: true,
        };
        let d = ChangeDiff::from_changed_files(&files);
        assert!(d.truncated);
        assert_eq!(d.files[0].hunks.as_ref().unwrap()[0].lines.len(), 3);
    }
}
