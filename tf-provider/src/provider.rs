//! The `tfplugin6.Provider` service: decoding, dispatch to the resource kinds, and the cluster calls.

use std::collections::HashMap;
use std::time::Duration;

use tokio::sync::{Mutex, watch};
use tonic::{Request, Response, Status};

use crate::cluster::{self, ClusterError, ProviderConfig};
use crate::diag::{self, Path};
use crate::proto::tfplugin6 as pb;
use crate::proto::tfplugin6::provider_server::Provider as ProviderService;
use crate::resources::{self, Kind, Object, Op, pool, sgc};
use crate::schema::{Attribute, Block, NestedBlock, Nesting, Type};
use crate::value::Value;

const DEFAULT_DELETE_TIMEOUT: Duration = Duration::from_secs(300);

/// What ConfigureProvider left us with.
#[derive(Default)]
enum Configured {
    /// Not configured yet.
    #[default]
    No,
    /// Configured with values that are not known yet (plan before the cluster exists).
    Unknown,
    /// Credentials; the client is built on first use.
    Known(Box<ProviderConfig>, Option<kube::Client>),
}

impl std::fmt::Debug for Configured {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Configured::No => f.write_str("No"),
            Configured::Unknown => f.write_str("Unknown"),
            Configured::Known(cfg, client) => write!(f, "Known({cfg:?}, client built: {})", client.is_some()),
        }
    }
}

/// The provider.
#[derive(Debug)]
pub struct Provider {
    configured: Mutex<Configured>,
    stop_tx: watch::Sender<bool>,
}

impl Default for Provider {
    fn default() -> Self {
        Self::new()
    }
}

/// The provider block schema (the kubernetes provider's attribute names).
pub fn provider_schema() -> Block {
    let s = |name, desc| Attribute::optional(name, Type::String, desc);
    Block {
        description: "Manages kube-egress-gateway gateway pools and static gateway configurations. Credentials may be unknown at plan time (e.g. from an `azurerm_kubernetes_cluster` created in the same apply): planning is done offline.",
        attributes: vec![
            s(
                "host",
                "Kubernetes API server URL, e.g. `azurerm_kubernetes_cluster.aks.kube_config[0].host`.",
            ),
            s("token", "Bearer token.").sensitive(),
            s("client_certificate", "PEM client certificate (mutual TLS)."),
            s("client_key", "PEM client key (mutual TLS).").sensitive(),
            s("cluster_ca_certificate", "PEM CA bundle of the API server."),
            s(
                "config_path",
                "Path to a kubeconfig file (used when `host` is not set).",
            ),
            s("config_context", "Context in the kubeconfig."),
        ],
        blocks: vec![NestedBlock {
            name: "exec",
            block: Block {
                description: "A client-go credential plugin that prints the token, used with `host` instead of `token` (for AKS with Entra ID: `kubelogin`). Run when the provider first contacts the cluster, and again when the credential expires; never interactively.",
                attributes: vec![
                    Attribute::required(
                        "api_version",
                        Type::String,
                        "ExecCredential version the plugin speaks, e.g. `client.authentication.k8s.io/v1beta1`.",
                    ),
                    Attribute::required("command", Type::String, "The program, e.g. `kubelogin`."),
                    Attribute::optional("args", Type::List(Box::new(Type::String)), "Its arguments."),
                    Attribute::optional(
                        "env",
                        Type::Map(Box::new(Type::String)),
                        "Extra environment variables for it.",
                    ),
                ],
                blocks: vec![],
            },
            nesting: Nesting::List,
            min_items: 0,
            max_items: 1,
            force_new: false,
        }],
    }
}

/// An `exec` block needs `host` (a kubeconfig from `config_path` has its own user) and replaces `token`.
fn validate_exec(cfg: &Value) -> Vec<pb::Diagnostic> {
    let has_exec = matches!(cfg.get("exec"), Value::List(items) if !items.is_empty());
    if !has_exec {
        return Vec::new();
    }
    let exec_path = Path::attr("exec");
    let mut d = Vec::new();
    if cfg.get("host").is_null() {
        d.push(diag::error(
            "exec needs host",
            "an exec block authenticates to the API server named by `host`; set `host` (and \
             `cluster_ca_certificate`), or use `config_path` with a kubeconfig whose user runs the plugin",
            Some(&exec_path),
        ));
    }
    if !cfg.get("token").is_null() {
        d.push(diag::error(
            "Conflicting credentials",
            "set either `token` or an `exec` block, not both",
            Some(&exec_path),
        ));
    }
    d
}

fn schema_proto(block: &Block) -> pb::Schema {
    pb::Schema {
        version: 0,
        block: Some(block.to_proto()),
    }
}

