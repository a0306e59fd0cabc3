//! The worker's gRPC service (`tidal.v1.Worker`): replica logs, read from
//! the node the replica runs (or ran) on. The API finds the node through the
//! replica's record (`worker_id`) and the node's record (`address`).

use std::path::{Path, PathBuf};

use tidal_proto::pb;
use tonic::{Request, Response, Status};

/// Serves `tidal.v1.Worker` from a worker's log directory.
#[derive(Debug, Clone)]
pub struct WorkerService {
    worker_id: String,
    log_dir: PathBuf,
}

impl WorkerService {
    /// A service reading replica logs from `log_dir`.
    pub fn new(worker_id: String, log_dir: PathBuf) -> Self {
        Self { worker_id, log_dir }
    }
}

/// A replica's kept output (the rotated file, then the current one), oldest
/// first, and whether rotation dropped older lines. `None` if there is none.
pub fn read_logs(log_dir: &Path, replica_id: &str) -> std::io::Result<Option<(Vec<String>, bool)>> {
    let current = log_dir.join(format!("{replica_id}.log"));
    let rotated = log_dir.join(format!("{replica_id}.log.1"));
    let mut lines = Vec::new();
    let mut found = false;
    let mut truncated = false;
    for (path, is_rotated) in [(rotated, true), (current, false)] {
        match std::fs::read(&path) {
            Ok(bytes) => {
                found = true;
                // A rotated file means earlier output may be gone.
                truncated |= is_rotated;
                lines.extend(String::from_utf8_lossy(&bytes).lines().map(str::to_owned));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(found.then_some((lines, truncated)))
}

#[tonic::async_trait]
impl pb::worker_server::Worker for WorkerService {
    async fn replica_logs(
        &self,
        request: Request<pb::ReplicaLogsRequest>,
    ) -> Result<Response<pb::ReplicaLogsResponse>, Status> {
        let request = request.into_inner();
        let id = request.replica_id;
        if id.is_empty() || id.contains('/') || id.starts_with('.') {
            return Err(Status::invalid_argument(format!(
                "replica_id must be a replica's id; got {id:?}"
            )));
        }
        let dir = self.log_dir.clone();
        let read = {
            let id = id.clone();
            tokio::task::spawn_blocking(move || read_logs(&dir, &id))
                .await
                .map_err(|e| Status::internal(e.to_string()))?
        };
        let (mut lines, mut truncated) = match read {
            Ok(Some(found)) => found,
            Ok(None) => {
                return Err(Status::not_found(format!(
                    "worker {} has no logs of replica {id}",
                    self.worker_id
                )));
            }
            Err(e) => return Err(Status::internal(format!("reading the logs of {id}: {e}"))),
        };
        let tail = usize::try_from(request.tail_lines).unwrap_or(usize::MAX);
        if tail > 0 && lines.len() > tail {
            lines.drain(..lines.len() - tail);
            truncated = true;
        }
        Ok(Response::new(pb::ReplicaLogsResponse { lines, truncated }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pb::worker_server::Worker as _;

    #[tokio::test]
    async fn serves_rotated_then_current_lines_and_tails() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("r1.log.1"), "a\nb\n").unwrap();
        std::fs::write(dir.path().join("r1.log"), "c\nd\n").unwrap();
        std::fs::write(dir.path().join("r2.log"), "only\n").unwrap();
        let service = WorkerService::new("w".into(), dir.path().to_owned());
        let ask = |id: &str, tail| {
            service.replica_logs(Request::new(pb::ReplicaLogsRequest {
                replica_id: id.into(),
                tail_lines: tail,
            }))
        };
        let all = ask("r1", 0).await.unwrap().into_inner();
        assert_eq!(all.lines, ["a", "b", "c", "d"]);
        assert!(
            all.truncated,
            "a rotated file means older lines may be gone"
        );
        let tail = ask("r1", 3).await.unwrap().into_inner();
        assert_eq!(tail.lines, ["b", "c", "d"]);
        let whole = ask("r2", 5).await.unwrap().into_inner();
        assert_eq!(whole.lines, ["only"]);
        assert!(!whole.truncated);
        let missing = ask("r3", 0).await.unwrap_err();
        assert_eq!(missing.code(), tonic::Code::NotFound);
        assert!(missing.message().contains("no logs of replica r3"));
        let bad = ask("../etc/passwd", 0).await.unwrap_err();
        assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    }
}
