//! Several agentd nodes on one PostgreSQL, with Envoy in front: a throwaway
//! PostgreSQL server (Debian's binaries, `initdb` as `postgres` when we are
//! root) and N nodes sharing one data directory, each on a free 127.0.0.1
//! port and stopped by its own PID.
//!
//! The server keeps PostgreSQL's durable defaults (fsync, synchronous
//! commit): a create is acknowledged only once it is on disk, as with SQLite.

use std::{
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context, Result, bail};
use sqlx::{Connection, postgres::PgConnection};

use crate::stack::{Proc, StackOptions, free_port, spawn_agentd, spawn_envoy};

pub struct PgServer {
    root: tempfile::TempDir,
    bin: PathBuf,
    as_postgres: bool,
    pub port: u16,
}

impl PgServer {
    pub fn start() -> Result<Self> {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .context("PostgreSQL not found (apt-get install postgresql)")?
            .filter_map(|e| e.ok())
            .map(|e| e.path().join("bin"))
            .filter(|b| b.join("initdb").exists())
            .max()
            .context("no /usr/lib/postgresql/*/bin/initdb")?;
        let root = tempfile::Builder::new()
            .prefix("agentd-bench-pg")
            .tempdir()?;
        // initdb refuses root: /proc/self belongs to our effective user.
        let as_postgres = std::fs::metadata("/proc/self")?.uid() == 0;
        if as_postgres {
            run(Command::new("chown")
                .arg("postgres:postgres")
                .arg(root.path()))?;
        }
        let mut server = PgServer {
            root,
            bin,
            as_postgres,
            port: 0,
        };
        let data = server.data();
        run(server
            .command("initdb")
            .args(["--no-sync", "-U", "postgres", "--auth=trust", "-E", "UTF8"])
            .args(["--locale=C", "-D"])
            .arg(&data))?;
        server.port = free_port();
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c max_connections=300",
            server.port,
            server.root.path().display()
        );
        run(server
            .command("pg_ctl")
            .args(["-w", "-t", "60", "-D"])
            .arg(&data)
            .arg("-l")
            .arg(server.root.path().join("server.log"))
            .arg("-o")
            .arg(opts)
            .arg("start"))?;
        Ok(server)
    }

    fn data(&self) -> PathBuf {
        self.root.path().join("data")
    }

    fn command(&self, program: &str) -> Command {
        let exe = self.bin.join(program);
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(exe);
            c
        } else {
            Command::new(exe)
        };
        cmd.stdin(Stdio::null());
        cmd
    }

    /// A fresh database on this server; its URL.
    pub async fn database(&self, name: &str) -> Result<String> {
        let admin = format!("postgres://postgres@127.0.0.1:{}/postgres", self.port);
        let mut conn = PgConnection::connect(&admin).await?;
        // `name` is one of the workload's own constants, never outside input.
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await?;
        conn.close().await?;
        Ok(format!(
            "postgres://postgres@127.0.0.1:{}/{name}",
            self.port
        ))
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let data = self.data();
        let _ = self
            .command("pg_ctl")
            .args(["-w", "-m", "immediate", "-D"])
            .arg(data)
            .arg("stop")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

fn run(cmd: &mut Command) -> Result<()> {
    let out = cmd.output()?;
    if !out.status.success() {
        bail!(
            "{cmd:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

pub struct Node {
    pub proc: Proc,
    pub grpc_url: String,
    dir: PathBuf,
    port: u16,
    opts: StackOptions,
}

pub struct Cluster {
    /// The shared data directory (`data/`), each node's working directory
    /// (`node-N/`, with its log) and Envoy's.
    pub root: tempfile::TempDir,
    pub nodes: Vec<Node>,
    pub envoy: Proc,
    pub rest_url: String,
    pub database_url: String,
}

pub struct ClusterOptions {
    pub nodes: usize,
    /// Per node (`--max-running-tasks`).
    pub max_running_tasks: usize,
    pub trae_config: Option<String>,
    /// `--lease-secs`; None: agentd's default.
    pub lease_secs: Option<u64>,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        Self {
            nodes: 3,
            max_running_tasks: 5,
            trae_config: None,
            lease_secs: None,
        }
    }
}

impl Cluster {
    /// N nodes on a fresh database `db` of `pg`, and Envoy balancing them.
    pub async fn start(pg: &PgServer, db: &str, opts: ClusterOptions) -> Result<Self> {
        let database_url = pg.database(db).await?;
        let root = tempfile::Builder::new()
            .prefix("agentd-bench-cluster")
            .tempdir()?;
        let data = root.path().join("data");
        let mut nodes = Vec::new();
        let mut ports = Vec::new();
        for i in 1..=opts.nodes {
            let dir = root.path().join(format!("node-{i}"));
            std::fs::create_dir_all(&dir)?;
            let port = free_port();
            let mut extra_args = vec![
                "--database-url".to_string(),
                database_url.clone(),
                "--node-id".to_string(),
                format!("node{i}"),
            ];
            if let Some(secs) = opts.lease_secs {
                extra_args.extend(["--lease-secs".to_string(), secs.to_string()]);
            }
            let node_opts = StackOptions {
                max_running_tasks: opts.max_running_tasks,
                trae_config: opts.trae_config.clone(),
                extra_args,
                ..Default::default()
            };
            let (proc, _) = spawn_agentd(&dir, &data, port, &node_opts).await?;
            nodes.push(Node {
                proc,
                grpc_url: format!("http://127.0.0.1:{port}"),
                dir,
                port,
                opts: node_opts,
            });
            ports.push(port);
        }
        let (envoy, rest_url) = spawn_envoy(root.path(), &ports, None).await?;
        Ok(Cluster {
            root,
            nodes,
            envoy,
            rest_url,
            database_url,
        })
    }

    /// Starts node `i` again (after a kill): at start it ends what its
    /// killed self left behind (process and control groups).
    pub async fn restart_node(&mut self, i: usize) -> Result<()> {
        let data = self.root.path().join("data");
        let n = &mut self.nodes[i];
        n.proc.stop();
        n.proc = spawn_agentd(&n.dir, &data, n.port, &n.opts).await?.0;
        Ok(())
    }

    pub fn work_root(&self) -> &Path {
        self.root.path()
    }

    /// Stops Envoy and every node (each by its PID).
    pub fn stop(&mut self) {
        self.envoy.stop();
        for n in &mut self.nodes {
            n.proc.stop();
        }
    }
}
