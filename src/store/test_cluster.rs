//! Throwaway PostgreSQL clusters for the store's tests: `initdb` into a
//! temporary directory, a server on a free 127.0.0.1 port, stopped through
//! its own data directory (`pg_ctl -D … stop`). Never a server that happens
//! to run on the machine.
//!
//! Missing PostgreSQL binaries fail the tests with a message, unless
//! AGENTD_SKIP_POSTGRES=1 (CI installs them: `scripts/setup --test`).

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::{
        OnceLock,
        atomic::{AtomicUsize, Ordering},
    },
    time::Instant,
};

use sqlx::{Connection as _, Executor as _, PgConnection};

pub(super) struct Cluster {
    /// The temporary directory: `data/`, the server log and its socket.
    root: PathBuf,
    bin: PathBuf,
    pub port: u16,
    /// Server settings passed to `postgres` (`-c` options).
    settings: Vec<&'static str>,
    /// Running as root: initdb refuses root, so every command runs as `postgres`.
    as_postgres: bool,
}

/// Speed over safety: for every test but the crash test.
const FAST: &[&str] = &[
    "fsync=off",
    "synchronous_commit=off",
    "full_page_writes=off",
];

impl Cluster {
    /// A new cluster with `settings`, running. Panics with the server's log
    /// when it cannot start.
    pub fn start(settings: &[&'static str]) -> Self {
        let bin = bin_dir().unwrap_or_else(|| panic!("{}", missing_binaries()));
        let as_postgres = is_root();
        let root = tempfile::Builder::new()
            .prefix("agentd-pg-")
            .tempdir()
            .expect("a temporary directory")
            .keep();
        if as_postgres {
            let (uid, gid) = postgres_ids();
            std::os::unix::fs::chown(&root, Some(uid), Some(gid)).expect("chown to postgres");
        }
        let mut cluster = Self {
            root,
            bin,
            port: 0,
            settings: settings.to_vec(),
            as_postgres,
        };
        let began = Instant::now();
        let data = cluster.data();
        cluster.run(
            "initdb",
            &[
                "--no-sync",
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C",
                "-D",
                path(&data),
            ],
        );
        let initialised = began.elapsed();
        // A port that was free a moment ago may be taken by the time the
        // server binds it: try a few.
        for _ in 0..3 {
            cluster.port = free_port();
            if cluster.pg_ctl_start().status.success() {
                eprintln!(
                    "test PostgreSQL on 127.0.0.1:{}: initdb {initialised:?}, start {:?}",
                    cluster.port,
                    began.elapsed() - initialised
                );
                return cluster;
            }
        }
        panic!("PostgreSQL did not start:\n{}", cluster.log());
    }

    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// A new, empty database; returns its URL.
    pub async fn fresh_database(&self) -> String {
        static NEXT: AtomicUsize = AtomicUsize::new(1);
        let name = format!("contract_{}", NEXT.fetch_add(1, Ordering::Relaxed));
        let mut conn = PgConnection::connect(&self.url("postgres"))
            .await
            .expect("connecting to the test cluster");
        conn.execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .await
            .expect("CREATE DATABASE");
        conn.close().await.ok();
        self.url(&name)
    }

    /// `pg_ctl stop -m immediate`: the server quits without a checkpoint, as
    /// in a crash; the next start replays the WAL.
    pub fn crash(&self) {
        self.pg_ctl_stop("immediate");
    }

    /// Starts the server again, on the same port.
    pub fn restart(&self) {
        let out = self.pg_ctl_start();
        assert!(
            out.status.success(),
            "PostgreSQL did not restart:\n{}",
            self.log()
        );
    }

    fn data(&self) -> PathBuf {
        self.root.join("data")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.root.join("server.log")).unwrap_or_default()
    }

