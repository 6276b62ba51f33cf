//! `previewd seed-data` as the data-seed Job runs it: the real binary, configuration from
//! the environment, a real PostgreSQL, the summary in the termination log and the exit code.
//!
//! Needs `PREVIEWD_PG_URL` (start one with `scripts/pg-up`); `PREVIEWD_SKIP_PG=1` skips.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::process::Command;
use std::str::FromStr;

use tokio_postgres::{Client, Config, NoTls};

fn pg_url() -> Option<String> {
    if std::env::var("PREVIEWD_SKIP_PG").is_ok_and(|v| v == "1") {
        eprintln!("PREVIEWD_SKIP_PG=1: skipping the seed-data tests");
        return None;
    }
    match std::env::var("PREVIEWD_PG_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => panic!(
            "PREVIEWD_PG_URL is not set: run `scripts/pg-up` and export the PREVIEWD_PG_URL=... \
             line it prints (or set PREVIEWD_SKIP_PG=1 to skip)"
        ),
    }
}

async fn connect(config: &Config) -> Client {
    let (client, conn) = config.connect(NoTls).await.expect("connect");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

struct Db {
    name: String,
    url: String,
    admin: Config,
    config: Config,
}

async fn create_db(label: &str, schema: &str) -> Option<Db> {
    let url = pg_url()?;
    let admin = Config::from_str(&url).unwrap();
    let name = format!("pvd_seedcmd_{label}_{}", std::process::id());
    let client = connect(&admin).await;
    client
        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .await
        .unwrap();
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap();
    let mut config = admin.clone();
    config.dbname(&name);
    connect(&config).await.batch_execute(schema).await.unwrap();
    let base = url.rsplit_once('/').map(|(b, _)| b).unwrap();
    Some(Db {
        url: format!("{base}/{name}"),
        name,
        admin,
        config,
    })
}

async fn drop_db(db: Db) {
    connect(&db.admin)
        .await
        .batch_execute(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", db.name))
        .await
        .unwrap();
}

fn seed_data(db: &Db, spec: &str, log: &std::path::Path) -> std::process::Output {
    std::fs::write(log, "").unwrap();
    Command::new(env!("CARGO_BIN_EXE_previewd"))
        .arg("seed-data")
        .env_remove("PREVIEWD_SEED_DATABASE_URL")
        .env("DATABASE_URL", &db.url)
        .env("PREVIEWD_SEED_SPEC", spec)
        .env("PREVIEWD_SEED_TERMINATION_LOG", log)
        .output()
        .expect("run previewd seed-data")
}

const SCHEMA: &str = "
CREATE TABLE teams (id serial PRIMARY KEY, name text NOT NULL, lead_id int);
CREATE TABLE people (
    id serial PRIMARY KEY,
    email text NOT NULL UNIQUE,
    team_id int NOT NULL REFERENCES teams,
    mentor_id int REFERENCES people
);
ALTER TABLE teams ADD FOREIGN KEY (lead_id) REFERENCES people;
";

#[tokio::test]
async fn seeds_and_reports_through_the_termination_log() {
    let Some(db) = create_db("ok", SCHEMA).await else {
        return;
    };
    let log = std::env::temp_dir().join(format!("{}.log", db.name));
    let out = seed_data(
        &db,
        r#"{"enabled":true,"strategy":"synthetic","counts":{"people":250},"defaultRows":12,"seed":3}"#,
        &log,
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("seeded 262 rows into 2 tables"), "{stdout}");
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&log).unwrap()).unwrap();
    assert_eq!(summary["tables"], 2);
    assert_eq!(summary["rows"], 262);
    assert!(summary["error"].is_null());
    assert!(summary["durationMs"].is_u64());
    let client = connect(&db.config).await;
    let people: i64 = client
        .query_one("SELECT count(*) FROM people", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(people, 250);
    // The nullable cycle teams.lead_id → people was filled in after loading.
    let leads: i64 = client
        .query_one("SELECT count(lead_id) FROM teams", &[])
        .await
        .unwrap()
        .get(0);
    assert!(leads > 0);

    // A second run finds the tables filled and changes nothing.
    let again = seed_data(
        &db,
        r#"{"enabled":true,"counts":{"people":250},"defaultRows":12,"seed":3}"#,
        &log,
    );
    assert!(again.status.success());
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&log).unwrap()).unwrap();
    assert_eq!(summary["rows"], 0);
    drop(client);
    let _ = std::fs::remove_file(&log);
    drop_db(db).await;
}

