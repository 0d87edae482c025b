//! The Kubernetes side of a pass: key Secrets, finalizers, status writes and Events. Nothing here knows
//! Azure; `pass.rs` decides what to write, `status.rs` computes it.

pub mod keys;

use std::sync::Arc;

use api::names::{SGC_FINALIZER, key_secret_name};
use api::{GatewayPool, StaticGatewayConfiguration};
use k8s_openapi::api::core::v1::{ObjectReference, Secret};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Resource, ResourceExt};
use serde_json::json;

use crate::status::{EventKind, Outcome, next_status, status_patch};

/// Field manager of the operator's writes.
pub const MANAGER: &str = "kube-egress-gateway-operator";

/// The longest Event note kube-apiserver accepts, in bytes (`NoteLengthLimit` in
/// <https://github.com/kubernetes/kubernetes/blob/v1.28.0/pkg/apis/core/validation/events.go>); a longer one
/// refuses the whole Event.
pub const EVENT_NOTE_LIMIT: usize = 1024;

/// What ends a note cut to [`EVENT_NOTE_LIMIT`].
const CUT: &str = "…";

/// `note` as an Event can carry it: within [`EVENT_NOTE_LIMIT`] bytes, cut at a character boundary and ended
/// with "…" when it was longer (the status condition keeps the whole text).
pub fn event_note(mut note: String) -> String {
    if note.len() <= EVENT_NOTE_LIMIT {
        return note;
    }
    let mut end = EVENT_NOTE_LIMIT - CUT.len();
    while !note.is_char_boundary(end) {
        end -= 1;
    }
    note.truncate(end);
    note.push_str(CUT);
    note
}

/// The one place the operator publishes Events: the note within the API server's limit; a failure to publish
/// is only logged.
async fn publish(
    recorder: &Recorder,
    kind: EventKind,
    reason: String,
    note: String,
    regarding: &ObjectReference,
) {
    let ev = Event {
        type_: match kind {
            EventKind::Normal => EventType::Normal,
            EventKind::Warning => EventType::Warning,
        },
        reason,
        note: Some(event_note(note)),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(e) = recorder.publish(&ev, regarding).await {
        tracing::warn!(error = %e, "publishing an Event failed");
    }
}

/// The operator's Kubernetes client, where its key Secrets live, and its Event recorder.
#[derive(Clone)]
pub struct Kube {
    /// Kubernetes client.
    pub client: kube::Client,
    /// Namespace of the key Secrets (`--secret-namespace`).
    pub secret_namespace: String,
    recorder: Recorder,
}

impl std::fmt::Debug for Kube {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kube")
            .field("secret_namespace", &self.secret_namespace)
            .finish_non_exhaustive()
    }
}

