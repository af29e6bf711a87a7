//! Both store backends for one test: a fresh SQLite file and a fresh PostgreSQL database.
//!
//! PostgreSQL is the real server the development and CI machines run (`.ci/run` starts it):
//! `NETPATROL_TEST_PG` names a database to connect to for administration (default
//! `postgres://postgres@127.0.0.1:5432/test`); each test gets its own `np_test_<random>`
//! database beside it, dropped when the test body ends (passed or failed).

use std::sync::atomic::{AtomicU64, Ordering};

use netpatrol::config::StoreSettings;
use netpatrol::store::{Backend, Store};
use sqlx::Connection;
use sqlx::postgres::PgConnection;

/// The administration URL of the test PostgreSQL server.
pub fn admin_url() -> String {
    std::env::var("NETPATROL_TEST_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_string())
}

/// One backend a test body runs against.
pub struct TestStore {
    pub backend: Backend,
    /// What a config's `store` resolves to for this backend.
    pub settings: StoreSettings,
    /// Keeps the SQLite file's folder alive.
    _dir: tempfile::TempDir,
}

impl TestStore {
    /// Open (and migrate) the store.
    pub async fn open(&self) -> Store {
        Store::connect(&self.settings)
            .await
            .unwrap_or_else(|e| panic!("{:?} store opens: {e}", self.backend))
    }

    /// One count read without opening the store (no migration, no marking of running runs):
    /// for watching a store another process is writing. `None` while it cannot be read yet.
    pub async fn peek_count(&self, sql: &'static str) -> Option<i64> {
        match &self.settings.url {
            Some(url) => {
                let mut conn = PgConnection::connect(url).await.ok()?;
                let n = sqlx::query_scalar(sql).fetch_one(&mut conn).await.ok();
                let _ = conn.close().await;
                n
            }
            None => {
                let options = sqlx::sqlite::SqliteConnectOptions::new()
                    .filename(&self.settings.path)
                    .read_only(true);
                let pool = sqlx::SqlitePool::connect_with(options).await.ok()?;
                let n = sqlx::query_scalar(sql).fetch_one(&pool).await.ok();
                pool.close().await;
                n
            }
        }
    }

    /// The `store:` line for a YAML config.
    pub fn yaml(&self) -> String {
        match &self.settings.url {
            Some(url) => format!("store: {{url: \"{url}\"}}\n"),
            None => format!("store: {{path: \"{}\"}}\n", self.settings.path.display()),
        }
    }
}

/// A database name no other test (or helper) uses at the same time.
fn fresh_name() -> String {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "np_test_{}_{}_{}",
        std::process::id(),
        nanos,
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

/// `url` with its database replaced by `name`.
fn with_database(url: &str, name: &str) -> String {
    let mut url = url::Url::parse(url).expect("NETPATROL_TEST_PG is a URL");
    url.set_path(&format!("/{name}"));
    url.to_string()
}

async fn admin() -> PgConnection {
    let url = admin_url();
    PgConnection::connect(&url).await.unwrap_or_else(|e| {
        panic!("PostgreSQL at {url} answers (is it running? .ci/run starts it): {e}")
    })
}

impl TestStore {
    /// A SQLite store at `path` (a file some process under test writes).
    pub fn sqlite_at(path: std::path::PathBuf) -> TestStore {
        TestStore {
            backend: Backend::Sqlite,
            settings: StoreSettings {
                path,
                url: None,
                password_env: None,
            },
            _dir: tempfile::tempdir().unwrap(),
        }
    }
}

/// A fresh SQLite store in a folder of its own.
fn sqlite() -> TestStore {
    let dir = tempfile::tempdir().unwrap();
    TestStore {
        backend: Backend::Sqlite,
        settings: StoreSettings {
            path: dir.path().join("np.db"),
            url: None,
            password_env: None,
        },
        _dir: dir,
    }
}

/// A fresh PostgreSQL database; its name, to drop it.
async fn postgres() -> (TestStore, String) {
    let name = fresh_name();
    let mut conn = admin().await;
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await
        .expect("CREATE DATABASE");
    let _ = conn.close().await;
    let store = TestStore {
        backend: Backend::Postgres,
        settings: StoreSettings {
            path: std::path::PathBuf::from("unused.db"),
            url: Some(with_database(&admin_url(), &name)),
            password_env: None,
        },
        _dir: tempfile::tempdir().unwrap(),
    };
    (store, name)
}

/// Drop database `name`, connections still open to it included.
async fn drop_postgres(name: &str) {
    let mut conn = admin().await;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
    )))
    .execute(&mut conn)
    .await
    .expect("DROP DATABASE");
    let _ = conn.close().await;
}

/// Run `body` once on a fresh SQLite store, then once on a fresh PostgreSQL database. A
/// failure on either fails the test, naming the backend.
pub async fn for_each_backend<F, Fut>(mut body: F)
where
    F: FnMut(TestStore) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    if let Err(panic) = tokio::spawn(body(sqlite())).await {
        panic!("on SQLite: {panic}");
    }
    // PostgreSQL: a database of its own, dropped whatever the body did.
    let (pg, name) = postgres().await;
    let outcome = tokio::spawn(body(pg)).await;
    drop_postgres(&name).await;
    if let Err(panic) = outcome {
        panic!("on PostgreSQL: {panic}");
    }
}

/// [`for_each_backend`] for a test without a runtime (one that drives processes and blocks).
pub fn for_each_backend_blocking(mut body: impl FnMut(TestStore)) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    if let Err(panic) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| body(sqlite()))) {
        eprintln!("failed on SQLite");
        std::panic::resume_unwind(panic);
    }
    let (pg, name) = runtime.block_on(postgres());
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| body(pg)));
    runtime.block_on(drop_postgres(&name));
    if let Err(panic) = outcome {
        eprintln!("failed on PostgreSQL");
        std::panic::resume_unwind(panic);
    }
}

/// `body` on a fresh PostgreSQL database only (for what only PostgreSQL offers: several
/// processes sharing one store), dropped whatever the body did.
pub fn with_postgres_blocking(body: impl FnOnce(TestStore)) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (pg, name) = runtime.block_on(postgres());
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| body(pg)));
    runtime.block_on(drop_postgres(&name));
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}