/// Decodes a DynamicValue against a block (missing value = null; JSON when msgpack is empty).
fn decode(dv: Option<&pb::DynamicValue>, block: &Block) -> Result<Value, pb::Diagnostic> {
    let Some(dv) = dv else {
        return Ok(Value::Null);
    };
    let v = if !dv.msgpack.is_empty() {
        Value::from_msgpack(&dv.msgpack)
    } else if !dv.json.is_empty() {
        serde_json::from_slice::<serde_json::Value>(&dv.json)
            .map(|j| Value::from_json(&j))
            .map_err(Into::into)
    } else {
        Ok(Value::Null)
    };
    v.map(|v| block.normalise(v))
        .map_err(|e| diag::error("Cannot decode a value from Terraform", e.to_string(), None))
}

fn encode(v: &Value) -> Option<pb::DynamicValue> {
    Some(pb::DynamicValue {
        msgpack: v.to_msgpack(),
        json: vec![],
    })
}

fn unknown_type(type_name: &str) -> pb::Diagnostic {
    diag::error(
        "Unknown type",
        format!(
            "this provider has no {type_name}; it offers {}",
            Kind::ALL.map(Kind::type_name).join(" and ")
        ),
        None,
    )
}

/// The kind a request's type name names, or the diagnostic for a type this provider does not have.
fn kind_of(type_name: &str) -> Result<Kind, pb::Diagnostic> {
    Kind::from_type_name(type_name).ok_or_else(|| unknown_type(type_name))
}

fn cluster_diag(summary: &str, e: &ClusterError) -> pb::Diagnostic {
    let detail = match e {
        ClusterError::Api { message, code } => {
            format!("the Kubernetes API server answered {code}: {message}")
        }
        other => other.to_string(),
    };
    diag::error(summary, detail, None)
}

impl Provider {
    /// A provider that is not configured yet.
    pub fn new() -> Self {
        Provider {
            configured: Mutex::new(Configured::No),
            stop_tx: watch::channel(false).0,
        }
    }

    async fn client(&self) -> Result<kube::Client, pb::Diagnostic> {
        let mut guard = self.configured.lock().await;
        match &mut *guard {
            Configured::Known(cfg, cached) => {
                if let Some(c) = cached {
                    return Ok(c.clone());
                }
                let c = cfg
                    .client()
                    .await
                    .map_err(|e| diag::error("Cannot configure the Kubernetes client", e, None))?;
                *cached = Some(c.clone());
                Ok(c)
            }
            Configured::Unknown => Err(diag::error(
                "Provider configuration is not known yet",
                "The provider's credentials depend on values known only after apply (for example an AKS cluster \
                 created in this run), so it cannot reach the cluster in this step. Apply the cluster first \
                 (terraform apply -target=...), or read its credentials from a data source.",
                None,
            )),
            Configured::No => Err(diag::error(
                "Provider not configured",
                "ConfigureProvider was not called",
                None,
            )),
        }
    }

    async fn read(&self, kind: Kind, state: &Value) -> Result<Value, pb::Diagnostic> {
        let client = self.client().await?;
        match kind {
            Kind::Sgc => read::<api::StaticGatewayConfiguration>(client, state).await,
            Kind::Pool => read::<api::GatewayPool>(client, state).await,
        }
    }

    /// State written before the provider had `uid` holds null there. A refresh fills it, but a plan without
    /// one (`plan -refresh=false`) would see null become the UID, a change, and replace every configuration
    /// whose `replace_triggered_by` names it. So the upgrade reads the UID from the cluster (as SDKv2's state
    /// upgraders may use the configured client) when it can be reached; otherwise it stays null.
    async fn with_uid(&self, kind: Kind, state: Value) -> Value {
        if state.is_null() || !state.get("uid").is_null() {
            return state;
        }
        // A plan does not save the upgraded state, so each plan reads again until an apply or refresh: short.
        let uid = match tokio::time::timeout(UID_READ_LIMIT, self.read(kind, &state)).await {
            Ok(Ok(live)) => live.get("uid").clone(),
            _ => return state,
        };
        match (uid, state) {
            (uid @ Value::String(_), Value::Map(mut m)) => {
                m.insert("uid".into(), uid);
                Value::Map(m)
            }
            (_, state) => state,
        }
    }

    async fn apply(&self, kind: Kind, prior: &Value, planned: &Value) -> Result<Value, ApplyFailure> {
        let client = self.client().await?;
        let mut stop = self.stop_tx.subscribe();
        if kind == Kind::Pool && planned.is_null() {
            refuse_pool_in_use(&client, resources::object_name(prior), &mut stop).await?;
        }
        match kind {
            Kind::Sgc => apply::<api::StaticGatewayConfiguration>(client, prior, planned, stop).await,
            Kind::Pool => apply::<api::GatewayPool>(client, prior, planned, stop).await,
        }
    }
}

/// How long a pool delete gives the configurations on the pool to start being deleted. Without a reference
/// from the configurations to the pool (a literal node pool name), `terraform destroy` deletes both at once,
/// and the configurations' deletes may reach the cluster a moment after the pool's.
const POOL_IN_USE_GRACE: Duration = Duration::from_secs(5);

