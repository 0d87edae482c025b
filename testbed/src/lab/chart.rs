//! The chart as the lab installs it: the objects `scripts/render-chart.py` renders (applied with kubectl, the
//! lab's `helm install`), and for each workload the process a kubelet would start from it (a [`LaunchSpec`]).
//!
//! Pure: parsing the rendered stream, choosing the container, filling the downward-API fields a kubelet fills,
//! reading the Secret volumes' contents (the lab writes them to files, as kubelet would), and localising what
//! only a pod's own namespaces make unnecessary (listen ports and mounted paths). Anything the lab cannot run as
//! the chart says (a `command` override, an env source or volume type it does not know) is an error, so a chart
//! change cannot silently diverge from what the lab runs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use base64::Engine as _;
use serde::Deserialize as _;
use serde_json::{Value, json};

use crate::kube::store::str_at;

/// Every object of a rendered chart, in the order rendered (CRDs first, then Helm's install order).
#[derive(Debug, Clone, Default)]
pub struct Rendered {
    pub objects: Vec<Value>,
}

/// Where a pod of a workload runs, as far as its downward API goes.
#[derive(Debug, Clone)]
pub struct Pod {
    pub namespace: String,
    pub name: String,
    pub node_name: String,
}

/// What differs from the chart because the lab runs the process without the pod's own namespaces.
#[derive(Debug, Clone, Default)]
pub struct Localize {
    /// `--flag` -> the value it gets instead (a listener: without the pod's network namespace two components
    /// would bind the same port). Every flag here must be one the chart passes.
    pub ports: Vec<(String, String)>,
    /// Where the Secret volumes are written: `<volume_root>/<volume name>/<key>`.
    pub volume_root: PathBuf,
}

/// One file of a Secret volume, to be written (mode 0600) before the process starts.
#[derive(Clone)]
pub struct SecretFile {
    pub path: PathBuf,
    pub data: Vec<u8>,
}

impl std::fmt::Debug for SecretFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretFile")
            .field("path", &self.path)
            .field("data", &format_args!("<{} bytes redacted>", self.data.len()))
            .finish()
    }
}

/// A hostPath volume the container mounts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPath {
    pub mount_path: String,
    pub host_path: String,
    /// `type: CharDevice`: a device node (the kubelet checks it is one), not a directory.
    pub char_device: bool,
}

/// The process a kubelet would start for one container of a rendered workload.
#[derive(Debug, Clone)]
pub struct LaunchSpec {
    /// `DaemonSet/<name>` or `Deployment/<name>`.
    pub workload: String,
    pub container: String,
    /// The image's binary: the last path segment of the image without its tag (each image has one entrypoint).
    pub binary: String,
    /// The container's image, as the chart renders it (the lab's `--from-images` mode runs it).
    pub image: String,
    /// The container's securityContext, with the pod's runAsUser/runAsGroup where the container sets none.
    pub security_context: Value,
    /// Namespace and name of the pod's service account.
    pub service_account: (String, String),
    /// The chart's args, localised.
    pub args: Vec<String>,
    /// Lab-only arguments (not in the chart), each with why; appended after the chart's.
    pub lab_args: Vec<(String, String)>,
    /// What localisation changed: (chart's arg, lab's arg).
    pub localized: Vec<(String, String)>,
    /// The environment, downward-API fields filled.
    pub env: Vec<(String, String)>,
    pub secret_files: Vec<SecretFile>,
    pub host_paths: Vec<HostPath>,
    /// `spec.replicas` of a Deployment.
    pub replicas: Option<u64>,
}

impl Rendered {
    /// Parses a multi-document YAML stream (empty documents skipped).
    pub fn parse(yaml: &str) -> anyhow::Result<Self> {
        let mut objects = Vec::new();
        for (i, doc) in serde_yaml::Deserializer::from_str(yaml).enumerate() {
            let v = serde_yaml::Value::deserialize(doc)
                .with_context(|| format!("rendered document {i} is not YAML"))?;
            if v.is_null() {
                continue;
            }
            let v = serde_json::to_value(v).with_context(|| format!("rendered document {i}"))?;
            if v["kind"].as_str().is_none() || v.pointer("/metadata/name").is_none() {
                bail!("rendered document {i} has no kind or metadata.name");
            }
            objects.push(v);
        }
        Ok(Self { objects })
    }

