//! Snapshot downloads against real local servers: an HTTPS server (a CA and a serving
//! certificate made for the test, TLS by rustls) and a plain HTTP server, both on
//! 127.0.0.1. Each server records the requests it received, so a refused download can be
//! shown to have sent nothing where it must not.

#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use previewd_data::DataError;
use previewd_data::snapshot::{DownloadPolicy, SnapshotSource, download, verify_sha256};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;

/// What the server does for a path.
#[derive(Clone)]
enum Reply {
    /// 200 with this body and a Content-Length.
    Body(Vec<u8>),
    /// 200 with a Content-Length header that claims this many bytes, and a small body.
    Claims(u64),
    /// 200, chunked, this many bytes in 64 KiB chunks (no Content-Length).
    Chunked(usize),
    /// 302 to this location.
    Redirect(String),
    /// Headers, a few bytes, then nothing for a long time.
    Stall,
}

#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<String>>>);

impl Seen {
    fn requests(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}

struct Server {
    port: u16,
    seen: Seen,
}

async fn handle<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    routes: Arc<dyn Fn(&str) -> Reply + Send + Sync>,
    seen: Seen,
) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte).await {
            Ok(1) => head.push(byte[0]),
            _ => return,
        }
    }
    let text = String::from_utf8_lossy(&head).to_string();
    let path = text
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or("/")
        .to_string();
    seen.0.lock().unwrap().push(text);
    let out: Vec<u8> = match routes(&path) {
        Reply::Body(body) => {
            let mut out =
                format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", body.len()).into_bytes();
            out.extend(body);
            out
        }
        Reply::Claims(n) => {
            format!("HTTP/1.1 200 OK\r\ncontent-length: {n}\r\n\r\nshort").into_bytes()
        }
        Reply::Redirect(to) => {
            format!("HTTP/1.1 302 Found\r\nlocation: {to}\r\ncontent-length: 0\r\n\r\n")
                .into_bytes()
        }
        Reply::Chunked(total) => {
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
                .await;
            let chunk = vec![b'x'; 64 * 1024];
            let mut sent = 0;
            while sent < total {
                let n = chunk.len().min(total - sent);
                let mut piece = format!("{n:x}\r\n").into_bytes();
                piece.extend_from_slice(&chunk[..n]);
                piece.extend_from_slice(b"\r\n");
                if stream.write_all(&piece).await.is_err() {
                    return;
                }
                sent += n;
            }
            b"0\r\n\r\n".to_vec()
        }
        Reply::Stall => {
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nabc")
                .await;
            let _ = stream.flush().await;
            tokio::time::sleep(Duration::from_secs(30)).await;
            Vec::new()
        }
    };
    let _ = stream.write_all(&out).await;
    let _ = stream.shutdown().await;
}

async fn serve(
    tls: Option<tokio_rustls::TlsAcceptor>,
    routes: impl Fn(&str) -> Reply + Send + Sync + 'static,
) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Seen::default();
    let routes: Arc<dyn Fn(&str) -> Reply + Send + Sync> = Arc::new(routes);
    let s = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let routes = routes.clone();
            let seen = s.clone();
            let tls = tls.clone();
            tokio::spawn(async move {
                match tls {
                    Some(acceptor) => {
                        if let Ok(stream) = acceptor.accept(tcp).await {
                            handle(stream, routes, seen).await;
                        }
                    }
                    None => handle(tcp, routes, seen).await,
                }
            });
        }
    });
    Server { port, seen }
}

/// A CA, a serving certificate for 127.0.0.1 and localhost signed by it, and the acceptor.
fn tls() -> (tokio_rustls::TlsAcceptor, Vec<u8>) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "previewd test CA");
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()])
        .unwrap()
        .signed_by(&leaf_key, &ca)
        .unwrap();
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
        )
        .unwrap();
    (
        tokio_rustls::TlsAcceptor::from(Arc::new(config)),
        ca.pem().into_bytes(),
    )
}

fn policy(ca: &[u8]) -> DownloadPolicy {
    DownloadPolicy {
        extra_roots_pem: vec![ca.to_vec()],
        read_timeout: Duration::from_secs(2),
        total_timeout: Duration::from_secs(20),
        ..DownloadPolicy::default()
    }
}

fn snapshot_error(e: DataError) -> String {
    match e {
        DataError::Snapshot(m) => m,
        other => panic!("not a snapshot error: {other}"),
    }
}