/// Refuses, before anything is deleted, to delete a pool that configurations (not being deleted themselves)
/// still use: the operator would keep it until they go, so the delete would hang until its timeout and
/// leave the pool Terminating (a replaced pool whose configurations are not replaced with it). Once any
/// configuration on the pool is being deleted, a destroy is under way: the delete then waits for them as
/// always (Terraform deletes at most 10 objects at a time, so the rest may start later). Configurations that
/// start being deleted within [`POOL_IN_USE_GRACE`] count so. Credentials that may not list configurations
/// skip the check and get the plain delete.
async fn refuse_pool_in_use(
    client: &kube::Client,
    name: &str,
    stop: &mut watch::Receiver<bool>,
) -> Result<(), pb::Diagnostic> {
    let pools: kube::Api<api::GatewayPool> = kube::Api::all(client.clone());
    let sgcs: kube::Api<api::StaticGatewayConfiguration> = kube::Api::all(client.clone());
    let cannot_check = |e: &ClusterError| {
        cluster_diag(
            &format!("Cannot check which configurations use GatewayPool {name} before deleting it"),
            e,
        )
    };
    let forbidden = |e: &ClusterError| matches!(e, ClusterError::Api { code: 403, .. });
    let deadline = tokio::time::Instant::now() + POOL_IN_USE_GRACE;
    loop {
        let Some(pool) = cluster::get(&pools, name).await.map_err(|e| cannot_check(&e))? else {
            return Ok(());
        };
        let all = match cluster::list(&sgcs).await {
            Ok(all) => all,
            Err(e) if forbidden(&e) => {
                tracing::warn!(pool = name, error = %e, "cannot list configurations: deleting the pool without checking its users");
                return Ok(());
            }
            Err(e) => return Err(cannot_check(&e)),
        };
        let users = pool::users(&pool, &all);
        if users.staying.is_empty() || users.leaving > 0 {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(pool::in_use(name, &users.staying));
        }
        cluster::pause(stop)
            .await
            .map_err(|e| cluster_diag(&format!("Cannot delete {name}"), &e))?;
    }
}

/// The state of the object a state names; null when it does not exist.
async fn read<K: Object>(client: kube::Client, state: &Value) -> Result<Value, pb::Diagnostic> {
    let api = K::api(client, state);
    match cluster::get(&api, resources::object_name(state)).await {
        Ok(Some(obj)) => Ok(K::state_from_object(state, &obj)),
        Ok(None) => Ok(Value::Null),
        Err(e) => Err(cluster_diag(
            &format!("Cannot read {} {}", K::kind(&()), K::KIND.display_id(state)),
            &e,
        )),
    }
}

/// Applies a planned change (a delete when `planned` is null). A failure after the object was written (a
/// wait that ran out of time or was interrupted) carries the object's state as it is in the cluster, so that
/// Terraform records the object (tainted, when it was being created) instead of forgetting it.
async fn apply<K: Object>(
    client: kube::Client,
    prior: &Value,
    planned: &Value,
    mut stop: watch::Receiver<bool>,
) -> Result<Value, ApplyFailure> {
    if planned.is_null() {
        let timeout = resources::timeout(prior, Op::Delete, DEFAULT_DELETE_TIMEOUT)?;
        let api = K::api(client, prior);
        return cluster::delete_and_wait(&api, resources::object_name(prior), timeout, &mut stop)
            .await
            .map(|()| Value::Null)
            .map_err(|e| cluster_diag(&format!("Cannot delete {}", K::KIND.display_id(prior)), &e).into());
    }
    let op = if prior.is_null() { Op::Create } else { Op::Update };
    let timeout = resources::timeout(planned, op, K::KIND.default_apply_timeout())?;
    let api = K::api(client, planned);
    let name = resources::object_name(planned);
    let object = format!("{} {}", K::kind(&()), K::KIND.display_id(planned));
    let cannot_apply = |e: &ClusterError| cluster_diag(&format!("Cannot apply {object}"), e);
    if op == Op::Create {
        // Terraform plans a create when its state has no such object, which says nothing of the cluster: one
        // applied with kubectl, a chart or another Terraform state must be imported, not taken over (a later
        // destroy would delete it, and the operator release its egress IPs).
        if let Some(existing) = cluster::get(&api, name).await.map_err(|e| cannot_apply(&e))? {
            let meta = existing.meta();
            let found = Found {
                terminating: meta.deletion_timestamp.is_some(),
                by_this_provider: meta
                    .managed_fields
                    .iter()
                    .flatten()
                    .any(|m| m.manager.as_deref() == Some(cluster::FIELD_MANAGER)),
            };
            return Err(exists(K::KIND, &K::kind(&()), planned, found).into());
        }
    }
    // A create does not force ownership: should an object of this name appear after the check above, values of
    // its other managers that differ from ours conflict (an error) instead of being taken over. (Equal values
    // would be shared, not refused: the check above is what refuses an existing object.)
    let take_over = op == Op::Update;
    let applied = cluster::apply(
        &api,
        name,
        &K::manifest(planned),
        &K::KIND.spec_fields(),
        take_over,
    )
    .await
    .map_err(|e| cannot_apply(&e))?;
    let waited = cluster::wait_for(&api, name, timeout, &mut stop, K::is_ready, K::describe_wait).await;
    let state = |obj: &K| merge_planned(planned, K::state_from_object(planned, obj));
    match waited {
        Ok(obj) => Ok(state(&obj)),
        Err(e) => Err(ApplyFailure {
            diagnostic: match e {
                ClusterError::Stopped => cluster_diag(&format!("Stopped waiting for {object}"), &e),
                _ => cluster_diag(&format!("{object} {}", K::KIND.not_ready()), &e),
            },
            // The object exists (it was just applied): a failed read must not leave it out of the state, or the
            // next apply would find it "made elsewhere". Only a read that finds it gone does.
            state: match cluster::get(&api, name).await {
                Ok(found) => found.map(|o| state(&o)),
                Err(_) => Some(state(&applied)),
            },
        }),
    }
}