    /// (kind, count) in the order the kinds first appear.
    pub fn kinds(&self) -> Vec<(String, usize)> {
        let mut out: Vec<(String, usize)> = Vec::new();
        for o in &self.objects {
            let kind = o["kind"].as_str().unwrap_or_default();
            match out.iter_mut().find(|(k, _)| k == kind) {
                Some((_, n)) => *n += 1,
                None => out.push((kind.to_string(), 1)),
            }
        }
        out
    }

    /// (namespace, name) of every ServiceAccount.
    pub fn service_accounts(&self) -> Vec<(String, String)> {
        self.of_kind("ServiceAccount")
            .into_iter()
            .map(|o| {
                let at = |p: &str| str_at(o, p).unwrap_or_default().to_string();
                (at("/metadata/namespace"), at("/metadata/name"))
            })
            .collect()
    }

    fn of_kind(&self, kind: &str) -> Vec<&Value> {
        self.objects.iter().filter(|o| o["kind"] == kind).collect()
    }

    /// The object of `kind` named `name`.
    pub fn get(&self, kind: &str, name: &str) -> anyhow::Result<&Value> {
        self.of_kind(kind)
            .into_iter()
            .find(|o| o.pointer("/metadata/name").and_then(Value::as_str) == Some(name))
            .with_context(|| format!("the chart renders no {kind} {name}"))
    }

    /// Whether `workload`'s pod template would be scheduled on a node with `labels` (its nodeSelector).
    pub fn selects(&self, kind: &str, name: &str, labels: &BTreeMap<String, String>) -> anyhow::Result<bool> {
        let w = self.get(kind, name)?;
        let selector = w
            .pointer("/spec/template/spec/nodeSelector")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        Ok(selector.iter().all(|(k, v)| {
            v.as_str()
                .is_some_and(|v| labels.get(k).map(String::as_str) == Some(v))
        }))
    }

