//! The embedded store: concurrency, the change feed across processes, durability, keys at rest.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kube::api::ObjectMeta;
use kube::runtime::watcher::Event;
use rsgo::Error;
use rsgo::model::{Environment, Stack, StackSpec, StackStatus};
use rsgo::store::{SqliteStore, Store, Write, encode};
use tempfile::TempDir;

use crate::support::{Server, curl, rsgo_ok, unique};

fn stack(name: &str) -> Stack {
    Stack {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some("local".into()),
            ..Default::default()
        },
        spec: StackSpec {
            environment: "local".into(),
            product: "shop".into(),
            stack: None,
            version: Some("1.0.0".into()),
            variables: Default::default(),
            variables_from: Default::default(),
        },
        status: None,
    }
}

/// Many writers at once share commits, yet every batch stays all-or-nothing: a batch that fails
/// (its second object exists already) leaves no trace, and the batches beside it all land.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_batches_commit_together_and_fail_alone() {
    let dir = TempDir::new().unwrap();
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(dir.path()).unwrap());
    store.create(&stack("taken")).await.unwrap();
    let writers = (0..200).map(|n| {
        let store = store.clone();
        tokio::spawn(async move {
            let second = if n % 3 == 0 {
                "taken".to_owned()
            } else {
                format!("b-{n}")
            };
            let batch = vec![
                Write::Create(encode(&stack(&format!("a-{n}"))).unwrap()),
                Write::Create(encode(&stack(&second)).unwrap()),
            ];
            (n, store.write(batch).await)
        })
    });
    let results = futures::future::join_all(writers).await;
    let mut revisions = std::collections::BTreeSet::new();
    for result in results {
        let (n, outcome) = result.unwrap();
        let first = store
            .get::<Stack>("local", &format!("a-{n}"))
            .await
            .unwrap();
        if n % 3 == 0 {
            assert!(
                matches!(outcome, Err(Error::AlreadyExists { .. })),
                "batch {n}: {outcome:?}"
            );
            assert!(
                first.is_none(),
                "batch {n} failed, yet its first object was stored"
            );
        } else {
            let stored = outcome.unwrap();
            assert_eq!(stored.len(), 2);
            assert!(first.is_some(), "batch {n} was acknowledged but is missing");
            for object in stored {
                revisions.insert(object["metadata"]["resourceVersion"].to_string());
            }
        }
    }
    assert_eq!(
        revisions.len(),
        2 * (200 - 67),
        "every stored object has its own revision"
    );
    assert_eq!(
        store.list::<Stack>(None).await.unwrap().len(),
        1 + 2 * (200 - 67)
    );
}

/// A database from before labels were indexed gets its index on first open, and labelled
/// listings find exactly the objects carrying the label, also after relabelling and deletion.
#[tokio::test]
async fn labelled_listings_use_an_index_built_for_older_databases_too() {
    let dir = TempDir::new().unwrap();
    {
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(dir.path()).unwrap());
        for (name, team) in [("a", "red"), ("b", "blue"), ("c", "red")] {
            let mut labelled = stack(name);
            labelled.metadata.labels = Some([("team".to_owned(), team.to_owned())].into());
            store.create(&labelled).await.unwrap();
        }
    }
    // As an older rsgo left it: no label index, schema version 0.
    let db = rusqlite::Connection::open(dir.path().join("rsgo.db")).unwrap();
    db.execute_batch("DROP TABLE labels; PRAGMA user_version = 0;")
        .unwrap();
    drop(db);
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(dir.path()).unwrap());
    let names = |stacks: Vec<Stack>| -> Vec<String> {
        stacks
            .into_iter()
            .map(|s| s.metadata.name.unwrap())
            .collect()
    };
    let red = store
        .list_labelled::<Stack>("local", "team", "red")
        .await
        .unwrap();
    assert_eq!(names(red), ["a", "c"]);
    let mut moved = store.require::<Stack>("local", "c").await.unwrap();
    moved.metadata.labels = Some([("team".to_owned(), "blue".to_owned())].into());
    store.update(&moved).await.unwrap();
    store.delete::<Stack>("local", "b").await.unwrap();
    let blue = store
        .list_labelled::<Stack>("local", "team", "blue")
        .await
        .unwrap();
    assert_eq!(names(blue), ["c"]);
    let red = store
        .list_labelled::<Stack>("local", "team", "red")
        .await
        .unwrap();
    assert_eq!(names(red), ["a"]);
}

