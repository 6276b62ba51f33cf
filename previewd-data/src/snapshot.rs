//! The `production-snapshot` strategy: restore an anonymised dump that the platform team
//! provides as a file (mounted from a Secret or a volume) or an http(s) URL. Never a live
//! database connection: `postgres://` sources are refused.
//!
//! Plain-format dumps (`pg_dump --format=plain`, usually `--data-only`) are executed by the
//! engine itself in one transaction, statements through the simple query protocol and
//! `COPY ... FROM stdin` blocks through COPY, so no PostgreSQL client tools are needed in
//! the image. Custom-format dumps (`PGDMP` header) are handed to `pg_restore`, which must be
//! on the PATH.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures::{SinkExt, pin_mut};
use tokio::io::AsyncWriteExt;
use tokio_postgres::Config;
use tokio_postgres::config::Host;

use crate::error::DataError;
use crate::load::connect;

/// Largest dump downloaded from a URL.
pub const MAX_DOWNLOAD_BYTES: u64 = 4 * 1024 * 1024 * 1024;

/// Where the dump comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SnapshotSource {
    /// A file path.
    File(PathBuf),
    /// An http(s) URL.
    Url(String),
}

impl SnapshotSource {
    /// Parses a path, `file://` path or http(s) URL; refuses database URLs.
    pub fn parse(s: &str) -> Result<Self, DataError> {
        let s = s.trim();
        let lower = s.to_ascii_lowercase();
        if lower.starts_with("postgres://")
            || lower.starts_with("postgresql://")
            || lower.contains("host=")
        {
            return Err(DataError::Snapshot(
                "a snapshot is a dump file or URL, never a live database connection".into(),
            ));
        }
        if lower.starts_with("https://") || lower.starts_with("http://") {
            return Ok(SnapshotSource::Url(s.to_string()));
        }
        if let Some(path) = s.strip_prefix("file://") {
            return Ok(SnapshotSource::File(PathBuf::from(path)));
        }
        if s.is_empty() || s.contains("://") {
            return Err(DataError::Snapshot(format!(
                "unsupported snapshot source {s:?}"
            )));
        }
        Ok(SnapshotSource::File(PathBuf::from(s)))
    }
}

/// What a restore did.
#[derive(Debug, Clone, Default)]
pub struct RestoreOutcome {
    /// Statements executed (plain format).
    pub statements: u64,
    /// Rows copied (plain format).
    pub rows: u64,
    /// Tables that received COPY data (plain format).
    pub tables: u64,
}

/// Restores the dump into the database of `config`.
pub async fn restore(
    config: &Config,
    source: &SnapshotSource,
) -> Result<RestoreOutcome, DataError> {
    let (path, _guard) = match source {
        SnapshotSource::File(p) => (p.clone(), None),
        SnapshotSource::Url(url) => {
            let file = download(url).await?;
            (file.clone(), Some(TempFile(file)))
        }
    };
    let mut head = [0u8; 5];
    let n = {
        use tokio::io::AsyncReadExt;
        let mut f = tokio::fs::File::open(&path)
            .await
            .map_err(|e| DataError::Snapshot(format!("{}: {e}", path.display())))?;
        f.read(&mut head)
            .await
            .map_err(|e| DataError::Snapshot(format!("{}: {e}", path.display())))?
    };
    if n == 5 && &head == b"PGDMP" {
        pg_restore(config, &path).await?;
        return Ok(RestoreOutcome::default());
    }
    let text = tokio::fs::read_to_string(&path)
        .await
        .map_err(|e| DataError::Snapshot(format!("{}: {e}", path.display())))?;
    restore_plain(config, &text).await
}

struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