#[tokio::test]
async fn failures_exit_non_zero_with_the_reason_in_the_summary() {
    let Some(db) = create_db(
        "fail",
        "CREATE TABLE a (id int PRIMARY KEY, b_id int NOT NULL);
         CREATE TABLE b (id int PRIMARY KEY, a_id int NOT NULL REFERENCES a);
         ALTER TABLE a ADD FOREIGN KEY (b_id) REFERENCES b;",
    )
    .await
    else {
        return;
    };
    let log = std::env::temp_dir().join(format!("{}.log", db.name));
    let out = seed_data(&db, r#"{"enabled":true,"seed":1}"#, &log);
    assert!(!out.status.success());
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&log).unwrap()).unwrap();
    let error = summary["error"].as_str().unwrap();
    assert!(error.contains("required foreign-key cycle"), "{error}");
    assert_eq!(summary["rows"], 0);

    // A spec that is not JSON is refused the same way.
    let out = seed_data(&db, "counts: 5", &log);
    assert!(!out.status.success());
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&log).unwrap()).unwrap();
    assert!(
        summary["error"]
            .as_str()
            .unwrap()
            .contains("PREVIEWD_SEED_SPEC")
    );
    let _ = std::fs::remove_file(&log);
    drop_db(db).await;
}

/// The seed Job's whole model path: the real binary, given only the endpoint's URL and its
/// token, asks the operator's real endpoint (served here in-process, answering from a
/// script in place of the model), validates the answers, loads the data and reports the
/// proposals in its termination summary.
#[tokio::test]
async fn asks_the_operators_endpoint_and_reports_the_proposals() {
    use previewd_data::proposal::{ProposalError, ProposalSource, TableRequest};
    use previewd_operator::proposals::{ProposalState, serve_on};
    use std::sync::Arc;

    struct Script;
    #[async_trait::async_trait]
    impl ProposalSource for Script {
        fn name(&self) -> &str {
            "script"
        }
        async fn propose(&self, r: &TableRequest) -> Result<serde_json::Value, ProposalError> {
            Ok(match r.table.as_str() {
                "public.teams" => serde_json::json!({"values": {}, "insert":
                    "INSERT INTO teams (name) VALUES ('Payments'), ('Search'); DROP TABLE people"}),
                "public.regions" => serde_json::json!({"values": {}, "insert":
                    "INSERT INTO regions (code, name) VALUES ('eu', 'Europe'), ('us', 'Americas'), ('eu', 'Again')"}),
                _ => serde_json::json!({"values": {}, "insert": ""}),
            })
        }
    }

    let Some(db) = create_db(
        "proposals",
        "CREATE TABLE regions (code text PRIMARY KEY CHECK (char_length(code) = 2), name text NOT NULL);
         CREATE TABLE teams (id serial PRIMARY KEY, name text NOT NULL);
         CREATE TABLE people (id serial PRIMARY KEY, email text NOT NULL UNIQUE,
                              team_id int NOT NULL REFERENCES teams, region text REFERENCES regions);",
    )
    .await
    else {
        return;
    };
    let key = b"operator key".to_vec();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let stop = tokio_util::sync::CancellationToken::new();
    tokio::spawn(serve_on(
        listener,
        ProposalState::new(Arc::new(key.clone()), Arc::new(Script)),
        stop.clone(),
    ));
    let token = previewd_kube::strategy::seed::proposal_token(&key, "preview-shop-7");
    let log = std::env::temp_dir().join(format!("{}.log", db.name));
    std::fs::write(&log, "").unwrap();
    let (db_url, spec) = (
        db.url.clone(),
        r#"{"enabled":true,"aiModel":true,"counts":{"people":40},"defaultRows":5,"seed":1}"#,
    );
    let out = tokio::task::spawn_blocking({
        let log = log.clone();
        move || {
            Command::new(env!("CARGO_BIN_EXE_previewd"))
                .arg("seed-data")
                .env_remove("PREVIEWD_SEED_DATABASE_URL")
                .env("DATABASE_URL", db_url)
                .env("PREVIEWD_SEED_SPEC", spec)
                .env("PREVIEWD_SEED_TERMINATION_LOG", &log)
                .env("PREVIEWD_SEED_PROPOSALS_URL", url)
                .env("PREVIEWD_SEED_PROPOSALS_TOKEN", token)
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("model proposals from operator"), "{stdout}");
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&log).unwrap()).unwrap();
    let p = &summary["proposals"];
    assert_eq!(p["made"], 2, "{summary}");
    assert_eq!(p["passed"], 1, "{summary}");
    let rejected = p["rejected"].to_string();
    assert!(
        rejected.contains("2 statements (INSERT, DROP TABLE)"),
        "{rejected}"
    );
    assert!(rejected.contains("repeats the unique (code)"), "{rejected}");
    let client = connect(&db.config).await;
    let regions: Vec<String> = client
        .query("SELECT code FROM regions ORDER BY code", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(regions, ["eu", "us"], "the lookup rows that passed");
    let people: i64 = client
        .query_one("SELECT count(*) FROM people", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(people, 40, "the refused answer left the data loading");
    stop.cancel();
    drop(client);
    let _ = std::fs::remove_file(&log);
    drop_db(db).await;
}