/// The change log is read a page at a time, and a watch lists everything through pages before
/// it says the listing is done.
#[tokio::test]
async fn the_change_log_and_the_watch_read_in_pages() {
    let dir = TempDir::new().unwrap();
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(dir.path()).unwrap());
    let writes: Vec<Write> = (0..600)
        .map(|n| Write::Create(encode(&stack(&format!("s{n}"))).unwrap()))
        .collect();
    store.write(writes).await.unwrap();
    let mut since = 0;
    let mut pages = Vec::new();
    loop {
        let page = store
            .changes_raw("Stack".into(), since, 256)
            .await
            .unwrap()
            .expect("SQLite keeps a change log");
        assert!(page.revision > since);
        pages.push(page.changes.len());
        since = page.revision;
        if page.changes.len() < 256 {
            break;
        }
    }
    assert_eq!(pages, [256, 256, 88]);
    let events: Vec<_> = store
        .clone()
        .watch::<Stack>()
        .take(602)
        .map(Result::unwrap)
        .collect()
        .await;
    assert!(matches!(events[0], Event::Init));
    assert!(
        events[1..601]
            .iter()
            .all(|e| matches!(e, Event::InitApply(_)))
    );
    assert!(matches!(events[601], Event::InitDone));
}

#[tokio::test]
async fn stale_writes_conflict_and_generation_follows_the_spec() {
    let dir = TempDir::new().unwrap();
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(dir.path()).unwrap());
    let created = store.create(&stack("a")).await.unwrap();
    assert_eq!(created.metadata.generation, Some(1));
    assert!(matches!(
        store.create(&stack("a")).await,
        Err(Error::AlreadyExists { .. })
    ));

    let mut status_only = created.clone();
    status_only.status = Some(StackStatus {
        message: Some("hello".into()),
        ..Default::default()
    });
    let after_status = store.update_status(&status_only).await.unwrap();
    assert_eq!(
        after_status.metadata.generation,
        Some(1),
        "status writes leave the generation alone"
    );
    assert_ne!(
        after_status.metadata.resource_version,
        created.metadata.resource_version
    );

    let mut stale = created.clone();
    stale.spec.version = Some("2.0.0".into());
    assert!(matches!(
        store.update(&stale).await,
        Err(Error::Conflict { .. })
    ));

    let mut fresh = after_status.clone();
    fresh.spec.version = Some("2.0.0".into());
    let updated = store.update(&fresh).await.unwrap();
    assert_eq!(updated.metadata.generation, Some(2));
    assert_eq!(
        updated.status.unwrap().message.as_deref(),
        Some("hello"),
        "spec writes keep the status"
    );

    let mut annotated = store.require::<Stack>("local", "a").await.unwrap();
    annotated.metadata.annotations = Some([("x".to_string(), "y".to_string())].into());
    assert_eq!(
        store.update(&annotated).await.unwrap().metadata.generation,
        Some(2)
    );
}