/// What a create found in the cluster under its name.
#[derive(Clone, Copy, Debug)]
struct Found {
    /// Being deleted (its finalizer has not completed).
    terminating: bool,
    /// This provider has written it before (its field manager is among the object's managers).
    by_this_provider: bool,
}

/// The error of a create refused because the cluster already has an object of that name: what to do instead,
/// with the import command. The resource's address is not in the protocol's request; Terraform shows it with
/// the diagnostic (`with <address>`), which points at the resource's `name`.
fn exists(kind: Kind, kube_kind: &str, planned: &Value, found: Found) -> pb::Diagnostic {
    let id = kind.display_id(planned);
    let type_name = kind.type_name();
    let at = Path::attr("name");
    if found.terminating {
        return diag::error(
            format!("{kube_kind} {id} is being deleted"),
            format!(
                "The cluster still has the {kube_kind} {id}, being deleted: its finalizer has not completed \
                 (the operator first releases what it made in Azure for it). It was left as it is. Apply again \
                 once it is gone."
            ),
            Some(&at),
        );
    }
    let import = format!(
        "import it into the state first: `terraform import {type_name}.<name> {id}`, where `{type_name}.<name>` \
         is this resource's address (Terraform names it with this error), or add an `import` block with `to` \
         that address and `id = \"{id}\"`"
    );
    let detail = if found.by_this_provider {
        format!(
            "The cluster already has the {kube_kind} {id}, written by this provider, and this resource's state \
             does not hold it. Either an earlier apply made it and its state was not saved (Terraform was \
             stopped, or the state could not be written): {import}; or another Terraform state manages it; or \
             this is a replacement with `create_before_destroy`, which cannot work for a name that exists only \
             once: remove `create_before_destroy` or give the new object another name. It was left as it is."
        )
    } else {
        format!(
            "The cluster already has the {kube_kind} {id}, and Terraform's state does not: it was made outside \
             this configuration (kubectl, a Helm chart, another Terraform state). Creating it here would take it \
             over, and a later destroy would delete it. It was left as it is. To manage it with Terraform, \
             {import}. Otherwise give this resource another name."
        )
    };
    diag::error(format!("{kube_kind} {id} already exists"), detail, Some(&at))
}

/// Why an apply failed, and the object's state when it exists in the cluster nonetheless.
#[derive(Debug)]
struct ApplyFailure {
    diagnostic: pb::Diagnostic,
    state: Option<Value>,
}

impl From<pb::Diagnostic> for ApplyFailure {
    fn from(diagnostic: pb::Diagnostic) -> Self {
        ApplyFailure {
            diagnostic,
            state: None,
        }
    }
}

/// Apply must return every known planned value unchanged; only unknowns take the remote value.
fn merge_planned(planned: &Value, remote: Value) -> Value {
    match (planned, remote) {
        (Value::Unknown(_), r) => r,
        (Value::Map(p), Value::Map(mut r)) => Value::Map(
            p.iter()
                .map(|(k, pv)| (k.clone(), merge_planned(pv, r.remove(k).unwrap_or(Value::Null))))
                .collect(),
        ),
        (p, _) => p.clone(),
    }
}

#[tonic::async_trait]
impl ProviderService for Provider {
    async fn get_metadata(
        &self,
        _r: Request<pb::Empty>,
    ) -> Result<Response<pb::get_metadata::Response>, Status> {
        Ok(Response::new(pb::get_metadata::Response {
            server_capabilities: Some(capabilities()),
            diagnostics: vec![],
            // Every kind is both a resource and a data source type.
            data_sources: type_metadata(),
            resources: type_metadata(),
        }))
    }

    async fn get_provider_schema(
        &self,
        _r: Request<pb::Empty>,
    ) -> Result<Response<pb::get_provider_schema::Response>, Status> {
        Ok(Response::new(pb::get_provider_schema::Response {
            provider: Some(schema_proto(&provider_schema())),
            resource_schemas: Kind::ALL
                .iter()
                .map(|k| (k.type_name().to_string(), schema_proto(&k.resource_schema())))
                .collect::<HashMap<_, _>>(),
            data_source_schemas: Kind::ALL
                .iter()
                .map(|k| (k.type_name().to_string(), schema_proto(&k.data_source_schema())))
                .collect::<HashMap<_, _>>(),
            diagnostics: vec![],
            server_capabilities: Some(capabilities()),
        }))
    }

