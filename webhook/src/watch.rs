//! The watches that keep [`ReflectorFacts`] current.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use api::{GatewayPool, StaticGatewayConfiguration};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Node};
use kube::core::PartialObjectMeta;
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Api, Client};

use crate::facts::ReflectorFacts;

/// Starts the watches; the returned facts report `synced()` once every store has its first full list.
pub fn start(client: Client) -> ReflectorFacts {
    let ready = Arc::new(AtomicBool::new(false));
    let (nodes, nodes_w) = reflector::store();
    let (pools, pools_w) = reflector::store();
    let (namespaces, namespaces_w) = reflector::store();
    let (sgcs, sgcs_w) = reflector::store();

    let cfg = watcher::Config::default();
    let run = |name: &'static str, stream: futures::stream::BoxStream<'static, ()>| {
        tokio::spawn(async move {
            stream.for_each(|_| async {}).await;
            tracing::warn!(watch = name, "watch ended");
        });
    };
    run(
        "nodes",
        reflector(nodes_w, watcher(Api::<Node>::all(client.clone()), cfg.clone()))
            .default_backoff()
            .applied_objects()
            .map(|_| ())
            .boxed(),
    );
    run(
        "gatewaypools",
        reflector(
            pools_w,
            watcher(Api::<GatewayPool>::all(client.clone()), cfg.clone()),
        )
        .default_backoff()
        .applied_objects()
        .map(|_| ())
        .boxed(),
    );
    run(
        "namespaces",
        reflector(
            namespaces_w,
            watcher(
                Api::<PartialObjectMeta<Namespace>>::all(client.clone()),
                cfg.clone(),
            ),
        )
        .default_backoff()
        .applied_objects()
        .map(|_| ())
        .boxed(),
    );
    run(
        "staticgatewayconfigurations",
        reflector(
            sgcs_w,
            watcher(
                Api::<PartialObjectMeta<StaticGatewayConfiguration>>::all(client),
                cfg,
            ),
        )
        .default_backoff()
        .applied_objects()
        .map(|_| ())
        .boxed(),
    );

    let facts = ReflectorFacts {
        nodes,
        pools,
        namespaces,
        sgcs,
        ready: ready.clone(),
    };
    let waiting = facts.clone();
    tokio::spawn(async move {
        let synced = tokio::join!(
            waiting.nodes.wait_until_ready(),
            waiting.pools.wait_until_ready(),
            waiting.namespaces.wait_until_ready(),
            waiting.sgcs.wait_until_ready(),
        );
        if matches!(synced, (Ok(()), Ok(()), Ok(()), Ok(()))) {
            ready.store(true, Ordering::Release);
            tracing::info!("cluster watches synced");
        }
    });
    facts
}