/// A read served from the store's cache of decoded objects is never older than what the process
/// knows: a write by another process (here a second store on the same file, with its own cache
/// and connections, as `rsgo apply` would open it) is read right after the revision read every
/// authenticated request starts with, and right after a write of ours lost a race to it. A
/// process that does not follow other writers (a CLI command waiting for a deletion) keeps
/// nothing and reads each change at once.
#[tokio::test]
async fn cached_reads_follow_other_processes_writes() {
    let dir = TempDir::new().unwrap();
    let ours: Arc<dyn Store> = Arc::new(SqliteStore::open(dir.path()).unwrap());
    let other: Arc<dyn Store> = Arc::new(SqliteStore::open(dir.path()).unwrap());
    // Following other processes' writes, as `rsgo serve` does, turns the cache on.
    let _wake = ours.subscribe();
    let version = |stack: Option<Stack>| stack.and_then(|s| s.spec.version);
    // Every authenticated request starts with a key lookup, which reads the store's revision.
    let keys = rsgo::auth::KeyIndex::follow(ours.clone()).await.unwrap();
    let revision_read = || keys.lookup("no such hash");

    ours.create(&stack("a")).await.unwrap();
    let kept = ours.require::<Stack>("local", "a").await.unwrap();
    assert_eq!(
        version(ours.get("local", "a").await.unwrap()).as_deref(),
        Some("1.0.0")
    );

    let mut theirs = other.require::<Stack>("local", "a").await.unwrap();
    theirs.spec.version = Some("2.0.0".into());
    other.update(&theirs).await.unwrap();
    revision_read().await.unwrap();
    assert_eq!(
        version(ours.get("local", "a").await.unwrap()).as_deref(),
        Some("2.0.0"),
        "another process's update is read after a revision read"
    );

    let mut theirs = other.require::<Stack>("local", "a").await.unwrap();
    theirs.spec.version = Some("3.0.0".into());
    other.update(&theirs).await.unwrap();
    let mut stale = kept;
    stale.spec.version = Some("2.5.0".into());
    assert!(matches!(
        ours.update(&stale).await,
        Err(Error::Conflict { .. })
    ));
    assert_eq!(
        version(ours.get("local", "a").await.unwrap()).as_deref(),
        Some("3.0.0"),
        "a write that lost the race is followed by a read of the winner's"
    );

    assert!(ours.get::<Stack>("local", "b").await.unwrap().is_none());
    other.create(&stack("b")).await.unwrap();
    other.delete::<Stack>("local", "a").await.unwrap();
    revision_read().await.unwrap();
    assert!(
        ours.get::<Stack>("local", "b").await.unwrap().is_some(),
        "an object another process created is found though it was missing before"
    );
    assert!(
        ours.get::<Stack>("local", "a").await.unwrap().is_none(),
        "an object another process deleted is gone"
    );

    assert_eq!(
        version(other.get("local", "b").await.unwrap()).as_deref(),
        Some("1.0.0")
    );
    let mut ours_b = ours.require::<Stack>("local", "b").await.unwrap();
    ours_b.spec.version = Some("4.0.0".into());
    ours.update(&ours_b).await.unwrap();
    assert_eq!(
        version(other.get("local", "b").await.unwrap()).as_deref(),
        Some("4.0.0"),
        "a store nobody subscribed to reads the database every time"
    );
}

