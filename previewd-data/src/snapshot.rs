//! The `production-snapshot` strategy: restore an anonymised dump that the platform team
//! provides as a file (mounted from a Secret or a volume) or an https URL. Never a live
//! database connection: `postgres://` sources are refused.
//!
//! Downloads are bounded ([`DownloadPolicy`]): https only (plain http is refused before
//! any connection), redirects followed only to the same scheme, host and port (at most
//! three), a connect timeout, a read timeout and a total timeout, and a size cap checked
//! against `Content-Length` before reading and against the bytes received while reading.
//! An optional `Authorization` header (from a Secret) is sent to that host only, and an
//! optional SHA-256 checksum is compared before anything is restored.
//!
//! Plain-format dumps (`pg_dump --format=plain`, usually `--data-only`) are executed by the
//! engine itself in one transaction, statements through the simple query protocol and
//! `COPY ... FROM stdin` blocks through COPY, so no PostgreSQL client tools are needed in
//! the image. Custom-format dumps (`PGDMP` header) are handed to `pg_restore`, which must be
//! on the PATH.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, pin_mut};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_postgres::Config;
use tokio_postgres::config::Host;

use crate::error::DataError;
use crate::load::connect;

/// Largest dump downloaded from a URL, by default.
pub const MAX_DOWNLOAD_BYTES: u64 = 4 * 1024 * 1024 * 1024;
/// Redirects followed (same host only).
pub const MAX_REDIRECTS: usize = 3;

/// Where the dump comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SnapshotSource {
    /// A file path.
    File(PathBuf),
    /// An https URL.
    Url(String),
}

/// How a dump is fetched and checked.
#[derive(Clone)]
pub struct DownloadPolicy {
    /// Largest download accepted.
    pub max_bytes: u64,
    /// Time to establish the connection.
    pub connect_timeout: Duration,
    /// Longest wait for the next bytes.
    pub read_timeout: Duration,
    /// Longest whole download.
    pub total_timeout: Duration,
    /// Value of the `Authorization` header (e.g. `Bearer ...`), sent to the dump's host
    /// only.
    pub authorization: Option<String>,
    /// Expected SHA-256 of the dump (hex); a mismatch refuses the restore.
    pub sha256: Option<String>,
    /// Extra trusted CA certificates (PEM) for the dump's host, besides the system's.
    pub extra_roots_pem: Vec<Vec<u8>>,
}

impl Default for DownloadPolicy {
    fn default() -> Self {
        DownloadPolicy {
            max_bytes: MAX_DOWNLOAD_BYTES,
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(60),
            total_timeout: Duration::from_secs(15 * 60),
            authorization: None,
            sha256: None,
            extra_roots_pem: Vec::new(),
        }
    }
}

impl std::fmt::Debug for DownloadPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DownloadPolicy")
            .field("max_bytes", &self.max_bytes)
            .field("connect_timeout", &self.connect_timeout)
            .field("read_timeout", &self.read_timeout)
            .field("total_timeout", &self.total_timeout)
            .field(
                "authorization",
                &self.authorization.as_ref().map(|_| "<redacted>"),
            )
            .field("sha256", &self.sha256)
            .field("extra_roots", &self.extra_roots_pem.len())
            .finish()
    }
}