    /// Every image the chart's Deployments and DaemonSets run (init containers included), sorted, once each.
    pub fn images(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .objects
            .iter()
            .filter(|o| matches!(o["kind"].as_str(), Some("Deployment" | "DaemonSet")))
            .flat_map(|o| {
                ["initContainers", "containers"].into_iter().flat_map(move |k| {
                    o.pointer(&format!("/spec/template/spec/{k}"))
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                        .filter_map(|c| c["image"].as_str().map(str::to_string))
                })
            })
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// Workload `kind`/`name`'s pod template spec and its container `container` from the template's `list`
    /// (`containers` or `initContainers`).
    pub fn container(
        &self,
        kind: &str,
        name: &str,
        list: &str,
        container: &str,
    ) -> anyhow::Result<(&Value, &Value)> {
        let spec = self
            .get(kind, name)?
            .pointer("/spec/template/spec")
            .with_context(|| format!("{kind} {name} has no pod template"))?;
        let c = spec[list]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["name"] == container))
            .with_context(|| {
                let what = if list == "initContainers" {
                    "init container"
                } else {
                    "container"
                };
                format!("{kind} {name} has no {what} {container}")
            })?;
        Ok((spec, c))
    }

    /// The launch spec of `container` of workload `kind`/`name` for a pod at `pod`.
    pub fn launch_spec(
        &self,
        kind: &str,
        name: &str,
        container: &str,
        pod: &Pod,
        local: &Localize,
    ) -> anyhow::Result<LaunchSpec> {
        let w = self.get(kind, name)?;
        let (spec, c) = self.container(kind, name, "containers", container)?;
        let what = format!("{kind} {name} container {container}");
        if c.get("command").is_some() {
            bail!("{what}: sets `command`; the lab runs the image's entrypoint binary only");
        }
        let image = c["image"].as_str().with_context(|| format!("{what}: no image"))?;
        let binary = image_binary(image).with_context(|| format!("{what}: image {image:?}"))?;
        let sa_name = spec["serviceAccountName"]
            .as_str()
            .with_context(|| format!("{kind} {name}: no serviceAccountName"))?;
        let sa_ns = w
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or(&pod.namespace);

        // Volumes: Secrets are materialised, hostPaths reported, emptyDirs are the process's own filesystem.
        let volumes: BTreeMap<&str, &Value> = spec["volumes"]
            .as_array()
            .map(|vs| vs.iter().filter_map(|v| Some((v["name"].as_str()?, v))).collect())
            .unwrap_or_default();
        let mut mounts: Vec<(String, PathBuf)> = Vec::new();
        let mut secret_files = Vec::new();
        let mut host_paths = Vec::new();
        for m in c["volumeMounts"].as_array().into_iter().flatten() {
            let vname = m["name"]
                .as_str()
                .with_context(|| format!("{what}: a volumeMount has no name"))?;
            let mount_path = m["mountPath"]
                .as_str()
                .with_context(|| format!("{what}: volumeMount {vname} has no mountPath"))?;
            let v = volumes
                .get(vname)
                .with_context(|| format!("{what}: mounts volume {vname}, which the pod does not have"))?;
            if let Some(secret) = v.get("secret") {
                if secret.get("items").is_some() {
                    bail!("{what}: Secret volume {vname} with `items` is not supported by the lab");
                }
                let sname = secret["secretName"]
                    .as_str()
                    .with_context(|| format!("{what}: Secret volume {vname} has no secretName"))?;
                let local_dir = local.volume_root.join(vname);
                for (key, data) in secret_data(self.get("Secret", sname)?)? {
                    secret_files.push(SecretFile {
                        path: local_dir.join(key),
                        data,
                    });
                }
                mounts.push((mount_path.to_string(), local_dir));
            } else if let Some(hp) = v.get("hostPath") {
                host_paths.push(HostPath {
                    mount_path: mount_path.to_string(),
                    host_path: hp["path"].as_str().unwrap_or_default().to_string(),
                    char_device: hp["type"] == "CharDevice",
                });
            } else if v.get("emptyDir").is_none() {
                bail!(
                    "{what}: volume {vname} is neither a Secret, a hostPath nor an emptyDir; the lab cannot mount it"
                );
            }
        }

        let (args, localized) =
            localize_args(&str_list(&c["args"]), &mounts, &local.ports).with_context(|| what.clone())?;
        let env = resolve_env(c, pod, sa_name).with_context(|| what.clone())?;
        let mut security_context = c.get("securityContext").cloned().unwrap_or_else(|| json!({}));
        for key in ["runAsUser", "runAsGroup"] {
            if security_context.get(key).is_none()
                && let Some(v) = spec.pointer(&format!("/securityContext/{key}"))
                && let Some(obj) = security_context.as_object_mut()
            {
                obj.insert(key.to_string(), v.clone());
            }
        }
        Ok(LaunchSpec {
            workload: format!("{kind}/{name}"),
            container: container.to_string(),
            binary,
            image: image.to_string(),
            security_context,
            service_account: (sa_ns.to_string(), sa_name.to_string()),
            args,
            lab_args: Vec::new(),
            localized,
            env,
            secret_files,
            host_paths,
            replicas: w.pointer("/spec/replicas").and_then(Value::as_u64),
        })
    }
}

impl LaunchSpec {
    /// `system:serviceaccount:<ns>:<name>`: the user the process authenticates as.
    pub fn user(&self) -> String {
        format!(
            "system:serviceaccount:{}:{}",
            self.service_account.0, self.service_account.1
        )
    }