#[tokio::test]
async fn an_https_dump_downloads_with_its_authorization_and_checksum() {
    let (acceptor, ca) = tls();
    let dump = b"COPY public.t (a) FROM stdin;\n1\n\\.\n".to_vec();
    let body = dump.clone();
    let server = serve(Some(acceptor), move |path| match path {
        "/old.sql" => Reply::Redirect("/dumps/app.sql".into()),
        _ => Reply::Body(body.clone()),
    })
    .await;
    let mut p = policy(&ca);
    p.authorization = Some("Bearer s3cret".into());
    let url = format!("https://127.0.0.1:{}/old.sql", server.port);
    assert!(matches!(
        SnapshotSource::parse(&url),
        Ok(SnapshotSource::Url(_))
    ));
    let file = download(&url, &p).await.expect("download");
    assert_eq!(std::fs::read(file.path()).unwrap(), dump);
    let requests = server.seen.requests();
    assert_eq!(requests.len(), 2, "a redirect on the same host is followed");
    assert!(requests[1].starts_with("GET /dumps/app.sql "));
    assert!(
        requests.iter().all(|r| r
            .to_ascii_lowercase()
            .contains("authorization: bearer s3cret")),
        "{requests:?}"
    );
    let digest: String = Sha256::digest(&dump)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    verify_sha256(file.path(), &digest).await.expect("checksum");
    verify_sha256(file.path(), &format!("sha256:{}", digest.to_uppercase()))
        .await
        .expect("prefixed, upper-case checksum");
    let wrong = "0".repeat(64);
    let err = snapshot_error(verify_sha256(file.path(), &wrong).await.unwrap_err());
    assert!(err.contains("checksum mismatch"), "{err}");
    let path = file.path().to_path_buf();
    drop(file);
    assert!(!path.exists(), "the temporary file is removed");
}

#[tokio::test]
async fn plain_http_is_refused_before_any_connection() {
    let server = serve(None, |_| Reply::Body(b"SELECT 1;".to_vec())).await;
    let url = format!("http://127.0.0.1:{}/app.sql", server.port);
    let err = snapshot_error(SnapshotSource::parse(&url).unwrap_err());
    assert!(err.contains("https only"), "{err}");
    let err = snapshot_error(
        download(&url, &DownloadPolicy::default())
            .await
            .unwrap_err(),
    );
    assert!(err.contains("https only"), "{err}");
    assert!(
        server.seen.requests().is_empty(),
        "nothing was sent over http"
    );
}

#[tokio::test]
async fn redirects_to_another_host_or_to_http_are_refused() {
    let (acceptor, ca) = tls();
    let elsewhere = serve(None, |_| Reply::Body(b"SELECT 1;".to_vec())).await;
    let (acceptor2, _) = tls();
    let other_tls = serve(Some(acceptor2), |_| Reply::Body(b"SELECT 1;".to_vec())).await;
    let http_port = elsewhere.port;
    let other_port = other_tls.port;
    let server = serve(Some(acceptor), move |path| match path {
        "/to-http" => Reply::Redirect(format!("http://127.0.0.1:{http_port}/app.sql")),
        "/to-other-host" => Reply::Redirect(format!("https://localhost:{other_port}/app.sql")),
        "/to-other-port" => Reply::Redirect(format!("https://127.0.0.1:{other_port}/app.sql")),
        "/loop" => Reply::Redirect("/loop".into()),
        _ => Reply::Body(b"SELECT 1;".to_vec()),
    })
    .await;
    let mut p = policy(&ca);
    p.authorization = Some("Bearer s3cret".into());
    for (path, expected) in [
        ("/to-http", "redirect to http://127.0.0.1 refused"),
        ("/to-other-host", "redirect to https://localhost refused"),
        ("/to-other-port", "redirect to https://127.0.0.1 refused"),
        ("/loop", "more than 3 redirects"),
    ] {
        let url = format!("https://127.0.0.1:{}{path}", server.port);
        let err = snapshot_error(download(&url, &p).await.unwrap_err());
        assert!(err.contains(expected), "{path}: {err}");
    }
    assert!(elsewhere.seen.requests().is_empty());
    assert!(
        other_tls.seen.requests().is_empty(),
        "the credentials never reached another host"
    );
}

