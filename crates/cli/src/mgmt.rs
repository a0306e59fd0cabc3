//! The management commands' client: `tidal.v1.Management` over gRPC on the
//! management API's URL (found by `connect.rs`: flags, environment,
//! cluster file), with the key in the `authorization` metadata.
//!
//! What an answer means for the exit status: a status the API sent (it
//! carries `tidal-error-code`) is an [`Answered`] error, exit 1, printed
//! with its field; no answer (connection refused or broken, a timeout, an
//! UNAVAILABLE the API did not send) is [`crate::client::Unreachable`],
//! exit 3.
//!
//! `--json` prints what the REST API answers for the same operation, built
//! from the gRPC answer by `tidal_api::views` (the code REST uses), so
//! scripts keep the shapes they read.

use std::future::Future;
use std::time::Duration;

use serde_json::Value;
use tidal_api::{ERROR_CODE_KEY, FIELD_KEY};
use tidal_proto::pb;
use tidal_proto::pb::management_client::ManagementClient;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Response, Status};

use crate::Failure;
use crate::client::{Answered, Connect, Target, chain};

/// How long a management call may take.
const API_TIMEOUT: Duration = Duration::from_secs(30);
/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The gRPC client type the calls get.
pub(crate) type Client = ManagementClient<Channel>;

/// The management API, over gRPC.
#[derive(Debug, Clone)]
pub(crate) struct Mgmt {
    client: Client,
    key: MetadataValue<Ascii>,
    target: Target,
}

impl Mgmt {
    /// The API from `connect` (flags, environment, cluster file).
    pub(crate) fn connect(connect: &Connect) -> Result<Self, Failure> {
        Self::new(connect.resolve()?)
    }

    /// A client of `target`; it connects on the first call (within a tokio
    /// runtime).
    pub(crate) fn new(target: Target) -> Result<Self, Failure> {
        let endpoint = Endpoint::from_shared(target.url.clone())
            .map_err(|e| Failure::Usage(format!("{:?} is not a valid URL: {e}", target.url)))?
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(API_TIMEOUT);
        let key = format!("Bearer {}", target.key).parse().map_err(|_| {
            Failure::Usage("the API key has characters a header cannot carry".into())
        })?;
        Ok(Self {
            client: ManagementClient::new(endpoint.connect_lazy()),
            key,
            target,
        })
    }

    /// The API's URL.
    pub(crate) fn url(&self) -> &str {
        &self.target.url
    }

    /// Calls one RPC (`rpc` names it in messages) with the key:
    /// `api.call("ListModels", request, |mut c, r| async move { c.list_models(r).await })`.
    pub(crate) async fn call<T, R, F, Fut>(&self, rpc: &str, message: T, f: F) -> Result<R, Failure>
    where
        F: FnOnce(Client, Request<T>) -> Fut,
        Fut: Future<Output = Result<Response<R>, Status>>,
    {
        let mut request = Request::new(message);
        request
            .metadata_mut()
            .insert("authorization", self.key.clone());
        f(self.client.clone(), request)
            .await
            .map(Response::into_inner)
            .map_err(|status| self.failure(rpc, &status))
    }

    /// One deployment (id, `production` or `development`).
    pub(crate) async fn deployment(
        &self,
        model: &str,
        deployment: &str,
    ) -> Result<pb::Deployment, Failure> {
        self.call(
            "GetDeployment",
            which(model, deployment),
            |mut c, r| async move { c.get_deployment(r).await },
        )
        .await
    }

    /// What a status means: unreachable (exit 3) or the API's answer
    /// (exit 1).
    fn failure(&self, rpc: &str, status: &Status) -> Failure {
        let metadata = |key: &str| {
            status
                .metadata()
                .get(key)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let code = metadata(ERROR_CODE_KEY);
        let no_answer = matches!(
            status.code(),
            Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown
        );
        if no_answer && code.is_none() {
            return self.target.unreachable(rpc, &why(status));
        }
        Failure::Other(anyhow::Error::new(Answered {
            status: format!("gRPC {:?}", status.code()),
            code,
            message: status.message().to_owned(),
            field: metadata(FIELD_KEY),
        }))
    }
}

/// A status's message and the errors under it, `a: b: c`.
fn why(status: &Status) -> String {
    let message = if status.message().is_empty() {
        format!("{:?}", status.code())
    } else {
        status.message().to_owned()
    };
    match std::error::Error::source(status) {
        Some(source) if !message.contains(&source.to_string()) => {
            format!("{message}: {}", chain(source))
        }
        _ => message,
    }
}

/// A deployment reference.
pub(crate) fn which(model: &str, deployment: &str) -> pb::DeploymentRef {
    pb::DeploymentRef {
        model_id: model.to_owned(),
        deployment_id: deployment.to_owned(),
    }
}

/// A deployment as the REST API shows it (`DeploymentV1`).
pub(crate) fn deployment_json(d: pb::Deployment) -> Result<Value, Failure> {
    let id = d.id.clone();
    let d = tidal_types::Deployment::try_from(d).map_err(|e| {
        Failure::Other(anyhow::anyhow!(
            "the API answered deployment {id} in a form this CLI cannot read: {e}"
        ))
    })?;
    tidal_api::views::deployment_json(&d).map_err(|e| Failure::Other(anyhow::anyhow!("{e}")))
}

/// Prints a JSON value on one line (`--json`).
pub(crate) fn print_json(value: &Value) -> Result<(), Failure> {
    crate::client::print(&format!("{value}\n"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::{Service, as_answered};
    use tonic::metadata::MetadataMap;

    fn mgmt() -> Mgmt {
        Mgmt::new(Target {
            service: Service::Api,
            url: "http://127.0.0.1:9".into(),
            key: "k".into(),
        })
        .unwrap()
    }

    #[tokio::test]
    async fn an_answered_status_keeps_its_field_and_code() {
        let mut metadata = MetadataMap::new();
        metadata.insert(ERROR_CODE_KEY, "invalid_field".parse().unwrap());
        metadata.insert(FIELD_KEY, "max_replica".parse().unwrap());
        let status = Status::with_metadata(Code::InvalidArgument, "too many", metadata);
        let failure = mgmt().failure("UpdateAutoscalingSettings", &status);
        let answered = as_answered(&failure).unwrap();
        assert_eq!(
            answered.to_string(),
            "too many (field max_replica; gRPC InvalidArgument invalid_field)"
        );
        // The API's own UNAVAILABLE (its store or a worker) is an answer.
        let mut metadata = MetadataMap::new();
        metadata.insert(ERROR_CODE_KEY, "bad_gateway".parse().unwrap());
        let status = Status::with_metadata(Code::Unavailable, "worker w1 …", metadata);
        assert!(as_answered(&mgmt().failure("ReplicaLogs", &status)).is_some());
    }

    #[tokio::test]
    async fn no_answer_is_unreachable() {
        for code in [Code::Unavailable, Code::DeadlineExceeded, Code::Cancelled] {
            let failure = mgmt().failure("ListModels", &Status::new(code, "tcp connect error"));
            let Failure::Other(e) = &failure else {
                panic!("{failure:?}")
            };
            let unreachable = e.downcast_ref::<crate::client::Unreachable>().unwrap();
            assert!(
                unreachable
                    .0
                    .contains("cannot reach the management API at http://127.0.0.1:9")
                    && unreachable.0.contains("ListModels"),
                "{unreachable}"
            );
        }
    }
}