async fn download(url: &str) -> Result<PathBuf, DataError> {
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::limited(3))
        .build()
        .map_err(|e| DataError::Snapshot(format!("http client: {e}")))?;
    let mut response = client
        .get(url)
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .map_err(|e| DataError::Snapshot(format!("download: {e}")))?;
    let path = std::env::temp_dir().join(format!("previewd-snapshot-{}.dump", std::process::id()));
    let mut file = tokio::fs::File::create(&path)
        .await
        .map_err(|e| DataError::Snapshot(format!("{}: {e}", path.display())))?;
    let mut total: u64 = 0;
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| DataError::Snapshot(format!("download: {e}")))?
    {
        total += chunk.len() as u64;
        if total > MAX_DOWNLOAD_BYTES {
            let _ = std::fs::remove_file(&path);
            return Err(DataError::Snapshot(format!(
                "download larger than {MAX_DOWNLOAD_BYTES} bytes"
            )));
        }
        file.write_all(&chunk)
            .await
            .map_err(|e| DataError::Snapshot(format!("{}: {e}", path.display())))?;
    }
    file.flush()
        .await
        .map_err(|e| DataError::Snapshot(format!("{}: {e}", path.display())))?;
    Ok(path)
}

async fn pg_restore(config: &Config, path: &Path) -> Result<(), DataError> {
    let mut cmd = tokio::process::Command::new("pg_restore");
    cmd.arg("--no-owner")
        .arg("--no-privileges")
        .arg("--exit-on-error")
        .arg("--single-transaction")
        .arg(path);
    // Connection details go through libpq's environment, not the command line.
    if let Some(Host::Tcp(h)) = config.get_hosts().first() {
        cmd.env("PGHOST", h);
    }
    if let Some(p) = config.get_ports().first() {
        cmd.env("PGPORT", p.to_string());
    }
    if let Some(u) = config.get_user() {
        cmd.env("PGUSER", u);
    }
    if let Some(d) = config.get_dbname() {
        cmd.env("PGDATABASE", d);
    }
    if let Some(pw) = config.get_password() {
        cmd.env("PGPASSWORD", String::from_utf8_lossy(pw).into_owned());
    }
    let out = cmd.output().await.map_err(|e| {
        DataError::Snapshot(format!(
            "custom-format dumps need pg_restore on the PATH ({e}); provide a plain-format dump \
             (pg_dump --format=plain --data-only) instead"
        ))
    })?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Err(DataError::Snapshot(format!(
            "pg_restore failed: {}",
            stderr.chars().take(2000).collect::<String>()
        )));
    }
    Ok(())
}

/// One piece of a plain dump.
#[derive(Debug, PartialEq, Eq)]
enum Piece<'a> {
    Sql(&'a str),
    Copy { statement: &'a str, data: &'a str },
}

/// Splits a plain SQL dump into statements and COPY blocks, respecting quotes, dollar
/// quotes and comments.
fn split_plain(text: &str) -> Result<Vec<Piece<'_>>, DataError> {
    let mut pieces = Vec::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    let mut start = 0;
    while i < bytes.len() {
        match bytes[i] {
            // psql meta-commands at the start of a statement: pg_dump writes `\restrict KEY`
            // and `\unrestrict KEY` around plain dumps; they have no meaning to the server.
            b'\\' if (i == 0 || bytes[i - 1] == b'\n') && only_comments(&text[start..i]) => {
                let end = text[i..].find('\n').map_or(text.len(), |n| i + n);
                let command = text[i + 1..end].split_whitespace().next().unwrap_or("");
                if !matches!(command, "restrict" | "unrestrict") {
                    return Err(DataError::Snapshot(format!(
                        "psql meta-command \\{command} is not supported in a snapshot"
                    )));
                }
                i = end;
                start = end;
                continue;
            }
            b'-' if bytes.get(i + 1) == Some(&b'-') => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                let end = text[i + 2..]
                    .find("*/")
                    .ok_or_else(|| DataError::Snapshot("unterminated comment".into()))?;
                i += end + 4;
                continue;
            }
            b'\'' | b'"' => {
                let q = bytes[i];
                i += 1;
                while i < bytes.len() && bytes[i] != q {
                    i += 1;
                }
                i += 1;
                continue;
            }
            b'$' => {
                let tag_end = text[i + 1..].find('$').map(|e| i + 1 + e);
                match tag_end {
                    Some(e)
                        if text[i + 1..e]
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'_') =>
                    {
                        let tag = &text[i..=e];
                        let close = text[e + 1..].find(tag).ok_or_else(|| {
                            DataError::Snapshot("unterminated dollar quote".into())
                        })?;
                        i = e + 1 + close + tag.len();
                        continue;
                    }
                    _ => i += 1,
                }
            }
            b';' => {
                let statement = text[start..=i].trim();
                i += 1;
                if is_copy_from_stdin(statement) {
                    // Data starts on the next line and ends with a line `\.`.
                    let data_start = text[i..].find('\n').map_or(text.len(), |n| i + n + 1);
                    let end = text[data_start..]
                        .match_indices("\\.")
                        .map(|(p, _)| data_start + p)
                        .find(|p| {
                            (*p == data_start || bytes[p - 1] == b'\n')
                                && matches!(bytes.get(p + 2), None | Some(b'\n') | Some(b'\r'))
                        })
                        .ok_or_else(|| {
                            DataError::Snapshot("COPY data without a terminating \\.".into())
                        })?;
                    pieces.push(Piece::Copy {
                        statement,
                        data: &text[data_start..end],
                    });
                    i = end + 2;
                } else if !statement.trim_matches(';').trim().is_empty() {
                    pieces.push(Piece::Sql(statement));
                }
                start = i;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    let rest = text[start.min(text.len())..].trim();
    if !rest.is_empty()
        && !rest
            .lines()
            .all(|l| l.trim().is_empty() || l.trim_start().starts_with("--"))
    {
        pieces.push(Piece::Sql(rest));
    }
    Ok(pieces)
}