#[tokio::test]
async fn oversized_dumps_are_refused_declared_or_not() {
    let (acceptor, ca) = tls();
    let server = serve(Some(acceptor), |path| match path {
        "/declared" => Reply::Claims(10 * 1024 * 1024),
        _ => Reply::Chunked(3 * 1024 * 1024),
    })
    .await;
    let mut p = policy(&ca);
    p.max_bytes = 1024 * 1024;
    let err = snapshot_error(
        download(&format!("https://127.0.0.1:{}/declared", server.port), &p)
            .await
            .unwrap_err(),
    );
    assert!(
        err.contains("download of 10485760 bytes refused: larger than 1048576"),
        "{err}"
    );
    let err = snapshot_error(
        download(&format!("https://127.0.0.1:{}/chunked", server.port), &p)
            .await
            .unwrap_err(),
    );
    assert!(
        err.contains("download larger than 1048576 bytes refused"),
        "{err}"
    );
}

#[tokio::test]
async fn a_stalled_download_times_out() {
    let (acceptor, ca) = tls();
    let server = serve(Some(acceptor), |_| Reply::Stall).await;
    let mut p = policy(&ca);
    p.read_timeout = Duration::from_millis(500);
    let err = snapshot_error(
        download(&format!("https://127.0.0.1:{}/slow.sql", server.port), &p)
            .await
            .unwrap_err(),
    );
    assert!(err.contains("timed out"), "{err}");
}

#[tokio::test]
async fn an_untrusted_certificate_is_refused() {
    let (acceptor, _ca) = tls();
    let (_, other_ca) = tls();
    let server = serve(Some(acceptor), |_| Reply::Body(b"SELECT 1;".to_vec())).await;
    let err = snapshot_error(
        download(
            &format!("https://127.0.0.1:{}/app.sql", server.port),
            &policy(&other_ca),
        )
        .await
        .unwrap_err(),
    );
    assert!(err.to_ascii_lowercase().contains("certificate"), "{err}");
    assert!(server.seen.requests().is_empty());
}

/// A real restore through the download path: a `pg_dump` of a seeded database served over
/// HTTPS with a bearer token, its checksum verified, restored into a fresh database with
/// identical contents; a wrong checksum refuses the restore before the database is touched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dump_served_over_https_restores_with_its_checksum() {
    use previewd_data::{SeedOptions, Strategy, TestDataSpec, seed};
    let schema = include_str!("schemas/tenants.sql");
    let Some(source) = common::TestDb::create("https_src").await else {
        return;
    };
    source.apply(schema).await;
    let spec = |strategy, seed_value| TestDataSpec {
        enabled: true,
        strategy,
        ai_model: None,
        counts: Default::default(),
        default_rows: Some(25),
        seed: Some(seed_value),
    };
    seed(
        &source.config,
        &spec(Strategy::Synthetic, 5),
        &SeedOptions::default(),
    )
    .await
    .unwrap();
    let out = std::process::Command::new("pg_dump")
        .args(["--data-only", "--format=plain"])
        .arg(&source.url)
        .output()
        .expect("pg_dump");
    assert!(out.status.success());
    let dump = out.stdout;
    let digest: String = Sha256::digest(&dump)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();

    let (acceptor, ca) = tls();
    let body = dump.clone();
    let server = serve(Some(acceptor), move |_| Reply::Body(body.clone())).await;
    let url = format!("https://127.0.0.1:{}/dumps/tenants.sql", server.port);
    let restore = |sha: String| SeedOptions {
        snapshot: Some(SnapshotSource::parse(&url).unwrap()),
        snapshot_policy: DownloadPolicy {
            authorization: Some("Bearer dump-reader".into()),
            sha256: Some(sha),
            ..policy(&ca)
        },
        ..SeedOptions::default()
    };

    let Some(refused) = common::TestDb::create("https_bad").await else {
        return;
    };
    refused.apply(schema).await;
    let err = seed(
        &refused.config,
        &spec(Strategy::ProductionSnapshot, 0),
        &restore("ab".repeat(32)),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("checksum mismatch"), "{err}");
    let counts = common::row_counts(&refused.client().await).await;
    assert!(
        counts.values().all(|n| *n == 0),
        "nothing restored: {counts:?}"
    );

    let Some(target) = common::TestDb::create("https_dst").await else {
        return;
    };
    target.apply(schema).await;
    let report = seed(
        &target.config,
        &spec(Strategy::ProductionSnapshot, 0),
        &restore(digest),
    )
    .await
    .unwrap();
    assert!(report.rows > 0);
    assert_eq!(
        common::table_hashes(&source.client().await).await,
        common::table_hashes(&target.client().await).await
    );
    assert!(server.seen.requests().iter().all(|r| {
        r.to_ascii_lowercase()
            .contains("authorization: bearer dump-reader")
    }));
    for db in [source, refused, target] {
        db.drop_db().await;
    }
}
