//! `agentd artifacts`: list a task's artifacts, download one (a streamed
//! DownloadArtifact), upload a file (a client-streamed UploadArtifact).
//!
//! Uploads go as raw bytes with `file_name` set in the first message, which
//! agentd accepts from gRPC callers (any non-multipart content type); the
//! multipart/form-data framing is only what Envoy's transcoder forwards from
//! REST clients, so there is nothing to gain by building it here.

use std::path::{Path, PathBuf};

use agentd::proto::{
    ap::{Artifact, DownloadArtifactRequest, ListArtifactsRequest, UploadArtifactRequest},
    google::api::HttpBody,
};
use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
use serde_json::json;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::{Connection, client::Client, exit, print_line, progress::transfer_bar};

/// Upload chunk size (agentd's download chunks are the same).
const CHUNK: usize = 256 * 1024;
const PAGE: i32 = 100;

#[derive(Args, Debug)]
pub struct ArtifactsArgs {
    /// The task.
    pub task_id: String,
    #[command(subcommand)]
    pub action: Option<Action>,
    /// Print JSON (the list, or the uploaded artifact).
    #[arg(long, global = true)]
    pub json: bool,
    #[command(flatten)]
    pub conn: Connection,
}

#[derive(Subcommand, Debug)]
pub enum Action {
    /// Download an artifact.
    Get {
        artifact_id: String,
        /// Where to write it: a file (replaced), a directory, or - for
        /// standard output. Default: its file name, in the current directory
        /// (an existing file is not replaced).
        #[arg(short = 'o', long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Upload a file as an artifact of the task.
    Put {
        file: PathBuf,
        /// Directory (or full path ending in the file name) inside the task's
        /// workspace.
        #[arg(long, value_name = "PATH")]
        relative_path: Option<String>,
    },
}

pub async fn artifacts(args: ArtifactsArgs) -> anyhow::Result<u8> {
    let client = Client::new(&args.conn)?;
    match args.action {
        None => list(client, &args.task_id, args.json).await,
        Some(Action::Get {
            artifact_id,
            output,
        }) => get(client, &args.task_id, &artifact_id, output).await,
        Some(Action::Put {
            file,
            relative_path,
        }) => put(client, &args.task_id, &file, relative_path, args.json).await,
    }
}

/// Where agentd put the file in the workspace (its `location` rule).
fn location(a: &Artifact) -> String {
    let rel = a.relative_path.trim_end_matches('/');
    if rel.is_empty() {
        a.file_name.clone()
    } else if rel.rsplit('/').next() == Some(a.file_name.as_str()) {
        rel.to_string()
    } else {
        format!("{rel}/{}", a.file_name)
    }
}

fn artifact_json(a: &Artifact) -> serde_json::Value {
    json!({
        "artifact_id": a.artifact_id, "file_name": a.file_name, "relative_path": a.relative_path,
        "file_size": a.file_size, "created_at": a.created_at, "agent_created": a.agent_created,
    })
}

fn artifact_row(a: &Artifact) -> String {
    format!(
        "{:<36}  {:>10}  {:<20}  {:<5}  {}",
        a.artifact_id,
        a.file_size,
        a.created_at,
        if a.agent_created { "agent" } else { "user" },
        location(a)
    )
}

async fn list(mut client: Client, task_id: &str, json: bool) -> anyhow::Result<u8> {
    let mut all = Vec::new();
    for page in 1.. {
        let resp = client
            .agent
            .list_artifacts(ListArtifactsRequest {
                task_id: task_id.to_string(),
                page: Some(page),
                size: Some(PAGE),
                ..Default::default()
            })
            .await
            .with_context(|| format!("listing the artifacts of task {task_id}"))?
            .into_inner();
        let got = resp.artifacts.len();
        all.extend(resp.artifacts);
        let total = resp.pagination.map_or(0, |p| p.total);
        if got == 0 || all.len() >= usize::try_from(total).unwrap_or(0) {
            break;
        }
    }
    if json {
        let out: Vec<_> = all.iter().map(artifact_json).collect();
        print_line(&json!({ "artifacts": out }).to_string())?;
        return Ok(exit::OK);
    }
    if all.is_empty() {
        eprintln!("task {task_id} has no artifacts");
        return Ok(exit::OK);
    }
    print_line(&format!(
        "{:<36}  {:>10}  {:<20}  {:<5}  PATH",
        "ARTIFACT ID", "BYTES", "CREATED", "BY"
    ))?;
    for a in &all {
        print_line(&artifact_row(a))?;
    }
    Ok(exit::OK)
}

/// The file name a `Content-Disposition` value names (RFC 6266): the UTF-8
/// `filename*` when present, else `filename`; only its last path segment.
fn disposition_file_name(value: &str) -> Option<String> {
    let mut plain = None;
    let mut extended = None;
    for part in value.split(';').map(str::trim) {
        if let Some(v) = part.strip_prefix("filename*=") {
            extended = v
                .strip_prefix("UTF-8''")
                .or_else(|| v.strip_prefix("utf-8''"))
                .and_then(percent_decode);
        } else if let Some(v) = part.strip_prefix("filename=") {
            plain = Some(v.trim_matches('"').to_string());
        }
    }
    let name = extended.or(plain)?;
    let name = name.rsplit(['/', '\\']).next()?.to_string();
    (!name.is_empty() && name != "." && name != "..").then_some(name)
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

enum Target {
    Stdout,
    File { path: PathBuf, replace: bool },
}

async fn get(
    mut client: Client,
    task_id: &str,
    artifact_id: &str,
    output: Option<PathBuf>,
) -> anyhow::Result<u8> {
    let resp = client
        .agent
        .download_artifact(DownloadArtifactRequest {
            task_id: task_id.to_string(),
            artifact_id: artifact_id.to_string(),
        })
        .await
        .with_context(|| format!("downloading artifact {artifact_id} of task {task_id}"))?;
    let name = resp
        .metadata()
        .get("content-disposition")
        .and_then(|v| v.to_str().ok())
        .and_then(disposition_file_name)
        .unwrap_or_else(|| artifact_id.to_string());
    let target = match output {
        Some(p) if p.as_os_str() == "-" => Target::Stdout,
        Some(p) if p.is_dir() => Target::File {
            path: p.join(&name),
            replace: false,
        },
        Some(p) => Target::File {
            path: p,
            replace: true,
        },
        None => Target::File {
            path: PathBuf::from(&name),
            replace: false,
        },
    };
    let mut stream = resp.into_inner();
    let bar = transfer_bar(&name, None);
    match target {
        Target::Stdout => {
            // A CLI with nothing else to do: blocking writes are fine here.
            let mut out = std::io::stdout();
            while let Some(chunk) = stream.message().await.context("downloading")? {
                std::io::Write::write_all(&mut out, &chunk.data)?;
                bar.inc(chunk.data.len() as u64);
            }
            std::io::Write::flush(&mut out)?;
            bar.finish_and_clear();
        }
        Target::File { path, replace } => {
            if !replace && path.exists() {
                bar.finish_and_clear();
                bail!(
                    "{} already exists; choose where to write with -o FILE",
                    path.display()
                );
            }
            let part = partial_path(&path);
            let written = async {
                let mut file = tokio::fs::File::create(&part)
                    .await
                    .with_context(|| format!("creating {}", part.display()))?;
                let mut n = 0u64;
                while let Some(chunk) = stream.message().await.context("downloading")? {
                    file.write_all(&chunk.data)
                        .await
                        .with_context(|| format!("writing {}", part.display()))?;
                    n += chunk.data.len() as u64;
                    bar.inc(chunk.data.len() as u64);
                }
                file.sync_all().await?;
                if !replace && path.exists() {
                    bail!("{} appeared meanwhile; not replaced", path.display());
                }
                tokio::fs::rename(&part, &path)
                    .await
                    .with_context(|| format!("renaming to {}", path.display()))?;
                anyhow::Ok(n)
            }
            .await;
            bar.finish_and_clear();
            match written {
                Ok(n) => eprintln!("wrote {n} bytes to {}", path.display()),
                Err(e) => {
                    let _ = tokio::fs::remove_file(&part).await;
                    return Err(e);
                }
            }
        }
    }
    Ok(exit::OK)
}

/// A hidden file beside `path`, renamed to it once complete.
fn partial_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "download".into());
    path.with_file_name(format!(".{name}.{}.part", std::process::id()))
}

