//! The in-process API test harness every service's `api/tests.rs` uses:
//! the whole router on a local port, a seeded identity (admin, a member of
//! another project, a reader), and one small HTTP client.

use rusqlite::{params, Connection};
use serde_json::Value;

use crate::http::AppState;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::config::Config;
use crate::db::Db;
use crate::host::vmm::fake::FakeVmmHost;
use crate::identity::{bootstrap, token};
use crate::image::files::ImageStore;

/// A daemon serving the whole API in-process, with its users' tokens. Its
/// compute host is a [`FakeVmmHost`]: servers "run" in memory, without KVM
/// or a `nubo-vmm` binary.
pub(crate) struct Server {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its state database.
    pub db: Db,
    /// Its state directory.
    pub dir: tempfile::TempDir,
    /// Its compute host's VMMs.
    pub vmm: Arc<FakeVmmHost>,
    /// Its network host.
    pub net: Arc<crate::host::net::fake::FakeNetHost>,
    /// Its Block Storage service (what compute calls).
    pub volume: Arc<crate::volume::VolumeService>,
    /// Its compute service (for the lifecycle's background steps).
    pub compute: Arc<crate::compute::Compute>,
    /// Its volume backend (`file`, in memory).
    pub storage: Arc<crate::host::storage::fake::FakeVolumeDriver>,
    /// The service prefix [`Server::call`] puts before paths (`/image`).
    pub prefix: &'static str,
    /// The admin's token (admin project).
    pub admin: String,
    /// The admin project's id.
    pub admin_project: String,
    /// Member of another project (`other`).
    pub alice: String,
    /// Reader on the admin project.
    pub rita: String,
}

/// The orchestrator tests' one HTTP client, shared with the daemon tests.
#[path = "../tests/common/http_client.rs"]
mod http_client;

pub(crate) use http_client::Resp;

/// Adds a user with `role` on `project`; returns its token.
pub(crate) fn add_user(conn: &Connection, name: &str, project: &str, role: &str) -> String {
    let user = crate::util::new_hex_id();
    conn.execute(
        "INSERT INTO users (id, name, domain_id) VALUES (?1, ?2, 'default')",
        params![user, name],
    )
    .unwrap();
    conn.execute(
        "INSERT INTO role_assignments (user_id, project_id, role_id) \
         SELECT ?1, ?2, id FROM roles WHERE name = ?3",
        params![user, project, role],
    )
    .unwrap();
    token::issue(conn, &user, project, Duration::from_secs(3600))
        .unwrap()
        .0
}

