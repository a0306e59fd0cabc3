//! The controller's gRPC service (`tidal.v1.Controller`): metric reports
//! from gateways and wake pokes. A report or wake for a deployment this
//! controller does not own is answered with the owner's address, so the
//! sender can redirect.

use tidal_autoscale::Concurrency;
use tidal_proto::pb;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use crate::actor::DeploymentMsg;
use crate::manager::SharedDirectory;
use crate::shard::shard_of;
use crate::supervisor::Routes;

/// How long a wake waits for the deployment's actor to decide.
const WAKE_TIMEOUT_MS: u64 = 5_000;

/// The service.
#[derive(Clone)]
pub struct ControllerService {
    routes: Routes,
    directory: SharedDirectory,
    shards: u32,
}

impl std::fmt::Debug for ControllerService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControllerService").finish_non_exhaustive()
    }
}

impl ControllerService {
    /// A service routing to `routes`, redirecting by `directory`.
    pub fn new(routes: Routes, directory: SharedDirectory, shards: u32) -> Self {
        Self {
            routes,
            directory,
            shards,
        }
    }

    fn owner_address(&self, deployment: &str) -> String {
        let shard = shard_of(deployment, self.shards);
        self.directory
            .read()
            .ok()
            .and_then(|d| d.owner_address(shard).map(str::to_owned))
            .unwrap_or_default()
    }

    /// Delivers one report; returns the redirects for what is not ours.
    fn deliver(&self, report: pb::MetricReport) -> pb::ReportAck {
        let mut redirects: Vec<String> = Vec::new();
        let Ok(routes) = self.routes.read() else {
            return pb::ReportAck::default();
        };
        for m in report.metrics {
            let delivered = routes.get(&m.deployment_id).is_some_and(|actor| {
                actor
                    .cast(DeploymentMsg::Report {
                        second: m.second,
                        concurrency: Concurrency::from_micros(m.concurrency_micros),
                    })
                    .is_ok()
            });
            if !delivered {
                redirects.push(m.deployment_id);
            }
        }
        drop(routes);
        pb::ReportAck {
            redirects: redirects
                .into_iter()
                .map(|deployment_id| pb::Redirect {
                    owner_address: self.owner_address(&deployment_id),
                    deployment_id,
                })
                .collect(),
        }
    }
}

type AckStream =
    std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::ReportAck, Status>> + Send>>;

#[tonic::async_trait]
impl pb::controller_server::Controller for ControllerService {
    type ReportStream = AckStream;

    async fn report(
        &self,
        request: Request<Streaming<pb::MetricReport>>,
    ) -> Result<Response<Self::ReportStream>, Status> {
        let this = self.clone();
        let acks = request
            .into_inner()
            .map(move |report| report.map(|r| this.deliver(r)));
        Ok(Response::new(Box::pin(acks)))
    }

    async fn wake(
        &self,
        request: Request<pb::WakeRequest>,
    ) -> Result<Response<pb::WakeResponse>, Status> {
        let wake = request.into_inner();
        let actor = self
            .routes
            .read()
            .ok()
            .and_then(|r| r.get(&wake.deployment_id).cloned());
        let Some(actor) = actor else {
            return Ok(Response::new(pb::WakeResponse {
                accepted: false,
                owner_address: self.owner_address(&wake.deployment_id),
                desired_replicas: 0,
            }));
        };
        let desired = ractor::call_t!(
            actor,
            |reply| DeploymentMsg::Wake {
                pending: wake.pending,
                reply: Some(reply),
            },
            WAKE_TIMEOUT_MS
        )
        .map_err(|e| Status::unavailable(format!("deployment actor did not answer: {e}")))?;
        Ok(Response::new(pb::WakeResponse {
            accepted: true,
            owner_address: String::new(),
            desired_replicas: desired,
        }))
    }
}