    /// Adds a lab-only argument `flag=value`, saying why. Refused when the chart already passes `flag`: the
    /// lab never overrides the chart's own settings this way.
    pub fn add_lab_arg(&mut self, flag: &str, value: &str, why: &str) -> anyhow::Result<()> {
        if self
            .args
            .iter()
            .any(|a| a == flag || a.starts_with(&format!("{flag}=")))
        {
            bail!(
                "{}: the chart already passes {flag}; the lab would override it",
                self.workload
            );
        }
        self.lab_args.push((format!("{flag}={value}"), why.to_string()));
        Ok(())
    }

    /// The full argument list: the chart's (localised), then the lab's.
    pub fn argv(&self) -> Vec<String> {
        self.args
            .iter()
            .cloned()
            .chain(self.lab_args.iter().map(|(a, _)| a.clone()))
            .collect()
    }

    /// hostPath mounts whose container path differs from the host path: the lab runs the process in the
    /// node's mount namespace without a container filesystem, so such a mount cannot be honoured.
    pub fn remapped_host_paths(&self) -> Vec<String> {
        self.host_paths
            .iter()
            .filter(|h| normalize_run(&h.mount_path) != normalize_run(&h.host_path))
            .map(|h| format!("{} -> {}", h.host_path, h.mount_path))
            .collect()
    }
}

/// `/var/run/x` and `/run/x` are the same directory (`/var/run` is a symlink to `/run`).
pub fn normalize_run(p: &str) -> String {
    let p = p.trim_end_matches('/');
    match p.strip_prefix("/var/run") {
        Some(rest) if rest.is_empty() || rest.starts_with('/') => format!("/run{rest}"),
        _ => p.to_string(),
    }
}

fn str_list(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_string)).collect())
        .unwrap_or_default()
}

/// `registry/path/name:tag` (or `@digest`) -> `name`.
fn image_binary(image: &str) -> anyhow::Result<String> {
    let no_digest = image.split('@').next().unwrap_or(image);
    let last = no_digest.rsplit('/').next().unwrap_or(no_digest);
    let name = last.split(':').next().unwrap_or(last);
    if name.is_empty() {
        bail!("no image name");
    }
    Ok(name.to_string())
}

/// A Secret's keys and decoded values (`data` base64, `stringData` plain), sorted by key.
fn secret_data(secret: &Value) -> anyhow::Result<BTreeMap<String, Vec<u8>>> {
    let name = str_at(secret, "/metadata/name").unwrap_or_default();
    let mut out = BTreeMap::new();
    for (k, v) in secret["data"].as_object().into_iter().flatten() {
        let b64 = v
            .as_str()
            .with_context(|| format!("Secret {name}: data.{k} is not a string"))?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .with_context(|| format!("Secret {name}: data.{k} is not base64"))?;
        out.insert(k.clone(), bytes);
    }
    for (k, v) in secret["stringData"].as_object().into_iter().flatten() {
        let s = v
            .as_str()
            .with_context(|| format!("Secret {name}: stringData.{k} is not a string"))?;
        out.insert(k.clone(), s.as_bytes().to_vec());
    }
    Ok(out)
}

/// The container's environment with the downward-API fields a kubelet fills.
fn resolve_env(c: &Value, pod: &Pod, sa: &str) -> anyhow::Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for e in c["env"].as_array().into_iter().flatten() {
        let name = e["name"].as_str().context("an env entry has no name")?;
        let value = if let Some(v) = e.get("value") {
            v.as_str().unwrap_or_default().to_string()
        } else if let Some(path) = e.pointer("/valueFrom/fieldRef/fieldPath").and_then(Value::as_str) {
            match path {
                "metadata.namespace" => pod.namespace.clone(),
                "metadata.name" => pod.name.clone(),
                "spec.nodeName" => pod.node_name.clone(),
                "spec.serviceAccountName" => sa.to_string(),
                other => bail!("env {name}: downward-API field {other} is not filled by the lab"),
            }
        } else {
            bail!("env {name}: only values and downward-API fieldRefs are supported by the lab");
        };
        out.push((name.to_string(), value));
    }
    Ok(out)
}