impl Kube {
    /// Writes through `client`; Events are reported as the operator (instance: `$HOSTNAME`).
    pub fn new(client: kube::Client, secret_namespace: String) -> Self {
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: MANAGER.into(),
                instance: std::env::var("HOSTNAME").ok(),
            },
        );
        Kube {
            client,
            secret_namespace,
            recorder,
        }
    }

    /// Computes the status synchronously and returns a future that owns everything it needs: keeping
    /// borrowed arguments out of the future keeps it `Send` for every lifetime (rustc's higher-ranked check).
    pub fn write_status(
        &self,
        sgc: &StaticGatewayConfiguration,
        outcome: &Outcome,
        key: Option<(&str, ObjectReference)>,
    ) -> impl std::future::Future<Output = Result<(), kube::Error>> + Send + 'static {
        let old = sgc.status.clone().unwrap_or_default();
        let (new, events) = next_status(&old, sgc.metadata.generation, outcome, key);
        // Written only when it changed; the patch also clears what the new status no longer has.
        let patch = (new != old).then(|| status_patch(&old, &new));
        let api: Api<StaticGatewayConfiguration> =
            Api::namespaced(self.client.clone(), &sgc.namespace().unwrap_or_default());
        let name = sgc.name_any();
        let reference = sgc.object_ref(&());
        let recorder = self.recorder.clone();
        async move {
            if let Some(patch) = patch {
                api.patch_status(&name, &PatchParams::default(), &Patch::Merge(patch))
                    .await?;
            }
            for (kind, reason, note) in events {
                publish(&recorder, kind, reason, note, &reference).await;
            }
            Ok(())
        }
    }

    /// Publishes a Warning Event on a configuration; a failure to publish is only logged (the Event API is
    /// separate from the configuration's, so it usually works when writing the configuration does not).
    pub async fn warn(&self, sgc: &StaticGatewayConfiguration, reason: &str, note: String) {
        publish(
            &self.recorder,
            EventKind::Warning,
            reason.into(),
            note,
            &sgc.object_ref(&()),
        )
        .await;
    }

    /// Adds the configuration finalizer, conditional on the version read.
    pub async fn add_finalizer(&self, sgc: &StaticGatewayConfiguration) -> Result<(), kube::Error> {
        if sgc.finalizers().iter().any(|f| f == SGC_FINALIZER) {
            return Ok(());
        }
        let api: Api<StaticGatewayConfiguration> =
            Api::namespaced(self.client.clone(), &sgc.namespace().unwrap_or_default());
        let mut finalizers = sgc.finalizers().to_vec();
        finalizers.push(SGC_FINALIZER.into());
        api.patch(
            &sgc.name_any(),
            &PatchParams::default(),
            &Patch::Merge(
                json!({"metadata": {"finalizers": finalizers, "resourceVersion": sgc.resource_version()}}),
            ),
        )
        .await?;
        Ok(())
    }

    /// Records that the configuration adopted the public IP prefix `prefix_id` (its
    /// [`api::names::ADOPTED_PREFIX_ANNOTATION`]) on the object of the uid read. Not conditional on the version
    /// read: the pass has just added the finalizer, and the patch sets this one key only.
    pub async fn set_adopted_prefix(
        &self,
        sgc: &StaticGatewayConfiguration,
        prefix_id: &str,
    ) -> Result<(), kube::Error> {
        let api: Api<StaticGatewayConfiguration> =
            Api::namespaced(self.client.clone(), &sgc.namespace().unwrap_or_default());
        let patch = json!({"metadata": {
            "annotations": {api::names::ADOPTED_PREFIX_ANNOTATION: prefix_id},
            "uid": sgc.uid(),
        }});
        api.patch(&sgc.name_any(), &PatchParams::default(), &Patch::Merge(patch))
            .await?;
        Ok(())
    }

    /// Deletes the key Secret and removes the configuration finalizer (gone already is fine).
    pub async fn finish_deletion(&self, sgc: &StaticGatewayConfiguration) -> Result<(), kube::Error> {
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), &self.secret_namespace);
        match secrets
            .delete(
                &key_secret_name(&sgc.uid().unwrap_or_default()),
                &DeleteParams::default(),
            )
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e),
        }
        let api: Api<StaticGatewayConfiguration> =
            Api::namespaced(self.client.clone(), &sgc.namespace().unwrap_or_default());
        let finalizers: Vec<&String> = sgc.finalizers().iter().filter(|f| *f != SGC_FINALIZER).collect();
        match api
            .patch(
                &sgc.name_any(),
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"finalizers": finalizers, "resourceVersion": sgc.resource_version()}})),
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Every object of a kind, cluster-wide.
    pub async fn list_all<K>(&self) -> Result<Vec<Arc<K>>, kube::Error>
    where
        K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    {
        let list = Api::<K>::all(self.client.clone())
            .list(&ListParams::default())
            .await?;
        Ok(list.items.into_iter().map(Arc::new).collect())
    }

    /// Writes a GatewayPool's status when it differs from the one read.
    pub async fn write_pool_status(
        &self,
        p: &GatewayPool,
        new: &api::GatewayPoolStatus,
    ) -> Result<(), kube::Error> {
        let old = p.status.clone().unwrap_or_default();
        if *new != old {
            Api::<GatewayPool>::all(self.client.clone())
                .patch_status(
                    &p.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(status_patch(&old, new)),
                )
                .await?;
        }
        Ok(())
    }

    /// Removes the pool finalizer.
    pub async fn release_pool(&self, p: &GatewayPool) -> Result<(), kube::Error> {
        let finalizers = p
            .finalizers()
            .iter()
            .filter(|f| *f != api::names::POOL_FINALIZER)
            .cloned()
            .collect();
        self.set_pool_finalizers(p, finalizers).await
    }

    /// Patches a GatewayPool's finalizers, conditional on the version read.
    pub async fn set_pool_finalizers(
        &self,
        p: &GatewayPool,
        finalizers: Vec<String>,
    ) -> Result<(), kube::Error> {
        let patch = json!({"metadata": {"finalizers": finalizers, "resourceVersion": p.resource_version()}});
        Api::<GatewayPool>::all(self.client.clone())
            .patch(&p.name_any(), &PatchParams::default(), &Patch::Merge(patch))
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_notes_are_cut_to_the_api_servers_limit_at_a_character_boundary() {
        let short = "Degraded=true: fine".to_string();
        assert_eq!(event_note(short.clone()), short);
        let exact = "x".repeat(EVENT_NOTE_LIMIT);
        assert_eq!(event_note(exact.clone()), exact);

        let long = format!("Degraded=true: {}", "instance-ü, ".repeat(200));
        let note = event_note(long.clone());
        assert!(note.len() <= EVENT_NOTE_LIMIT, "{} bytes", note.len());
        assert!(note.len() > EVENT_NOTE_LIMIT - 8, "cut no shorter than needed");
        let kept = note.strip_suffix('…').expect("a cut note ends with an ellipsis");
        assert!(long.starts_with(kept));
    }
}