    async fn validate_provider_config(
        &self,
        r: Request<pb::validate_provider_config::Request>,
    ) -> Result<Response<pb::validate_provider_config::Response>, Status> {
        let diagnostics = match decode(r.get_ref().config.as_ref(), &provider_schema()) {
            Err(d) => vec![d],
            Ok(cfg) => {
                let mut d = validate_exec(&cfg);
                if let Some(h) = cfg.get("host").as_str()
                    && !(h.starts_with("https://") || h.starts_with("http://"))
                {
                    d.push(diag::error(
                        "Invalid host",
                        format!("'{h}' is not a URL; write e.g. https://my-cluster.hcp.eastus.azmk8s.io:443"),
                        Some(&Path::attr("host")),
                    ));
                }
                d
            }
        };
        Ok(Response::new(pb::validate_provider_config::Response {
            diagnostics,
        }))
    }

    async fn validate_resource_config(
        &self,
        r: Request<pb::TypeConfig>,
    ) -> Result<Response<pb::Diagnostics>, Status> {
        let r = r.get_ref();
        let checked = kind_of(&r.type_name)
            .and_then(|kind| Ok((kind, decode(r.config.as_ref(), &kind.resource_schema())?)));
        let diagnostics = match checked {
            Err(d) => vec![d],
            // Errors only: warnings are given once, at plan.
            Ok((kind, cfg)) => kind
                .validate(&cfg, None)
                .into_iter()
                .filter(|d| d.severity == pb::diagnostic::Severity::Error as i32)
                .collect(),
        };
        Ok(Response::new(pb::Diagnostics { diagnostics }))
    }

    async fn validate_data_resource_config(
        &self,
        r: Request<pb::TypeConfig>,
    ) -> Result<Response<pb::Diagnostics>, Status> {
        // Only the type: a data source's configuration is the identity of the object to read.
        let diagnostics = kind_of(&r.get_ref().type_name).err().into_iter().collect();
        Ok(Response::new(pb::Diagnostics { diagnostics }))
    }

    async fn upgrade_resource_state(
        &self,
        r: Request<pb::upgrade_resource_state::Request>,
    ) -> Result<Response<pb::upgrade_resource_state::Response>, Status> {
        let r = r.get_ref();
        let Some(kind) = Kind::from_type_name(&r.type_name) else {
            return Ok(Response::new(pb::upgrade_resource_state::Response {
                upgraded_state: None,
                diagnostics: vec![unknown_type(&r.type_name)],
            }));
        };
        let json = r
            .raw_state
            .as_ref()
            .map(|s| s.json.as_slice())
            .unwrap_or_default();
        let result = if json.is_empty() {
            Ok(Value::Null)
        } else {
            serde_json::from_slice::<serde_json::Value>(json)
                .map(|j| kind.resource_schema().normalise(Value::from_json(&j)))
        };
        let result = match result {
            Ok(v) => Ok(self.with_uid(kind, v).await),
            Err(e) => Err(e),
        };
        Ok(Response::new(match result {
            Ok(v) => pb::upgrade_resource_state::Response {
                upgraded_state: encode(&v),
                diagnostics: vec![],
            },
            Err(e) => pb::upgrade_resource_state::Response {
                upgraded_state: None,
                diagnostics: vec![diag::error("Cannot read the stored state", e.to_string(), None)],
            },
        }))
    }

    async fn configure_provider(
        &self,
        r: Request<pb::configure_provider::Request>,
    ) -> Result<Response<pb::Diagnostics>, Status> {
        let cfg = match decode(r.get_ref().config.as_ref(), &provider_schema()) {
            Ok(c) => c,
            Err(d) => {
                return Ok(Response::new(pb::Diagnostics { diagnostics: vec![d] }));
            }
        };
        let mut guard = self.configured.lock().await;
        *guard = match ProviderConfig::from_value(&cfg) {
            Some(pc) => {
                tracing::debug!(config = ?pc, "provider configured");
                Configured::Known(Box::new(pc), None)
            }
            None => {
                tracing::debug!("provider configuration has unknown values; planning offline");
                Configured::Unknown
            }
        };
        Ok(Response::new(pb::Diagnostics::default()))
    }

    async fn read_resource(
        &self,
        r: Request<pb::read_resource::Request>,
    ) -> Result<Response<pb::read_resource::Response>, Status> {
        let r = r.into_inner();
        let fail = |d: pb::Diagnostic, state: Option<pb::DynamicValue>, private: Vec<u8>| {
            Ok(Response::new(pb::read_resource::Response {
                new_state: state,
                diagnostics: vec![d],
                private,
            }))
        };
        let Some(kind) = Kind::from_type_name(&r.type_name) else {
            return fail(unknown_type(&r.type_name), r.current_state, r.private);
        };
        let state = match decode(r.current_state.as_ref(), &kind.resource_schema()) {
            Ok(s) => s,
            Err(d) => return fail(d, r.current_state, r.private),
        };
        if state.is_null() {
            return Ok(Response::new(pb::read_resource::Response {
                new_state: encode(&Value::Null),
                diagnostics: vec![],
                private: r.private,
            }));
        }
        match self.read(kind, &state).await {
            Ok(new_state) => Ok(Response::new(pb::read_resource::Response {
                new_state: encode(&new_state),
                diagnostics: vec![],
                private: r.private,
            })),
            Err(d) => fail(d, r.current_state, r.private),
        }
    }