async fn put(
    mut client: Client,
    task_id: &str,
    path: &Path,
    relative_path: Option<String>,
    json: bool,
) -> anyhow::Result<u8> {
    let mut file = tokio::fs::File::open(path)
        .await
        .with_context(|| format!("opening {}", path.display()))?;
    let meta = file.metadata().await?;
    if !meta.is_file() {
        bail!("{} is not a file", path.display());
    }
    let file_name = path
        .file_name()
        .and_then(|n| n.to_str())
        .with_context(|| format!("{} has no UTF-8 file name", path.display()))?
        .to_string();
    let bar = transfer_bar(&file_name, Some(meta.len()));
    let (failed_tx, failed_rx) = tokio::sync::oneshot::channel::<std::io::Error>();
    let mut first = Some(UploadArtifactRequest {
        task_id: task_id.to_string(),
        relative_path: relative_path.unwrap_or_default(),
        file_name,
        file: None,
    });
    let progress = bar.clone();
    let messages = async_stream::stream! {
        let mut failed_tx = Some(failed_tx);
        loop {
            let mut buf = vec![0u8; CHUNK];
            match file.read(&mut buf).await {
                Ok(n) => {
                    buf.truncate(n);
                    progress.inc(n as u64);
                    if n == 0 && first.is_none() {
                        break;
                    }
                    let is_first = first.is_some();
                    let mut msg = first.take().unwrap_or_default();
                    // Any non-multipart type: agentd takes the bytes as they are.
                    let content_type = if is_first { "application/octet-stream" } else { "" };
                    msg.file = Some(HttpBody { content_type: content_type.into(), data: buf, ..Default::default() });
                    yield msg;
                    if n == 0 {
                        break;
                    }
                }
                // Never end the stream early: agentd would store a truncated
                // file. The call is dropped instead, which cancels it.
                Err(e) => {
                    if let Some(tx) = failed_tx.take() {
                        let _ = tx.send(e);
                    }
                    std::future::pending::<()>().await;
                }
            }
        }
    };
    let call = client.agent.upload_artifact(messages);
    let uploaded = tokio::select! {
        r = call => r,
        Ok(e) = failed_rx => {
            bar.finish_and_clear();
            return Err(anyhow::Error::new(e).context(format!("reading {}; upload abandoned", path.display())));
        }
    };
    bar.finish_and_clear();
    let artifact = uploaded
        .with_context(|| format!("uploading {} to task {task_id}", path.display()))?
        .into_inner();
    if json {
        print_line(&artifact_json(&artifact).to_string())?;
    } else {
        print_line(&artifact_row(&artifact))?;
    }
    Ok(exit::OK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_from_content_disposition() {
        assert_eq!(
            disposition_file_name("attachment; filename=\"a b.csv\"").as_deref(),
            Some("a b.csv")
        );
        assert_eq!(
            disposition_file_name(
                "attachment; filename=\"__.pdf\"; filename*=UTF-8''%E6%8A%A5%E5%91%8A.pdf"
            )
            .as_deref(),
            Some("报告.pdf")
        );
        assert_eq!(
            disposition_file_name("attachment; filename=\"../../x\"").as_deref(),
            Some("x")
        );
        assert_eq!(disposition_file_name("attachment; filename=\"..\""), None);
        assert_eq!(disposition_file_name("attachment"), None);
    }

    #[test]
    fn locations_follow_the_server_rule() {
        let a = |rel: &str| Artifact {
            file_name: "f.csv".into(),
            relative_path: rel.into(),
            ..Default::default()
        };
        assert_eq!(location(&a("")), "f.csv");
        assert_eq!(location(&a("data")), "data/f.csv");
        assert_eq!(location(&a("data/f.csv")), "data/f.csv");
    }
}