impl SnapshotSource {
    /// Parses a path, `file://` path or https URL; refuses database URLs and plain http.
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
        if lower.starts_with("http://") {
            return Err(DataError::Snapshot(
                "snapshots are downloaded over https only; http:// is refused".into(),
            ));
        }
        if lower.starts_with("https://") {
            let url = reqwest::Url::parse(s)
                .map_err(|e| DataError::Snapshot(format!("snapshot URL: {e}")))?;
            if url.host_str().is_none_or(str::is_empty) {
                return Err(DataError::Snapshot("snapshot URL has no host".into()));
            }
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
    policy: &DownloadPolicy,
) -> Result<RestoreOutcome, DataError> {
    let (path, _guard) = match source {
        SnapshotSource::File(p) => (p.clone(), None),
        SnapshotSource::Url(url) => {
            let file = download(url, policy).await?;
            (file.path().to_path_buf(), Some(file))
        }
    };
    if let Some(expected) = &policy.sha256 {
        verify_sha256(&path, expected).await?;
    }
    let mut head = [0u8; 5];
    let n = {
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

/// A downloaded dump in a temporary file, removed when dropped.
#[derive(Debug)]
pub struct DownloadedDump(PathBuf);

impl DownloadedDump {
    /// Where the dump is.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for DownloadedDump {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn snapshot_err(context: &str, e: impl std::fmt::Display) -> DataError {
    DataError::Snapshot(format!("{context}: {e}"))
}

/// Compares the file's SHA-256 with the expected hex digest.
pub async fn verify_sha256(path: &Path, expected: &str) -> Result<(), DataError> {
    let expected = expected.trim().to_ascii_lowercase();
    let expected = expected.strip_prefix("sha256:").unwrap_or(&expected);
    if expected.len() != 64 || !expected.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(DataError::Snapshot(
            "the expected checksum is not a SHA-256 in hex".into(),
        ));
    }
    let mut f = tokio::fs::File::open(path)
        .await
        .map_err(|e| snapshot_err(&path.display().to_string(), e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = f
            .read(&mut buf)
            .await
            .map_err(|e| snapshot_err(&path.display().to_string(), e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    let actual: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    if actual != expected {
        return Err(DataError::Snapshot(format!(
            "checksum mismatch: the dump's SHA-256 is {actual}, {expected} was expected"
        )));
    }
    Ok(())
}

/// The download client: https only, redirects to the same origin only, bounded in time.
fn download_client(
    url: &reqwest::Url,
    policy: &DownloadPolicy,
) -> Result<reqwest::Client, DataError> {
    let origin = (
        url.host_str().unwrap_or_default().to_string(),
        url.port_or_known_default(),
    );
    let redirects = reqwest::redirect::Policy::custom(move |attempt| {
        let next = attempt.url();
        let same_origin = next.scheme() == "https"
            && next.host_str() == Some(origin.0.as_str())
            && next.port_or_known_default() == origin.1;
        if !same_origin {
            let to = format!(
                "{}://{}",
                next.scheme(),
                next.host_str().unwrap_or_default()
            );
            attempt.error(format!(
                "redirect to {to} refused: a snapshot is fetched from its own host only"
            ))
        } else if attempt.previous().len() > MAX_REDIRECTS {
            attempt.error(format!("more than {MAX_REDIRECTS} redirects"))
        } else {
            attempt.follow()
        }
    });
    let mut builder = reqwest::Client::builder()
        .redirect(redirects)
        .https_only(true)
        .connect_timeout(policy.connect_timeout)
        .read_timeout(policy.read_timeout)
        .timeout(policy.total_timeout);
    for pem in &policy.extra_roots_pem {
        let certs = reqwest::Certificate::from_pem_bundle(pem)
            .map_err(|e| snapshot_err("extra CA certificate", e))?;
        for cert in certs {
            builder = builder.add_root_certificate(cert);
        }
    }
    builder.build().map_err(|e| snapshot_err("http client", e))
}

/// Describes a reqwest error with its causes (reqwest's own text omits them).
fn describe(e: &reqwest::Error) -> String {
    use std::error::Error as _;
    let mut text = if e.is_timeout() {
        format!("timed out ({e})")
    } else {
        e.to_string()
    };
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(&format!(": {s}"));
        source = s.source();
    }
    text
}

/// Downloads a dump under `policy` into a temporary file.
pub async fn download(url: &str, policy: &DownloadPolicy) -> Result<DownloadedDump, DataError> {
    let parsed = reqwest::Url::parse(url).map_err(|e| snapshot_err("snapshot URL", e))?;
    if parsed.scheme() != "https" {
        return Err(DataError::Snapshot(
            "snapshots are downloaded over https only".into(),
        ));
    }
    let client = download_client(&parsed, policy)?;
    let mut request = client.get(parsed);
    if let Some(auth) = &policy.authorization {
        let mut value = reqwest::header::HeaderValue::from_str(auth).map_err(|_| {
            DataError::Snapshot("the Authorization value is not a valid header".into())
        })?;
        value.set_sensitive(true);
        request = request.header(reqwest::header::AUTHORIZATION, value);
    }
    let mut response = request
        .send()
        .await
        .map_err(|e| DataError::Snapshot(format!("download: {}", describe(&e))))?;
    let status = response.status();
    if !status.is_success() {
        return Err(DataError::Snapshot(format!(
            "download: the server answered {status}"
        )));
    }
    if let Some(length) = response.content_length()
        && length > policy.max_bytes
    {
        return Err(DataError::Snapshot(format!(
            "download of {length} bytes refused: larger than {} bytes",
            policy.max_bytes
        )));
    }
    let path = std::env::temp_dir().join(format!(
        "previewd-snapshot-{}-{}.dump",
        std::process::id(),
        DOWNLOADS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    let dump = DownloadedDump(path.clone());
    let mut file = tokio::fs::File::create(&path)
        .await
        .map_err(|e| snapshot_err(&path.display().to_string(), e))?;
    let mut total: u64 = 0;
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| DataError::Snapshot(format!("download: {}", describe(&e))))?
    {
        total += chunk.len() as u64;
        if total > policy.max_bytes {
            return Err(DataError::Snapshot(format!(
                "download larger than {} bytes refused",
                policy.max_bytes
            )));
        }
        file.write_all(&chunk)
            .await
            .map_err(|e| snapshot_err(&path.display().to_string(), e))?;
    }
    file.flush()
        .await
        .map_err(|e| snapshot_err(&path.display().to_string(), e))?;
    Ok(dump)
}

static DOWNLOADS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

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
        assert!(SnapshotSource::parse("http://dumps.internal/app.sql").is_err());
        assert!(SnapshotSource::parse("https://").is_err());
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