fn only_comments(s: &str) -> bool {
    s.lines()
        .all(|l| l.trim().is_empty() || l.trim_start().starts_with("--"))
}

fn is_copy_from_stdin(statement: &str) -> bool {
    let s = statement
        .lines()
        .filter(|l| !l.trim_start().starts_with("--"))
        .collect::<Vec<_>>()
        .join(" ");
    let upper = s.trim().to_ascii_uppercase();
    upper.starts_with("COPY ")
        && upper
            .trim_end_matches(';')
            .trim_end()
            .ends_with("FROM STDIN")
}

async fn restore_plain(config: &Config, text: &str) -> Result<RestoreOutcome, DataError> {
    let pieces = split_plain(text)?;
    let mut client = connect(config).await?;
    let tx = client.transaction().await?;
    let mut outcome = RestoreOutcome::default();
    for piece in pieces {
        match piece {
            Piece::Sql(sql) => {
                tx.batch_execute(sql).await?;
                outcome.statements += 1;
            }
            Piece::Copy { statement, data } => {
                let sink = tx
                    .copy_in::<_, Bytes>(statement.trim_end_matches(';'))
                    .await?;
                pin_mut!(sink);
                sink.send(Bytes::copy_from_slice(data.as_bytes())).await?;
                outcome.rows += sink.as_mut().finish().await?;
                outcome.tables += 1;
            }
        }
    }
    tx.commit().await?;
    Ok(outcome)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn live_databases_are_refused() {
        assert!(SnapshotSource::parse("postgres://prod:5432/app").is_err());
        assert!(SnapshotSource::parse("postgresql://x").is_err());
        assert!(SnapshotSource::parse("host=prod dbname=app").is_err());
        assert!(SnapshotSource::parse("ftp://x/y").is_err());
        assert_eq!(
            SnapshotSource::parse("/snap/app.sql").unwrap(),
            SnapshotSource::File("/snap/app.sql".into())
        );
        assert_eq!(
            SnapshotSource::parse("https://dumps.internal/app.sql").unwrap(),
            SnapshotSource::Url("https://dumps.internal/app.sql".into())
        );
    }

    #[test]
    fn plain_dumps_split_into_statements_and_copy_blocks() {
        let dump = "--\n-- dump\n\\restrict abc\n-- header; with a semicolon\nSET x = 'a;b';\nSELECT $f$;$f$;\n\
                    COPY public.t (a, b) FROM stdin;\n1\tx;y\n2\t\\N\n\\.\n\n\
                    SELECT pg_catalog.setval('s', 2, true);\n\\unrestrict abc\n";
        let pieces = split_plain(dump).unwrap();
        assert_eq!(
            pieces,
            vec![
                Piece::Sql("-- header; with a semicolon\nSET x = 'a;b';"),
                Piece::Sql("SELECT $f$;$f$;"),
                Piece::Copy {
                    statement: "COPY public.t (a, b) FROM stdin;",
                    data: "1\tx;y\n2\t\\N\n"
                },
                Piece::Sql("SELECT pg_catalog.setval('s', 2, true);"),
            ]
        );
    }
}