/// Starts the API; [`Server::call`] puts `prefix` before paths.
pub(crate) async fn start(prefix: &'static str, max_image_size: u64) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open_in_memory().unwrap();
    let (admin, admin_project, alice, rita) = {
        let conn = db.lock();
        bootstrap::seed(&conn, "pw").unwrap();
        let (user, project): (String, String) = conn
            .query_row(
                "SELECT id, default_project_id FROM users WHERE name = 'admin'",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        let admin = token::issue(&conn, &user, &project, Duration::from_secs(3600))
            .unwrap()
            .0;
        conn.execute(
            "INSERT INTO projects (id, name, domain_id) VALUES ('other', 'other', 'default')",
            [],
        )
        .unwrap();
        let alice = add_user(&conn, "alice", "other", "member");
        let rita = add_user(&conn, "rita", &project, "reader");
        (admin, project, alice, rita)
    };
    let cfg = Arc::new(Config {
        state_dir: dir.path().to_path_buf(),
        listen: "127.0.0.1:0".parse().unwrap(),
        public_url: None,
        vmm_binary: dir.path().join("no-vmm"),
        // Never read: the fake host boots nothing.
        default_kernel: Some(dir.path().join("no-kernel")),
        default_initrd: None,
        default_cmdline: String::new(),
        token_ttl: Duration::from_secs(3600),
        shutdown_timeout: Duration::from_secs(1),
        max_image_size,
        overcommit: Default::default(),
        quotas: Default::default(),
        admin_password: None,
        vmm_uid_base: None,
        network: crate::config::NetworkConfig {
            vlan_ranges: vec![crate::config::VlanRange {
                physnet: "physnet1".into(),
                range: Some((100, 199)),
            }],
            ..Default::default()
        },
        volume: Default::default(),
    });
    let images = Arc::new(ImageStore::new(dir.path().join("images"), max_image_size).unwrap());
    let vmm = Arc::new(FakeVmmHost::default());
    let net = Arc::new(crate::host::net::fake::FakeNetHost::default());
    let network = crate::network::NetworkService::new(
        db.clone(),
        cfg.clone(),
        net.clone(),
        crate::compute::host_name(),
    );
    let storage = Arc::new(crate::host::storage::fake::FakeVolumeDriver::new("file"));
    let volume =
        crate::volume::VolumeService::new(db.clone(), cfg.clone(), vec![storage.clone() as _]);
    let compute = crate::compute::Compute::new(
        db.clone(),
        cfg.clone(),
        vmm.clone(),
        images.clone(),
        Arc::clone(&network),
        Arc::clone(&volume),
    );
    tokio::spawn(crate::compute::lifecycle::power_sync(Arc::clone(&compute)));
    let state = AppState {
        db: db.clone(),
        cfg,
        images,
        compute: Arc::clone(&compute),
        network,
        volume: Arc::clone(&volume),
    };
    let app = crate::http::router::router(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    Server {
        addr,
        db,
        dir,
        vmm,
        net,
        volume,
        compute,
        storage,
        prefix,
        admin,
        admin_project,
        alice,
        rita,
    }
}

impl Server {
    /// Sends one request (`path` after the service prefix) and reads the
    /// whole answer.
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        token: &str,
        ctype: Option<&str>,
        body: &[u8],
    ) -> Resp {
        let addr = self.addr;
        let (method, path) = (method.to_string(), format!("{}{path}", self.prefix));
        let (token, ctype, body) = (token.to_string(), ctype.map(str::to_string), body.to_vec());
        tokio::task::spawn_blocking(move || {
            let mut headers = vec![("X-Auth-Token", token.as_str())];
            if let Some(c) = &ctype {
                headers.push(("Content-Type", c.as_str()));
            }
            http_client::http(addr, &method, &path, &headers, Some(&body))
                .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
        })
        .await
        .unwrap_or_else(|e| panic!("the test client's task failed: {e}"))
    }

    /// Sends one request with `extra` headers (a microversion, say) and a
    /// JSON body.
    pub async fn call_with(
        &self,
        method: &str,
        path: &str,
        token: &str,
        extra: &[(&str, &str)],
        body: &Value,
    ) -> Resp {
        let addr = self.addr;
        let (method, path) = (method.to_string(), format!("{}{path}", self.prefix));
        let token = token.to_string();
        let extra: Vec<(String, String)> = extra
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let body = body.to_string().into_bytes();
        tokio::task::spawn_blocking(move || {
            let mut headers = vec![
                ("X-Auth-Token", token.as_str()),
                ("Content-Type", "application/json"),
            ];
            headers.extend(extra.iter().map(|(k, v)| (k.as_str(), v.as_str())));
            http_client::http(addr, &method, &path, &headers, Some(&body))
                .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
        })
        .await
        .unwrap_or_else(|e| panic!("the test client's task failed: {e}"))
    }

    /// `GET`.
    pub async fn get(&self, path: &str, token: &str) -> Resp {
        self.call("GET", path, token, None, b"").await
    }

    /// `POST` with a JSON body.
    pub async fn post(&self, path: &str, token: &str, body: Value) -> Resp {
        self.call(
            "POST",
            path,
            token,
            Some("application/json"),
            body.to_string().as_bytes(),
        )
        .await
    }

    /// `PUT` with a JSON body.
    pub async fn put(&self, path: &str, token: &str, body: Value) -> Resp {
        self.call(
            "PUT",
            path,
            token,
            Some("application/json"),
            body.to_string().as_bytes(),
        )
        .await
    }

    /// `DELETE`.
    pub async fn delete(&self, path: &str, token: &str) -> Resp {
        self.call("DELETE", path, token, None, b"").await
    }
}