    async fn plan_resource_change(
        &self,
        r: Request<pb::plan_resource_change::Request>,
    ) -> Result<Response<pb::plan_resource_change::Response>, Status> {
        let r = r.into_inner();
        let respond =
            |planned: Option<pb::DynamicValue>, replace: Vec<Path>, diagnostics: Vec<pb::Diagnostic>| {
                Ok(Response::new(pb::plan_resource_change::Response {
                    planned_state: planned,
                    requires_replace: replace.iter().map(Path::to_proto).collect(),
                    planned_private: r.prior_private.clone(),
                    diagnostics,
                    legacy_type_system: false,
                }))
            };
        let Some(kind) = Kind::from_type_name(&r.type_name) else {
            return respond(None, vec![], vec![unknown_type(&r.type_name)]);
        };
        let schema = kind.resource_schema();
        let (prior, proposed, config) = match (
            decode(r.prior_state.as_ref(), &schema),
            decode(r.proposed_new_state.as_ref(), &schema),
            decode(r.config.as_ref(), &schema),
        ) {
            (Ok(p), Ok(n), Ok(c)) => (p, n, c),
            (Err(d), _, _) | (_, Err(d), _) | (_, _, Err(d)) => return respond(None, vec![], vec![d]),
        };
        if proposed.is_null() {
            // Destroy: nothing to plan.
            return respond(r.proposed_new_state.clone(), vec![], vec![]);
        }
        let (planned, replace) = match kind {
            Kind::Sgc => sgc::plan(&prior, &config),
            Kind::Pool => pool::plan(&prior, &config),
        };
        // An in-place update is checked as one (the rules then add their update warnings, e.g. that
        // existing pods keep their routes); a create or a replacement makes a new object.
        let in_place = (!prior.is_null() && replace.is_empty()).then_some(&prior);
        let diagnostics = kind.validate(&config, in_place);
        if diag::has_errors(&diagnostics) {
            return respond(None, vec![], diagnostics);
        }
        respond(encode(&planned), replace, diagnostics)
    }

    async fn apply_resource_change(
        &self,
        r: Request<pb::apply_resource_change::Request>,
    ) -> Result<Response<pb::apply_resource_change::Response>, Status> {
        let r = r.into_inner();
        let respond = |state: Option<pb::DynamicValue>, diagnostics: Vec<pb::Diagnostic>| {
            Ok(Response::new(pb::apply_resource_change::Response {
                new_state: state,
                private: r.planned_private.clone(),
                diagnostics,
                legacy_type_system: false,
            }))
        };
        let Some(kind) = Kind::from_type_name(&r.type_name) else {
            return respond(None, vec![unknown_type(&r.type_name)]);
        };
        let schema = kind.resource_schema();
        let (prior, planned) = match (
            decode(r.prior_state.as_ref(), &schema),
            decode(r.planned_state.as_ref(), &schema),
        ) {
            (Ok(p), Ok(n)) => (p, n),
            (Err(d), _) | (_, Err(d)) => return respond(None, vec![d]),
        };
        match self.apply(kind, &prior, &planned).await {
            Ok(state) => respond(encode(&state), vec![]),
            // Written but not ready: record the object as it is (Terraform taints a failed create).
            Err(ApplyFailure {
                diagnostic,
                state: Some(state),
            }) => respond(encode(&state), vec![diagnostic]),
            // Not written (refused, unreachable): keep the prior state; refresh will tell if anything changed.
            Err(ApplyFailure {
                diagnostic,
                state: None,
            }) => respond(r.prior_state.clone(), vec![diagnostic]),
        }
    }