/// One localised argument: (the chart's, the lab's).
type Change = (String, String);

/// The chart's `--flag=value` args with listener flags given their lab value and paths under a Secret's
/// mountPath moved to its local directory; also what changed. Every listener flag must be in the chart.
fn localize_args(
    args: &[String],
    mounts: &[(String, PathBuf)],
    ports: &[(String, String)],
) -> anyhow::Result<(Vec<String>, Vec<Change>)> {
    let mut out = Vec::with_capacity(args.len());
    let mut changed = Vec::new();
    for a in args {
        let (flag, value) = match a.split_once('=') {
            Some((f, v)) => (f, Some(v)),
            None => (a.as_str(), None),
        };
        let new = match (ports.iter().find(|(f, _)| f == flag), value) {
            (Some((_, v)), Some(_)) => format!("{flag}={v}"),
            (Some(_), None) => bail!("{flag} without `=value` cannot be localised"),
            (None, Some(v)) => match mounts.iter().find_map(|(m, local)| local_path(v, m, local)) {
                Some(p) => format!("{flag}={}", p.display()),
                None => a.clone(),
            },
            (None, None) => a.clone(),
        };
        if new != *a {
            changed.push((a.clone(), new.clone()));
        }
        out.push(new);
    }
    for (flag, _) in ports {
        if !args.iter().any(|a| a.starts_with(&format!("{flag}="))) {
            bail!("the chart no longer passes {flag}");
        }
    }
    Ok((out, changed))
}

/// `value` under `mount` (a mountPath) as a path under `local`.
fn local_path(value: &str, mount: &str, local: &Path) -> Option<PathBuf> {
    let rest = value.strip_prefix(mount.trim_end_matches('/'))?;
    let rest = rest.strip_prefix('/')?;
    Some(local.join(rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    const RENDERED: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: gatewaypools.egressgateway.kubernetes.azure.com}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: keg-operator, namespace: sys}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: keg-agent, namespace: sys}
---
---
apiVersion: v1
kind: Secret
metadata: {name: cloud, namespace: sys}
data:
  azure.json: eyJhIjoxfQ==
stringData:
  extra: plain
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: keg-operator, namespace: sys}
spec:
  replicas: 1
  template:
    spec:
      serviceAccountName: keg-operator
      containers:
        - name: sidecar
          image: busybox
        - name: operator
          image: reg.example.com/keg/kube-egress-gateway-operator:v1.2.3
          args:
            - --cloud-config=/azure/config/azure.json
            - --leader-elect
            - --metrics-bind-port=8080
            - --health-probe-bind-port=8081
            - --other=/azure/configuration
          env:
            - {name: MY_NODE_NAME, valueFrom: {fieldRef: {fieldPath: spec.nodeName}}}
            - {name: MY_POD_NAMESPACE, valueFrom: {fieldRef: {fieldPath: metadata.namespace}}}
            - {name: PLAIN, value: "x"}
          volumeMounts:
            - {name: cloud-config, mountPath: /azure/config, readOnly: true}
            - {name: tmp, mountPath: /tmp}
      volumes:
        - {name: cloud-config, secret: {secretName: cloud}}
        - {name: tmp, emptyDir: {}}
---
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: keg-agent, namespace: sys}
spec:
  template:
    spec:
      serviceAccountName: keg-agent
      nodeSelector: {kubernetes.io/os: linux}
      containers:
        - name: agent
          image: local/kube-egress-gateway-agent@sha256:abc
          args: [--mode=node, --socket-path=/var/run/keg/cni.sock]
          env:
            - {name: MY_NODE_NAME, valueFrom: {fieldRef: {fieldPath: spec.nodeName}}}
          volumeMounts:
            - {name: conf, mountPath: /etc/cni/net.d}
            - {name: socket, mountPath: /var/run/keg}
            - {name: moved, mountPath: /host/opt/cni/bin}
      volumes:
        - {name: conf, hostPath: {path: /etc/cni/net.d}}
        - {name: socket, hostPath: {path: /run/keg/}}
        - {name: moved, hostPath: {path: /opt/cni/bin}}