    fn pg_ctl_start(&self) -> Output {
        let mut options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c max_connections=200",
            self.port,
            self.root.display()
        );
        for s in &self.settings {
            options.push_str(" -c ");
            options.push_str(s);
        }
        let (data, log) = (self.data(), self.root.join("server.log"));
        let args = [
            "-w",
            "-t",
            "60",
            "-D",
            path(&data),
            "-l",
            path(&log),
            "-o",
            &options,
            "start",
        ];
        self.command("pg_ctl", &args).output().expect("pg_ctl")
    }

    fn pg_ctl_stop(&self, mode: &str) {
        let data = self.data();
        let args = ["-w", "-D", path(&data), "-m", mode, "stop"];
        let _ = self.command("pg_ctl", &args).output();
    }

    fn run(&self, program: &str, args: &[&str]) {
        let out = self.command(program, args).output().expect(program);
        assert!(
            out.status.success(),
            "{program} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `program` of the PostgreSQL binaries, as `postgres` when we are root.
    fn command(&self, program: &str, args: &[&str]) -> Command {
        let exe = self.bin.join(program);
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(exe);
            c
        } else {
            Command::new(exe)
        };
        cmd.args(args).stdin(Stdio::null());
        cmd
    }

    /// The shell command that stops this cluster and removes its directory.
    fn teardown_script(&self) -> String {
        let pg_ctl = self.bin.join("pg_ctl");
        let stop = format!(
            "'{}' -w -D '{}' -m fast stop",
            pg_ctl.display(),
            self.data().display()
        );
        let stop = if self.as_postgres {
            format!("runuser -u postgres -- {stop}")
        } else {
            stop
        };
        format!("{stop} >/dev/null 2>&1; rm -rf '{}'", self.root.display())
    }
}

/// A cluster owned by one test is stopped and removed with it.
impl Drop for Cluster {
    fn drop(&mut self) {
        self.pg_ctl_stop("immediate");
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// The cluster every contract test shares (each with a database of its own),
/// started by the first test that needs it. None: AGENTD_SKIP_POSTGRES=1 and
/// there are no PostgreSQL binaries.
pub(super) fn shared() -> Option<&'static Cluster> {
    struct Shared {
        cluster: Cluster,
        /// Stops the cluster when this process is gone (statics are never
        /// dropped): it waits for the end of its stdin, whose other end only
        /// this process holds.
        _guardian: Child,
    }
    static SHARED: OnceLock<Shared> = OnceLock::new();
    if !available() {
        return None;
    }
    let shared = SHARED.get_or_init(|| {
        let cluster = Cluster::start(FAST);
        let guardian = Command::new("sh")
            .arg("-c")
            .arg(format!("cat >/dev/null; {}", cluster.teardown_script()))
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("the cluster's guardian");
        Shared {
            cluster,
            _guardian: guardian,
        }
    });
    Some(&shared.cluster)
}

/// Whether PostgreSQL tests can run here; panics (or, with
/// AGENTD_SKIP_POSTGRES=1, says so and returns false) when they cannot.
pub(super) fn available() -> bool {
    if bin_dir().is_some() {
        return true;
    }
    if std::env::var("AGENTD_SKIP_POSTGRES").as_deref() == Ok("1") {
        eprintln!("AGENTD_SKIP_POSTGRES=1: skipping a PostgreSQL test");
        return false;
    }
    panic!("{}", missing_binaries());
}

/// Where `initdb` and `pg_ctl` are: Debian's /usr/lib/postgresql/<newest>/bin,
/// else the PATH.
fn bin_dir() -> Option<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin).or_else(|| {
        std::env::split_paths(&std::env::var_os("PATH")?)
            .find(|dir| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file())
    })
}

fn missing_binaries() -> String {
    "PostgreSQL binaries not found (initdb and pg_ctl, in /usr/lib/postgresql/*/bin or on PATH): \
     install Debian's `postgresql` package (`scripts/setup --test` does, as root), or set \
     AGENTD_SKIP_POSTGRES=1 to skip the PostgreSQL store tests"
        .into()
}

fn is_root() -> bool {
    id(&["-u"]) == "0"
}

fn postgres_ids() -> (u32, u32) {
    let parse = |s: String| s.parse().expect("a numeric id");
    (
        parse(id(&["-u", "postgres"])),
        parse(id(&["-g", "postgres"])),
    )
}

fn id(args: &[&str]) -> String {
    let out = Command::new("id").args(args).output().expect("id");
    assert!(
        out.status.success(),
        "id {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("a free port");
    listener.local_addr().expect("its address").port()
}

fn path(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 temporary path")
}
