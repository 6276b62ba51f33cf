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