"#;

    fn rendered() -> Rendered {
        Rendered::parse(RENDERED).expect("parses")
    }

    fn pod(node: &str) -> Pod {
        Pod {
            namespace: "sys".into(),
            name: "keg-operator-0".into(),
            node_name: node.into(),
        }
    }

    fn operator(local: &Localize) -> anyhow::Result<LaunchSpec> {
        rendered().launch_spec("Deployment", "keg-operator", "operator", &pod("node-a"), local)
    }

    fn operator_local() -> Localize {
        Localize {
            ports: vec![
                ("--metrics-bind-port".into(), "40001".into()),
                ("--health-probe-bind-port".into(), "40002".into()),
            ],
            volume_root: "/work/operator".into(),
        }
    }

    #[test]
    fn parse_skips_empty_documents_and_counts_kinds_in_order() {
        let r = rendered();
        assert_eq!(r.objects.len(), 6);
        assert_eq!(
            r.kinds(),
            vec![
                ("CustomResourceDefinition".to_string(), 1),
                ("ServiceAccount".into(), 2),
                ("Secret".into(), 1),
                ("Deployment".into(), 1),
                ("DaemonSet".into(), 1),
            ]
        );
        assert_eq!(
            r.service_accounts(),
            vec![
                ("sys".to_string(), "keg-operator".to_string()),
                ("sys".into(), "keg-agent".into())
            ]
        );
        assert!(Rendered::parse("kind: X\n").is_err(), "no metadata.name");
    }

    #[test]
    fn launch_spec_takes_the_charts_container_args_env_and_account() {
        let s = operator(&operator_local()).expect("spec");
        assert_eq!(s.workload, "Deployment/keg-operator");
        assert_eq!(s.binary, "kube-egress-gateway-operator");
        assert_eq!(s.user(), "system:serviceaccount:sys:keg-operator");
        assert_eq!(s.replicas, Some(1));
        assert_eq!(
            s.args,
            vec![
                "--cloud-config=/work/operator/cloud-config/azure.json",
                "--leader-elect",
                "--metrics-bind-port=40001",
                "--health-probe-bind-port=40002",
                // Only paths under the mount, not ones sharing its prefix.
                "--other=/azure/configuration",
            ]
        );
        assert_eq!(s.localized.len(), 3);
        assert_eq!(
            s.env,
            vec![
                ("MY_NODE_NAME".to_string(), "node-a".to_string()),
                ("MY_POD_NAMESPACE".into(), "sys".into()),
                ("PLAIN".into(), "x".into()),
            ]
        );
    }

    #[test]
    fn secret_volumes_become_files_and_are_never_shown() {
        let s = operator(&operator_local()).expect("spec");
        let files: Vec<(String, Vec<u8>)> = s
            .secret_files
            .iter()
            .map(|f| (f.path.display().to_string(), f.data.clone()))
            .collect();
        assert_eq!(
            files,
            vec![
                (
                    "/work/operator/cloud-config/azure.json".to_string(),
                    b"{\"a\":1}".to_vec()
                ),
                ("/work/operator/cloud-config/extra".into(), b"plain".to_vec()),
            ]
        );
        let shown = format!("{s:?}");
        assert!(!shown.contains("plain") && !shown.contains("\"a\""), "{shown}");
        assert!(shown.contains("bytes redacted"), "{shown}");
    }

    #[test]
    fn a_listener_the_chart_does_not_pass_is_an_error() {
        let mut local = operator_local();
        local.ports.push(("--listen".into(), "127.0.0.1:1".into()));
        let e = operator(&local).expect_err("unknown flag");
        assert!(format!("{e:#}").contains("no longer passes --listen"), "{e:#}");
        let local = Localize {
            ports: vec![("--leader-elect".into(), "x".into())],
            ..operator_local()
        };
        assert!(
            operator(&local).is_err(),
            "a flag without a value cannot be localised"
        );
    }

    #[test]
    fn daemonset_pod_gets_its_node_and_host_paths() {
        let r = rendered();
        let s = r
            .launch_spec(
                "DaemonSet",
                "keg-agent",
                "agent",
                &pod("node-b"),
                &Localize::default(),
            )
            .expect("spec");
        assert_eq!(s.binary, "kube-egress-gateway-agent");
        assert_eq!(s.args, vec!["--mode=node", "--socket-path=/var/run/keg/cni.sock"]);
        assert!(s.localized.is_empty());
        assert_eq!(s.env, vec![("MY_NODE_NAME".to_string(), "node-b".to_string())]);
        assert_eq!(s.replicas, None);
        assert_eq!(s.host_paths.len(), 3);
        // /var/run is /run; a hostPath mounted elsewhere cannot be honoured without a container filesystem.
        assert_eq!(s.remapped_host_paths(), vec!["/opt/cni/bin -> /host/opt/cni/bin"]);
    }

    #[test]
    fn node_selector_decides_where_a_daemonset_runs() {
        let r = rendered();
        let linux: BTreeMap<String, String> = [("kubernetes.io/os".to_string(), "linux".to_string())].into();
        assert!(r.selects("DaemonSet", "keg-agent", &linux).expect("ds"));
        assert!(!r.selects("DaemonSet", "keg-agent", &BTreeMap::new()).expect("ds"));
        assert!(
            r.selects("Deployment", "keg-operator", &BTreeMap::new())
                .expect("no selector")
        );
        assert!(r.selects("DaemonSet", "missing", &linux).is_err());
    }

    #[test]
    fn lab_args_are_kept_apart_and_never_override_the_chart() {
        let mut s = operator(&operator_local()).expect("spec");
        s.add_lab_arg("--imds-endpoint", "http://127.0.0.1:1", "azure-sim's IMDS")
            .expect("new flag");
        assert_eq!(
            s.argv().last().map(String::as_str),
            Some("--imds-endpoint=http://127.0.0.1:1")
        );
        assert_eq!(s.argv().len(), s.args.len() + 1);
        assert!(s.add_lab_arg("--leader-elect", "false", "x").is_err());
        assert!(s.add_lab_arg("--metrics-bind-port", "1", "x").is_err());
    }

    #[test]
    fn what_the_lab_cannot_run_as_charted_is_an_error() {
        let env_line =
            "{fieldRef: {fieldPath: spec.nodeName}}}\n          volumeMounts:\n            - {name: conf";
        let with = |from: &str, to: &str| {
            assert_eq!(RENDERED.matches(from).count(), 1, "{from}");
            Rendered::parse(&RENDERED.replace(from, to))
                .expect("parses")
                .launch_spec("DaemonSet", "keg-agent", "agent", &pod("n"), &Localize::default())
        };
        for (from, to, want) in [
            (
                "          args: [--mode=node",
                "          command: [/bin/sh]\n          args: [--mode=node",
                "command",
            ),
            (
                env_line,
                &env_line.replace(
                    "{fieldRef: {fieldPath: spec.nodeName}}}",
                    "{secretKeyRef: {name: s, key: k}}}",
                ),
                "only values",
            ),
            (
                env_line,
                &env_line.replace("spec.nodeName", "status.podIP"),
                "status.podIP",
            ),
            (
                "{name: moved, hostPath: {path: /opt/cni/bin}}",
                "{name: moved, configMap: {name: x}}",
                "neither a Secret",
            ),
        ] {
            let e = with(from, to).expect_err(want);
            assert!(format!("{e:#}").contains(want), "{want}: {e:#}");
        }
        let e = rendered()
            .launch_spec("DaemonSet", "keg-agent", "nope", &pod("n"), &Localize::default())
            .expect_err("no such container");
        assert!(format!("{e:#}").contains("no container nope"), "{e:#}");
    }
}