#[tokio::test]
async fn a_write_by_another_process_reaches_watchers_within_a_second() {
    let dir = TempDir::new().unwrap();
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(dir.path()).unwrap());
    let mut events = Box::pin(store.clone().watch::<Environment>());
    assert!(matches!(events.next().await, Some(Ok(Event::Init))));
    assert!(matches!(events.next().await, Some(Ok(Event::InitDone))));

    let name = unique("env");
    let file = dir.path().join("env.yaml");
    std::fs::write(
        &file,
        format!("apiVersion: rsgo.io/v1alpha1\nkind: Environment\nmetadata: {{name: {name}}}\nspec: {{docker: {{host: 'tcp://127.0.0.1:1'}}}}\n"),
    )
    .unwrap();
    let cli = tokio::task::spawn_blocking({
        let dir = dir.path().to_owned();
        move || rsgo_ok(&dir, &["apply", "-f", file.to_str().unwrap()])
    });
    let applied = cli.await.unwrap();
    assert!(
        applied.contains(&format!("environment/{name} created")),
        "{applied}"
    );
    let started = std::time::Instant::now();
    // The CLI also creates the default `local` environment; wait for ours.
    loop {
        let event = tokio::time::timeout(Duration::from_secs(2), events.next())
            .await
            .expect("the change arrives within about a second")
            .unwrap()
            .unwrap();
        if let Event::Apply(env) = event
            && env.metadata.name.as_deref() == Some(name.as_str())
        {
            break;
        }
    }
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[test]
fn the_database_holds_no_plaintext_key() {
    let data = TempDir::new().unwrap();
    let key = rsgo_ok(
        data.path(),
        &[
            "apikey",
            "create",
            "--name",
            "CI",
            "--permission",
            "Hooks.Redeploy",
        ],
    );
    assert!(key.starts_with("rsgo_") && key.len() == 37, "{key}");
    let json = rsgo_ok(
        data.path(),
        &[
            "apikey",
            "create",
            "--name",
            "CI 2",
            "--permission",
            "*",
            "-o",
            "json",
        ],
    );
    let parsed: serde_json::Value = serde_json::from_str(&json).unwrap();
    let second = parsed["key"].as_str().unwrap().to_owned();
    assert!(
        parsed["prefix"]
            .as_str()
            .is_some_and(|p| second.starts_with(p))
    );
    // Checkpoint the WAL so the main file holds everything too, then read every file rsgo wrote.
    let db = rusqlite::Connection::open(data.path().join("rsgo.db")).unwrap();
    db.execute_batch("PRAGMA wal_checkpoint(FULL);").unwrap();
    for entry in std::fs::read_dir(data.path()).unwrap() {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        for secret in [&key, &second] {
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "plaintext key found on disk"
            );
            let random = &secret[9..];
            assert!(
                !bytes.windows(random.len()).any(|w| w == random.as_bytes()),
                "key body found on disk"
            );
        }
    }
    let list = rsgo_ok(data.path(), &["apikey", "list"]);
    assert!(list.contains("CI 2") && !list.contains(&second), "{list}");
}

