//! The store on disk is the owner's alone: a `data_dir` Tollgate creates is 0700, and the SQLite
//! database with its `-wal` and `-shm` files, the key files and the outbox messages are 0600.
//! Existing wider ones are reported at start (and left as they are).
#![cfg(unix)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use reqwest::StatusCode;
use serde_json::json;
use tollgate::config::Secret;

use crate::helpers::*;

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o777
}

/// An app whose `data_dir` (holding the SQLite database) is `data`.
async fn app_in(data: PathBuf) -> TestApp {
    let db = data.join("tollgate.db");
    TestApp::spawn_with(Opts::new(Db::Sqlite).edit(move |c| {
        c.data_dir = data;
        c.database_url = Secret::new(format!("sqlite://{}", db.display()));
    }))
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_data_dir_and_its_files_are_owner_only() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("fresh").join("data");
    let app = app_in(data.clone()).await;
    // Writes through the API (the WAL is in use), and an email into the outbox.
    let k = app.create_key(&app.owner_key, json!({"name": "w"})).await;
    assert!(k["key"].is_string());
    let res = app
        .post(
            "/v1/auth/signup",
            "",
            json!({"email": "modes@example.com", "password": "correct horse battery staple"}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    let outbox = data.join("outbox");
    let mailed = eventually(std::time::Duration::from_secs(10), || async {
        std::fs::read_dir(&outbox).is_ok_and(|mut d| d.next().is_some())
    })
    .await;
    assert!(mailed, "the verification email was written");

    for dir in [tmp.path().join("fresh"), data.clone(), data.join("outbox")] {
        assert_eq!(mode(&dir) & 0o077, 0, "{}: {:o}", dir.display(), mode(&dir));
    }
    let files = tollgate::store::sqlite_files(&data.join("tollgate.db"));
    for f in &files {
        assert!(f.exists(), "{} exists while the app runs", f.display());
    }
    let outbox: Vec<PathBuf> = std::fs::read_dir(data.join("outbox"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(outbox.len(), 1);
    for f in files
        .iter()
        .chain(&outbox)
        .chain([&data.join("signing.key")])
    {
        assert_eq!(mode(f) & 0o177, 0, "{}: {:o}", f.display(), mode(f));
    }
    if data.join("credentials.key").exists() {
        assert_eq!(mode(&data.join("credentials.key")) & 0o177, 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn existing_wider_modes_are_reported_and_left_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    let db = data.join("tollgate.db");
    std::fs::File::create(&db).unwrap();
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).unwrap();
    let app = app_in(data.clone()).await;
    let res = app.get("/v1/me", &app.owner_key).await;
    assert_eq!(res.status(), StatusCode::OK);
    // What the start-up warning reports: the folder, and the database whose -wal and -shm files
    // SQLite created with the database file's own mode.
    assert_eq!(tollgate::util::mode_wider_than(&data, 0o700), Some(0o755));
    for f in tollgate::store::sqlite_files(&db) {
        assert_eq!(
            tollgate::util::mode_wider_than(&f, 0o600),
            Some(0o644),
            "{}",
            f.display()
        );
    }
}