    async fn import_resource_state(
        &self,
        r: Request<pb::import_resource_state::Request>,
    ) -> Result<Response<pb::import_resource_state::Response>, Status> {
        let r = r.get_ref();
        let fail = |d| {
            Ok(Response::new(pb::import_resource_state::Response {
                imported_resources: vec![],
                diagnostics: vec![d],
            }))
        };
        let Some(kind) = Kind::from_type_name(&r.type_name) else {
            return fail(unknown_type(&r.type_name));
        };
        let stub = match kind {
            Kind::Sgc => match r.id.split_once('/') {
                Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
                    resources::object([("namespace", Value::str(ns)), ("name", Value::str(name))])
                }
                _ => {
                    return fail(diag::error(
                        "Invalid import ID",
                        format!(
                            "'{}' is not namespace/name; import a configuration as e.g. `app/egress`",
                            r.id
                        ),
                        None,
                    ));
                }
            },
            Kind::Pool => {
                if r.id.is_empty() || r.id.contains('/') {
                    return fail(diag::error(
                        "Invalid import ID",
                        format!(
                            "'{}' is not a pool name (GatewayPools are cluster-scoped: import by name)",
                            r.id
                        ),
                        None,
                    ));
                }
                resources::object([("name", Value::str(&r.id))])
            }
        };
        let stub = kind.resource_schema().normalise(stub);
        // Read now, so that importing a missing object fails with a clear message.
        let state = match self.read(kind, &stub).await {
            Ok(Value::Null) => {
                return fail(diag::error(
                    "Cannot import a missing object",
                    format!("{} '{}' does not exist in the cluster", r.type_name, r.id),
                    None,
                ));
            }
            Ok(s) => s,
            Err(d) => return fail(d),
        };
        Ok(Response::new(pb::import_resource_state::Response {
            imported_resources: vec![pb::import_resource_state::ImportedResource {
                type_name: r.type_name.clone(),
                state: encode(&state),
                private: vec![],
            }],
            diagnostics: vec![],
        }))
    }

    async fn read_data_source(
        &self,
        r: Request<pb::TypeConfig>,
    ) -> Result<Response<pb::read_data_source::Response>, Status> {
        let r = r.get_ref();
        let fail = |d| {
            Ok(Response::new(pb::read_data_source::Response {
                state: None,
                diagnostics: vec![d],
            }))
        };
        let Some(kind) = Kind::from_type_name(&r.type_name) else {
            return fail(unknown_type(&r.type_name));
        };
        let schema = kind.data_source_schema();
        let config = match decode(r.config.as_ref(), &schema) {
            Ok(c) => c,
            Err(d) => return fail(d),
        };
        let as_resource = kind.resource_schema().normalise(config.clone());
        match self.read(kind, &as_resource).await {
            Ok(Value::Null) => fail(diag::error(
                "Not found",
                format!("{} '{}' does not exist", r.type_name, kind.display_id(&config)),
                None,
            )),
            Ok(state) => {
                let Value::Map(mut m) = state else {
                    return fail(diag::error("Internal error", "read returned a non-object", None));
                };
                m.remove("timeouts");
                Ok(Response::new(pb::read_data_source::Response {
                    state: encode(&schema.normalise(Value::Map(m))),
                    diagnostics: vec![],
                }))
            }
            Err(d) => fail(d),
        }
    }

    async fn get_functions(
        &self,
        _r: Request<pb::Empty>,
    ) -> Result<Response<pb::get_functions::Response>, Status> {
        Ok(Response::new(pb::get_functions::Response::default()))
    }

    async fn stop_provider(
        &self,
        _r: Request<pb::Empty>,
    ) -> Result<Response<pb::stop_provider::Response>, Status> {
        let _ = self.stop_tx.send(true);
        Ok(Response::new(pb::stop_provider::Response::default()))
    }
}

/// GetMetadata's list of the provider's types.
fn type_metadata() -> Vec<pb::get_metadata::TypeMetadata> {
    Kind::ALL
        .map(|k| pb::get_metadata::TypeMetadata {
            type_name: k.type_name().into(),
        })
        .to_vec()
}

fn capabilities() -> pb::ServerCapabilities {
    pb::ServerCapabilities {
        plan_destroy: false,
        get_provider_schema_optional: false,
        move_resource_state: false,
    }
}

/// How long a state upgrade may spend reading a missing `uid` from the cluster (see `Provider::with_uid`).
const UID_READ_LIMIT: std::time::Duration = std::time::Duration::from_secs(5);

#[cfg(test)]
mod tests {
    use super::*;

    async fn upgrade(type_name: &str, json: &str) -> pb::upgrade_resource_state::Response {
        Provider::new()
            .upgrade_resource_state(Request::new(pb::upgrade_resource_state::Request {
                type_name: type_name.into(),
                version: 0,
                raw_state: Some(pb::RawState {
                    json: json.as_bytes().to_vec(),
                    ..Default::default()
                }),
            }))
            .await
            .expect("answered")
            .into_inner()
    }

    #[test]
    fn an_exec_block_needs_host_and_replaces_the_token() {
        let exec = Value::List(vec![resources::object([
            ("api_version", Value::str("client.authentication.k8s.io/v1beta1")),
            ("command", Value::str("kubelogin")),
        ])]);
        let cfg = |host: Value, token: Value| {
            provider_schema().normalise(resources::object([
                ("host", host),
                ("token", token),
                ("exec", exec.clone()),
            ]))
        };
        let summaries = |v: Value| {
            validate_exec(&v)
                .into_iter()
                .map(|d| (d.summary, d.attribute))
                .collect::<Vec<_>>()
        };
        let at_exec = Some(Path::attr("exec").to_proto());
        assert!(summaries(cfg(Value::str("https://k"), Value::Null)).is_empty());
        // A host from a cluster created in this run is unknown at first: no finding yet.
        assert!(summaries(cfg(Value::unknown(), Value::Null)).is_empty());
        assert_eq!(
            summaries(cfg(Value::Null, Value::Null)),
            vec![("exec needs host".to_string(), at_exec.clone())]
        );
        assert_eq!(
            summaries(cfg(Value::str("https://k"), Value::str("t"))),
            vec![("Conflicting credentials".to_string(), at_exec)]
        );
    }

