//! What the plugin tells the node agent, seen from the agent's socket: the plugin binary runs as a runtime
//! runs it (environment, configuration on stdin) against a recording agent.

mod runtime;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use dataplane::proto::nic_service_server::{NicService, NicServiceServer};
use dataplane::proto::{
    NicAddRequest, NicAddResponse, NicDelRequest, NicDelResponse, PodInfo, PodRetrieveRequest,
    PodRetrieveResponse, SandboxInfo,
};
use tonic::{Request, Response, Status};

/// An agent that records the NicDel requests it gets.
#[derive(Clone, Default)]
struct RecordingAgent {
    dels: Arc<Mutex<Vec<NicDelRequest>>>,
}

#[tonic::async_trait]
impl NicService for RecordingAgent {
    async fn nic_add(&self, _: Request<NicAddRequest>) -> Result<Response<NicAddResponse>, Status> {
        Err(Status::unimplemented("not under test"))
    }
    async fn nic_del(&self, req: Request<NicDelRequest>) -> Result<Response<NicDelResponse>, Status> {
        self.dels
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(req.into_inner());
        Ok(Response::new(NicDelResponse {}))
    }
    async fn pod_retrieve(
        &self,
        _: Request<PodRetrieveRequest>,
    ) -> Result<Response<PodRetrieveResponse>, Status> {
        Err(Status::unimplemented("not under test"))
    }
}

/// Runs the plugin binary like a runtime: CNI_* environment, configuration on stdin; returns its stdout.
fn run_plugin(command: &str, container_id: &str, netns: &Path, args: &str, conf: &str) -> String {
    let out = runtime::run(
        &[
            ("CNI_COMMAND", command.as_ref()),
            ("CNI_CONTAINERID", container_id.as_ref()),
            ("CNI_NETNS", netns.as_os_str()),
            ("CNI_IFNAME", "eth0".as_ref()),
            ("CNI_ARGS", args.as_ref()),
        ],
        conf,
    );
    let stdout = runtime::text(&out.stdout);
    assert!(
        out.status.success(),
        "{command} failed: {stdout} {}",
        runtime::text(&out.stderr)
    );
    stdout
}

/// A DEL of an annotated pod whose network namespace is gone (a stale sandbox) reaches the agent with the
/// sandbox id and, when the runtime gives it, the pod uid: what the agent needs to leave a newer pod of the
/// same name alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn del_tells_the_agent_its_sandbox_and_pod_uid() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("cni.sock");
    let agent = RecordingAgent::default();
    let listener = tokio::net::UnixListener::bind(&socket).expect("bind the agent socket");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(NicServiceServer::new(agent.clone()))
            .serve_with_incoming_shutdown(tokio_stream::wrappers::UnixListenerStream::new(listener), async {
                let _ = stopped.await;
            }),
    );
    let conf = format!(
        r#"{{"cniVersion":"1.0.0","name":"k8s","type":"kube-egress-cni","socketPath":{socket:?},
            "runtimeConfig":{{"io.kubernetes.cri.pod-annotations":{{"kubernetes.azure.com/static-gateway-configuration":"gw"}}}}}}"#,
        socket = socket.display().to_string()
    );
    let gone: PathBuf = dir.path().join("netns-gone");
    let runs = [
        (
            "sandbox-a",
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=web-0;K8S_POD_INFRA_CONTAINER_ID=sandbox-a;K8S_POD_UID=uid-1",
        ),
        // A runtime that does not pass K8S_POD_UID.
        (
            "sandbox-b",
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=web-0",
        ),
    ];
    for (container_id, args) in runs {
        let (conf, gone) = (conf.clone(), gone.clone());
        let out = tokio::task::spawn_blocking(move || run_plugin("DEL", container_id, &gone, args, &conf))
            .await
            .expect("plugin thread");
        assert!(out.contains(r#""cniVersion":"1.0.0""#), "{out}");
    }
    let _ = stop.send(());
    server.await.expect("join").expect("agent served");
    let dels = agent.dels.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let pod = Some(PodInfo {
        pod_name: "web-0".into(),
        pod_namespace: "ns".into(),
    });
    assert_eq!(
        dels,
        vec![
            NicDelRequest {
                pod_config: pod.clone(),
                sandbox: Some(SandboxInfo {
                    container_id: "sandbox-a".into(),
                    pod_uid: "uid-1".into(),
                }),
            },
            NicDelRequest {
                pod_config: pod,
                sandbox: Some(SandboxInfo {
                    container_id: "sandbox-b".into(),
                    pod_uid: String::new(),
                }),
            },
        ]
    );
}
