//! Which pod and sandbox a PodEndpoint belongs to, so a CNI DEL removes only what its own sandbox made.
//!
//! A PodEndpoint is named after its pod, and pod names come back: a StatefulSet pod `web-0` moves to another
//! node, its old node returns from a partition (or the runtime garbage-collects the stale sandbox) and runs
//! CNI DEL for the old sandbox. Deleting by name would delete the new pod's PodEndpoint: the gateways drop its
//! peer and its egress is blackholed until it restarts. So the PodEndpoint records who made it — the pod by
//! its controller owner reference (the pod's uid), the sandbox by [`POD_ENDPOINT_SANDBOX_ANNOTATION`] — and a
//! DEL that names another pod or sandbox leaves it alone ([`may_delete`]). A DEL without ids (a plugin older
//! than the ids) deletes by name as before, so a mixed-version rollout behaves as the old version did.

use api::internal::{PodEndpoint, PodEndpointSpec};
use api::names::POD_ENDPOINT_SANDBOX_ANNOTATION;
use dataplane::proto::SandboxInfo;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::Preconditions;

use crate::object::NamespacedName;

/// The sandbox a CNI request comes from. Empty fields are unknown.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sandbox {
    /// CNI_CONTAINERID.
    pub container_id: String,
    /// K8S_POD_UID (containerd and CRI-O give it).
    pub pod_uid: String,
}

impl Sandbox {
    /// From the request; absent (an older plugin) is all unknown.
    pub fn from_request(info: Option<SandboxInfo>) -> Self {
        let info = info.unwrap_or_default();
        Sandbox {
            container_id: info.container_id.trim().to_string(),
            pod_uid: info.pod_uid.trim().to_string(),
        }
    }

    /// Whether the request says nothing about its sandbox (an older plugin).
    pub fn is_unknown(&self) -> bool {
        self.container_id.is_empty() && self.pod_uid.is_empty()
    }
}

/// Why a CNI DEL leaves a PodEndpoint in place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Keep {
    /// The PodEndpoint belongs to another pod of that name (the DEL's K8S_POD_UID is not its owner's uid).
    OtherPod {
        /// The owner's uid.
        owner: String,
        /// The DEL's pod uid.
        request: String,
    },
    /// Another sandbox of the pod wrote it (the DEL's CNI_CONTAINERID is not the recorded one).
    OtherSandbox {
        /// The recorded sandbox.
        recorded: String,
        /// The DEL's sandbox.
        request: String,
    },
}

impl std::fmt::Display for Keep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Keep::OtherPod { owner, request } => write!(
                f,
                "it belongs to pod uid {owner}, the DEL comes from pod uid {request} (a former pod of that name)"
            ),
            Keep::OtherSandbox { recorded, request } => write!(
                f,
                "sandbox {recorded} wrote it, the DEL comes from sandbox {request} (an older sandbox)"
            ),
        }
    }
}

/// Whether a DEL from `sandbox` may delete `pe`. What either side does not know is not held against the DEL
/// (an older plugin sends no ids, an older agent recorded no sandbox): it then deletes by name as before.
pub fn may_delete(pe: &PodEndpoint, sandbox: &Sandbox) -> Result<(), Keep> {
    if let Some(owner) = pe.controller_pod_uid()
        && !sandbox.pod_uid.is_empty()
        && owner != sandbox.pod_uid
    {
        return Err(Keep::OtherPod {
            owner: owner.to_string(),
            request: sandbox.pod_uid.clone(),
        });
    }
    if let Some(recorded) = pe.recorded_sandbox()
        && !sandbox.container_id.is_empty()
        && recorded != sandbox.container_id
    {
        return Err(Keep::OtherSandbox {
            recorded: recorded.to_string(),
            request: sandbox.container_id.clone(),
        });
    }
    Ok(())
}

/// The delete precondition naming exactly this version of `pe`: a PodEndpoint re-created or rewritten since
/// it was read is not deleted.
pub fn precondition(pe: &PodEndpoint) -> Preconditions {
    Preconditions {
        uid: pe.metadata.uid.clone(),
        resource_version: pe.metadata.resource_version.clone(),
    }
}