#[test]
fn kill_9_loses_no_acknowledged_write() {
    let server = Server::start(&[]);
    let key = server.key(&["Hooks.Redeploy"]);
    server.apply(&format!(
        "apiVersion: rsgo.io/v1alpha1\nkind: Stack\nmetadata: {{name: durable}}\nspec: {{environment: {}, product: nothing, version: 1.0.0}}\n",
        server.environment
    ));
    let body = format!(
        "{{\"stackName\":\"durable\",\"environmentId\":\"{}\"}}",
        server.environment
    );
    // Four clients call as fast as they can; the server is killed while requests are in flight.
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (url, key, body) = (server.url.clone(), key.clone(), body.clone());
            std::thread::spawn(move || {
                let mut acknowledged = Vec::new();
                while let Ok((200, reply)) = curl(
                    "POST",
                    &format!("{url}/api/hooks/redeploy"),
                    Some(&key),
                    Some(&body),
                ) {
                    acknowledged.push(reply["deploymentId"].as_str().unwrap().to_owned());
                }
                acknowledged
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    let pid = server.pid();
    std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        curl("GET", &format!("{}/healthz", server.url), None, None).is_err(),
        "the server is gone"
    );
    let acknowledged: Vec<String> = clients
        .into_iter()
        .flat_map(|c| c.join().unwrap())
        .collect();
    assert!(
        acknowledged.len() >= 4,
        "the clients got answers before the kill"
    );
    // The reconciler trims record history, so a record may since have been deleted on purpose:
    // the database still holds a row (or tombstone) for every write it acknowledged.
    let db = rusqlite::Connection::open(server.data.path().join("rsgo.db")).unwrap();
    let mut stmt = db
        .prepare("SELECT name FROM objects WHERE kind = 'DeploymentRecord'")
        .unwrap();
    let stored: Vec<String> = stmt
        .query_map([], |row| row.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    for id in &acknowledged {
        assert!(stored.contains(id), "acknowledged deployment {id} was lost");
    }
    eprintln!(
        "{} acknowledged deployments survived kill -9",
        acknowledged.len()
    );
}

#[test]
fn the_examples_load_and_apply() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let loaded = rsgo::catalog::load_directory(&root.join("catalog")).unwrap();
    assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
    assert_eq!(
        loaded.versions.len(),
        5,
        "whoami and platform with two versions each, and the compose product notes"
    );
    let data = TempDir::new().unwrap();
    for file in ["environment.yaml", "stack.yaml"] {
        let out = rsgo_ok(
            data.path(),
            &["apply", "-f", root.join(file).to_str().unwrap()],
        );
        assert!(out.contains("created"), "{out}");
    }
    let again = rsgo_ok(
        data.path(),
        &["apply", "-f", root.join("stack.yaml").to_str().unwrap()],
    );
    assert_eq!(again, "stack/whoami unchanged");
    let bad = data.path().join("bad.yaml");
    std::fs::write(&bad, "apiVersion: rsgo.io/v1alpha1\nkind: Stack\nmetadata: {name: x}\nspec: {environment: local, product: p, colour: red}\n").unwrap();
    let out = crate::support::rsgo(data.path(), &["apply", "-f", bad.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown field `colour`"));
}

#[test]
fn a_key_revoked_by_the_cli_is_refused_by_the_running_server() {
    let server = Server::start(&[]);
    let key = server.key(&["Hooks.SyncSources"]);
    let (status, reply) = server.hook("/api/hooks/sync-sources", &key, None);
    assert_eq!(status, 200, "{reply}");
    let prefix = &key[..9];
    server.cli(&["apikey", "revoke", prefix, "--reason", "leaked"]);
    let (status, reply) = server.hook("/api/hooks/sync-sources", &key, None);
    assert_eq!(status, 401, "{reply}");
    assert_eq!(reply["message"], "API key has been revoked.");
    let log = server.log();
    assert!(
        log.contains("refused a request") && log.contains("revoked key"),
        "refusals are logged with their reason: {log}"
    );
    assert!(
        !log.contains(&key) && !log.contains(&key[9..]),
        "no part of a key beyond its display prefix is logged"
    );
    let list = server.cli(&["apikey", "list"]);
    assert!(list.contains("revoked"), "the record is kept: {list}");

    let refused = crate::support::rsgo(
        server.data.path(),
        &[
            "apikey",
            "create",
            "--name",
            "x",
            "--permission",
            "*",
            "--environment",
            "nowhere",
        ],
    );
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("environment 'nowhere' does not exist")
    );
    let unknown = crate::support::rsgo(
        server.data.path(),
        &[
            "apikey",
            "create",
            "--name",
            "y",
            "--permission",
            "Hooks.All",
        ],
    );
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("unknown permission 'Hooks.All'"));
}

#[tokio::test]
async fn old_tombstones_are_purged_and_live_objects_kept() {
    let dir = TempDir::new().unwrap();
    let sqlite = SqliteStore::open(dir.path()).unwrap();
    let store: Arc<dyn Store> = Arc::new(sqlite.clone());
    for name in ["gone-1", "gone-2", "kept"] {
        store.create(&stack(name)).await.unwrap();
    }
    store.delete::<Stack>("local", "gone-1").await.unwrap();
    store.delete::<Stack>("local", "gone-2").await.unwrap();
    let rows = |sql: &str| -> i64 {
        let db = rusqlite::Connection::open(dir.path().join("rsgo.db")).unwrap();
        db.query_row(sql, [], |r| r.get(0)).unwrap()
    };
    assert_eq!(rows("SELECT count(*) FROM objects WHERE deleted = 1"), 2);
    assert_eq!(
        sqlite.purge_tombstones(1_000).await.unwrap(),
        0,
        "recent tombstones stay"
    );
    // The newest tombstone is at the current revision; keeping 0 older revisions drops the other.
    assert_eq!(sqlite.purge_tombstones(0).await.unwrap(), 1);
    assert_eq!(rows("SELECT count(*) FROM objects WHERE deleted = 1"), 1);
    assert!(store.get::<Stack>("local", "kept").await.unwrap().is_some());
}

#[test]
fn the_cli_refuses_what_the_store_would_and_never_panics() {
    let dir = TempDir::new().unwrap();
    let file = dir.path().join("bad.yaml");
    for (yaml, needle) in [
        (
            "apiVersion: rsgo.io/v1alpha1\nkind: ApiKey\nmetadata: {name: weak}\nspec: {displayName: weak, keyHash: abc, prefix: rsgo_abcd, permissions: [Hooks.Redeploy]}\n",
            "document 1: ApiKey 'weak': spec.keyHash must be the SHA-256",
        ),
        (
            "apiVersion: rsgo.io/v1alpha1\nkind: Environment\nmetadata: {name: far}\nspec: {docker: {host: 'ftp://example.com:21'}}\n",
            "is not an engine address rsgo can use",
        ),
        (
            "apiVersion: rsgo.io/v1alpha1\nkind: Environment\nmetadata: {name: lax}\nspec: {docker: {host: 'tcp://127.0.0.1:2375', allowedHostPaths: [srv]}}\n",
            "host path 'srv' must be absolute",
        ),
    ] {
        std::fs::write(&file, yaml).unwrap();
        let out = crate::support::rsgo(dir.path(), &["apply", "-f", file.to_str().unwrap()]);
        assert!(!out.status.success(), "{yaml}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(needle), "{stderr}");
    }
    let far = crate::support::rsgo(
        dir.path(),
        &[
            "apikey",
            "create",
            "--name",
            "forever",
            "--permission",
            "*",
            "--expires-in",
            "3000000d",
        ],
    );
    let stderr = String::from_utf8_lossy(&far.stderr);
    assert!(
        !far.status.success() && stderr.contains("past the year 9999"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");

    // `rsgo get ... | head`: a reader that goes away ends the command quietly.
    for i in 0..3 {
        rsgo_ok(
            dir.path(),
            &[
                "apikey",
                "create",
                "--name",
                &format!("k{i}"),
                "--permission",
                "*",
            ],
        );
    }
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_rsgo"))
        .arg("--data-dir")
        .arg(dir.path())
        .args(["apikey", "list"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// The audit trail keeps the newest entries past its retention count, never lets an entry be
/// changed, and writes a flood of identical refusals as few entries with counts.
#[tokio::test]
async fn audit_entries_are_append_only_trimmed_oldest_first_and_floods_are_counted() {
    use rsgo::audit::{self, AuditLog, Query};
    use rsgo::model::{AuditActor, AuditEvent, AuditOutcome};
    let dir = TempDir::new().unwrap();
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(dir.path()).unwrap());
    let mut names = Vec::new();
    for n in 0..5 {
        let event = audit::event(audit::cli_actor(), "apikey.create", Some(format!("k{n}")));
        names.push(store.create(&event).await.unwrap().metadata.name.unwrap());
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert_eq!(audit::trim(&store, 3).await.unwrap(), 2);
    let kept = audit::read(
        &store,
        &Query {
            limit: 10,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let kept: Vec<String> = kept
        .iter()
        .map(|e| e.metadata.name.clone().unwrap())
        .collect();
    assert_eq!(
        kept,
        [names[4].clone(), names[3].clone(), names[2].clone()],
        "newest first, oldest gone"
    );

    let mut changed: AuditEvent = store.get("", &names[4]).await.unwrap().unwrap();
    changed.spec.action = "apikey.delete".into();
    let refused = store.update(&changed).await.unwrap_err().to_string();
    assert!(refused.contains("never changed"), "{refused}");

    let log = AuditLog::start(store.clone(), 0);
    for _ in 0..300 {
        let mut refusal = audit::event(
            AuditActor {
                name: "unknown".into(),
                key_prefix: None,
                address: Some("192.0.2.7".into()),
            },
            "hook.redeploy",
            None,
        );
        refusal.spec.outcome = AuditOutcome::Refused;
        refusal.spec.status_code = Some(401);
        refusal.spec.detail = Some("unknown key".into());
        log.record(refusal);
    }
    log.flush().await;
    let refusals = audit::read(
        &store,
        &Query {
            limit: 1000,
            action: Some("hook.".into()),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let counted: u64 = refusals.iter().map(|e| e.spec.count.unwrap_or(1)).sum();
    assert_eq!(counted, 300, "every refusal is counted");
    assert!(
        refusals.len() < 10,
        "{} entries for one flood",
        refusals.len()
    );
}