    #[tokio::test]
    async fn upgrading_a_state_gives_exactly_the_schemas_keys() {
        // Written by an older provider: it had an attribute since removed, and lacks the newer `uid`.
        let old = r#"{"id": "app/egress", "namespace": "app", "name": "egress", "gateway_nodepool_name": "gw",
            "default_route": "staticEgressGateway", "provision_public_ips": true, "exclude_cidrs": ["10.0.0.0/8"],
            "egress_ip_prefix": "20.0.0.0/31", "gateway_server_profile": null, "conditions": [],
            "gateway_vmss_profile": [], "timeouts": null, "removed_attribute": "gone"}"#;
        let r = upgrade(resources::SGC_TYPE, old).await;
        assert!(r.diagnostics.is_empty(), "{:?}", r.diagnostics);
        let upgraded = Value::from_msgpack(&r.upgraded_state.expect("state").msgpack).expect("msgpack");
        let Value::Map(m) = &upgraded else {
            panic!("an object: {upgraded:?}")
        };
        let schema = Kind::Sgc.resource_schema();
        let mut want: Vec<&str> = schema.attributes.iter().map(|a| a.name).collect();
        want.extend(schema.blocks.iter().map(|b| b.name));
        want.sort_unstable();
        assert_eq!(m.keys().map(String::as_str).collect::<Vec<_>>(), want);
        assert!(upgraded.get("uid").is_null());
        assert_eq!(upgraded.get("egress_ip_prefix").as_str(), Some("20.0.0.0/31"));
        assert_eq!(
            upgraded.get("exclude_cidrs"),
            &Value::List(vec![Value::str("10.0.0.0/8")])
        );

        let r = upgrade(resources::SGC_TYPE, "{not json").await;
        assert!(r.upgraded_state.is_none());
        assert_eq!(r.diagnostics[0].summary, "Cannot read the stored state");
        let r = upgrade("egressgateway_other", "{}").await;
        assert_eq!(r.diagnostics[0].summary, "Unknown type");
    }

    #[test]
    fn creating_an_existing_object_names_it_and_the_import_to_run() {
        let elsewhere = Found {
            terminating: false,
            by_this_provider: false,
        };
        let planned = resources::object([("namespace", Value::str("app")), ("name", Value::str("egress"))]);
        let d = exists(Kind::Sgc, "StaticGatewayConfiguration", &planned, elsewhere);
        assert_eq!(d.severity, pb::diagnostic::Severity::Error as i32);
        assert_eq!(d.summary, "StaticGatewayConfiguration app/egress already exists");
        assert!(
            d.detail
                .contains("`terraform import egressgateway_static_gateway_configuration.<name> app/egress`")
                && d.detail.contains("It was left as it is.")
                && d.detail.contains("made outside this configuration"),
            "{}",
            d.detail
        );
        assert_eq!(
            d.attribute,
            Some(Path::attr("name").to_proto()),
            "points at the name"
        );
        let pool = resources::object([("name", Value::str("gw"))]);
        let d = exists(Kind::Pool, "GatewayPool", &pool, elsewhere);
        assert_eq!(d.summary, "GatewayPool gw already exists");
        assert!(
            d.detail
                .contains("`terraform import egressgateway_gateway_pool.<name> gw`")
                && d.detail
                    .contains(r#"`import` block with `to` that address and `id = "gw"`"#),
            "{}",
            d.detail
        );
        // Written by this provider: a lost state or a create_before_destroy replacement, not kubectl.
        let ours = Found {
            by_this_provider: true,
            ..elsewhere
        };
        let d = exists(Kind::Pool, "GatewayPool", &pool, ours);
        assert_eq!(d.summary, "GatewayPool gw already exists");
        assert!(
            d.detail.contains("written by this provider")
                && d.detail.contains("create_before_destroy")
                && d.detail
                    .contains("`terraform import egressgateway_gateway_pool.<name> gw`")
                && !d.detail.contains("kubectl"),
            "{}",
            d.detail
        );
        let d = exists(
            Kind::Pool,
            "GatewayPool",
            &pool,
            Found {
                terminating: true,
                ..elsewhere
            },
        );
        assert_eq!(d.summary, "GatewayPool gw is being deleted");
        assert!(d.detail.contains("Apply again once it is gone"), "{}", d.detail);
    }

    #[test]
    fn apply_keeps_known_planned_values() {
        let planned = resources::object([
            ("gateway_nodepool_name", Value::str("GwPool")),
            ("egress_ip_prefix", Value::unknown()),
        ]);
        let remote = resources::object([
            ("gateway_nodepool_name", Value::str("gwpool")),
            ("egress_ip_prefix", Value::str("20.0.0.0/31")),
        ]);
        let merged = merge_planned(&planned, remote);
        assert_eq!(merged.get("gateway_nodepool_name").as_str(), Some("GwPool"));
        assert_eq!(merged.get("egress_ip_prefix").as_str(), Some("20.0.0.0/31"));
    }
}