/// The PodEndpoint for `pod`: same namespace and name, controlled by the pod (`owner_uid`, when known) so it
/// is garbage collected with it, and recording the sandbox that wrote it (when the plugin says).
pub fn pod_endpoint(
    pod: &NamespacedName,
    owner_uid: Option<&str>,
    spec: PodEndpointSpec,
    sandbox: &Sandbox,
) -> PodEndpoint {
    let mut pe = PodEndpoint::new(&pod.name, spec);
    pe.metadata.namespace = Some(pod.namespace.clone());
    pe.metadata.owner_references = owner_uid.map(|uid| {
        vec![OwnerReference {
            api_version: "v1".into(),
            kind: "Pod".into(),
            name: pod.name.clone(),
            uid: uid.to_string(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        }]
    });
    if !sandbox.container_id.is_empty() {
        pe.metadata.annotations = Some(
            [(
                POD_ENDPOINT_SANDBOX_ANNOTATION.to_string(),
                sandbox.container_id.clone(),
            )]
            .into(),
        );
    }
    pe
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sandbox(container_id: &str, pod_uid: &str) -> Sandbox {
        Sandbox {
            container_id: container_id.into(),
            pod_uid: pod_uid.into(),
        }
    }

    fn written_by(s: &Sandbox) -> PodEndpoint {
        let owner = (!s.pod_uid.is_empty()).then_some(s.pod_uid.as_str());
        pod_endpoint(
            &NamespacedName::new("ns", "web-0"),
            owner,
            PodEndpointSpec::default(),
            s,
        )
    }

    #[test]
    fn only_the_writing_sandbox_and_pod_may_delete() {
        let b = sandbox("sandbox-b", "uid-2");
        let pe = written_by(&b);
        assert_eq!(pe.recorded_sandbox(), Some("sandbox-b"));
        assert_eq!(pe.controller_pod_uid(), Some("uid-2"));
        assert_eq!(may_delete(&pe, &b), Ok(()));
        assert_eq!(
            may_delete(&pe, &sandbox("sandbox-a", "uid-1")),
            Err(Keep::OtherPod {
                owner: "uid-2".into(),
                request: "uid-1".into()
            }),
            "a former pod's sandbox"
        );
        assert_eq!(
            may_delete(&pe, &sandbox("sandbox-a", "uid-2")),
            Err(Keep::OtherSandbox {
                recorded: "sandbox-b".into(),
                request: "sandbox-a".into()
            }),
            "an older sandbox of the same pod"
        );
        assert_eq!(
            may_delete(&pe, &sandbox("sandbox-a", "")),
            Err(Keep::OtherSandbox {
                recorded: "sandbox-b".into(),
                request: "sandbox-a".into()
            }),
            "a runtime without K8S_POD_UID"
        );
    }

    #[test]
    fn what_either_side_does_not_know_deletes_by_name() {
        let pe = written_by(&sandbox("sandbox-b", "uid-2"));
        assert_eq!(may_delete(&pe, &Sandbox::default()), Ok(()), "an older plugin");
        let unrecorded = written_by(&Sandbox::default());
        assert_eq!(unrecorded.recorded_sandbox(), None);
        assert!(unrecorded.metadata.annotations.is_none());
        assert_eq!(
            may_delete(&unrecorded, &sandbox("sandbox-a", "uid-1")),
            Ok(()),
            "written by an older agent or plugin"
        );
    }

    #[test]
    fn request_ids_are_trimmed_and_absent_is_unknown() {
        assert!(Sandbox::from_request(None).is_unknown());
        let s = Sandbox::from_request(Some(SandboxInfo {
            container_id: " c1 ".into(),
            pod_uid: String::new(),
        }));
        assert_eq!(s, sandbox("c1", ""));
        assert!(!s.is_unknown());
    }

    #[test]
    fn precondition_names_uid_and_resource_version() {
        let mut pe = written_by(&sandbox("c", "u"));
        pe.metadata.uid = Some("pe-uid".into());
        pe.metadata.resource_version = Some("42".into());
        let p = precondition(&pe);
        assert_eq!(
            (p.uid.as_deref(), p.resource_version.as_deref()),
            (Some("pe-uid"), Some("42"))
        );
    }
}
