//! The operator's ARM client waiting for long-running operations against the ARM simulator, in each style ARM's
//! resource providers answer a write in (`Azure-AsyncOperation`, `Location` alone, `provisioningState` alone;
//! <https://github.com/Azure/azure-resource-manager-rpc/blob/master/v1.0/async-api-reference.md>): to completion,
//! to failure, and at the operation's deadline. Polls are counted as polls, apart from reads.

use std::time::Duration;

use operator::azure::{Arm, RetryBudget, Timeouts};
use operator::config::CloudConfig;
use operator::metrics::Metrics;
use serde_json::{Value, json};
use testbed::azure::{AzureSim, LroConfig, LroStyle, Seed};

mod common;

const STYLES: [LroStyle; 3] = [
    LroStyle::AsyncOperation,
    LroStyle::Location,
    LroStyle::ProvisioningState,
];

const RG: &str = "node-rg";

struct Env {
    sim: AzureSim,
    cfg: CloudConfig,
    seed: Seed,
}

async fn start() -> Env {
    let seed = Seed::aks_like(1);
    let sim = AzureSim::start(&seed).await.expect("simulator starts");
    let cfg = common::cloud_config(&seed, &sim);
    Env { sim, cfg, seed }
}

impl Env {
    fn prefix(&self) -> Value {
        json!({"location": self.seed.location, "sku": {"name": "Standard", "tier": "Regional"},
               "properties": {"prefixLength": 31, "publicIPAddressVersion": "IPv4"}})
    }

    /// A client with `operation` as its operation deadline and a short retry budget.
    fn arm_with_deadline(&self, metrics: &Metrics, operation: Duration) -> Arm {
        let timeouts = Timeouts {
            operation,
            ..Timeouts::default()
        };
        let retry = RetryBudget {
            initial: Duration::from_millis(5),
            max_delay: Duration::from_millis(50),
            max_retries: 2,
        };
        Arm::new(
            &self.cfg,
            operator::azure::credential(&self.cfg, &timeouts).expect("credential"),
            retry,
            &timeouts,
            metrics,
        )
        .expect("client")
    }

    fn arm(&self, metrics: &Metrics) -> Arm {
        self.arm_with_deadline(metrics, Timeouts::default().operation)
    }

    /// PUTs a prefix named after `style` with a fresh call log; it must return the resource `Succeeded`. Its
    /// name.
    async fn put_succeeds(&self, arm: &Arm, style: LroStyle) -> String {
        let name = format!("{style:?}").to_ascii_lowercase();
        self.sim.clear_calls();
        let stored = arm
            .put_prefix(RG, &name, &self.prefix())
            .await
            .unwrap_or_else(|e| panic!("{style:?}: {e}"));
        assert_eq!(
            stored["properties"]["provisioningState"],
            json!("Succeeded"),
            "{style:?}: the PUT returns the resource as its operation left it"
        );
        name
    }

    /// GETs the simulator saw that polled an operation, in `style`: of its operation status or Location URL,
    /// or (provisioningState alone) of the resource itself, which the test makes no other GET of meanwhile.
    fn polls_seen(&self, style: LroStyle) -> usize {
        match style {
            LroStyle::AsyncOperation => self.sim.count_calls("GET", "/operations/"),
            LroStyle::Location => self.sim.count_calls("GET", "/operationResults/"),
            LroStyle::ProvisioningState => self.sim.count_calls("GET", "/publicIPPrefixes/[^/]+$"),
        }
    }
}

/// Operations that answer running twice, then are over (`fail_next`: that many of them end `Failed`).
fn operations(style: LroStyle, fail_next: u32) -> LroConfig {
    LroConfig {
        in_progress_polls: 2,
        retry_after_ms: 1,
        max_duration_ms: 600_000,
        fail_next,
        style,
        ..LroConfig::default()
    }
}

#[tokio::test]
async fn writes_are_followed_to_completion_in_every_style_and_their_polls_count_as_polls() {
    let env = start().await;
    for style in STYLES {
        env.sim.set_lro(operations(style, 0));
        let metrics = Metrics::new();
        let arm = env.arm(&metrics);
        let name = env.put_succeeds(&arm, style).await;
        assert_eq!(env.polls_seen(style), 3, "{style:?}: {:?}", env.sim.calls());
        assert_eq!(
            metrics.arm_call_total(&["POLL"]),
            3,
            "{style:?}: each poll counted as a poll:\n{}",
            metrics.encode()
        );
        assert!(
            metrics
                .encode()
                .lines()
                .filter(|l| l.starts_with("arm_calls_total{operation=\"POLL "))
                .all(|l| l.contains("operation=\"POLL publicIPPrefixes\"")),
            "{style:?}: polls are named by the type written:\n{}",
            metrics.encode()
        );
        // Only the PUT's final read of the resource after an operation status said it was over is a read: a
        // finished Location answers the resource itself (200, as the PUT would have answered synchronously).
        let reads = match style {
            LroStyle::ProvisioningState | LroStyle::Location => 0,
            LroStyle::AsyncOperation => 1,
        };
        assert_eq!(
            metrics.arm_call_total(&["GET"]),
            reads,
            "{style:?}:\n{}",
            metrics.encode()
        );

        env.sim.clear_calls();
        arm.delete_prefix(RG, &name)
            .await
            .unwrap_or_else(|e| panic!("{style:?}: {e}"));
        assert_eq!(env.polls_seen(style), 3, "{style:?}: {:?}", env.sim.calls());
        assert_eq!(metrics.arm_call_total(&["POLL"]), 6, "{style:?}");
        assert_eq!(
            env.sim.inventory()["pendingOperations"],
            json!(0),
            "{style:?}: the DELETE returned once its operation was over"
        );
        assert_eq!(
            arm.get_prefix(RG, &name).await.expect("GET"),
            None,
            "{style:?}: gone"
        );
    }
}

/// A failed operation's Location answers the error the write would have had synchronously (400 by default):
/// that is the operation's end, not a poll to retry.
#[tokio::test]
async fn a_location_that_answers_an_error_fails_the_write_with_what_arm_said() {
    let env = start().await;
    let arm = env.arm(&Metrics::new());
    env.sim.set_lro(operations(LroStyle::Location, 1));
    env.sim.clear_calls();
    let err = arm
        .put_prefix(RG, "p", &env.prefix())
        .await
        .expect_err("the operation failed");
    assert_eq!(err.operation, "PUT publicIPPrefixes");
    assert_eq!(err.status, Some(400), "{err}");
    assert_eq!(err.code.as_deref(), Some("BadRequest"), "{err}");
    assert!(err.operation_ended, "{err:?}");
    assert_eq!(
        env.polls_seen(LroStyle::Location),
        3,
        "two polls running, one ended: {:?}",
        env.sim.calls()
    );

    env.sim.set_lro(operations(LroStyle::Location, 0));
    arm.put_prefix(RG, "p", &env.prefix())
        .await
        .expect("written again");
    env.sim.set_lro(operations(LroStyle::Location, 1));
    let err = arm
        .delete_prefix(RG, "p")
        .await
        .expect_err("the operation failed");
    assert_eq!(err.operation, "DELETE publicIPPrefixes");
    assert_eq!(err.status, Some(400), "{err}");
    assert_eq!(err.code.as_deref(), Some("BadRequest"), "{err}");
    assert!(err.operation_ended, "{err:?}");
}

/// A Location poll answering a server error says nothing of the operation: the error is the poll's (retried
/// as any 5xx), not the operation's end.
#[tokio::test]
async fn a_location_that_answers_a_server_error_is_no_operation_end() {
    let env = start().await;
    let arm = env.arm(&Metrics::new());
    env.sim.set_lro(LroConfig {
        location_failure_status: 500,
        ..operations(LroStyle::Location, 1)
    });
    let err = arm
        .put_prefix(RG, "p", &env.prefix())
        .await
        .expect_err("the poll failed");
    assert_eq!(err.status, Some(500), "{err}");
    assert_eq!(err.code.as_deref(), Some("InternalServerError"), "{err}");
    assert!(!err.operation_ended, "{err:?}");
}

#[tokio::test]
async fn a_provisioning_state_that_ends_failed_fails_the_write() {
    let env = start().await;
    let arm = env.arm(&Metrics::new());
    env.sim.set_lro(operations(LroStyle::ProvisioningState, 1));
    let err = arm
        .put_prefix(RG, "p", &env.prefix())
        .await
        .expect_err("the operation failed");
    assert_eq!(err.operation, "PUT publicIPPrefixes");
    assert!(err.operation_ended, "{err:?}");
    assert!(err.message.contains("the operation ended Failed"), "{err}");
    assert_eq!(
        env.polls_seen(LroStyle::ProvisioningState),
        3,
        "{:?}",
        env.sim.calls()
    );
}

#[tokio::test]
async fn an_operation_over_before_the_deadline_is_done_although_its_next_poll_was_due_after_it() {
    let env = start().await;
    for style in STYLES {
        // Every answer asks for the next poll an hour later; the operation is over on its own 50 ms after the
        // write's answer, and the client's deadline is 200 ms after that answer: the client polls once more at
        // the deadline and finds it over.
        env.sim.set_lro(LroConfig {
            in_progress_polls: u32::MAX,
            retry_after_ms: 3_600_000,
            max_duration_ms: 50,
            ..operations(style, 0)
        });
        let arm = env.arm_with_deadline(&Metrics::new(), Duration::from_millis(200));
        env.put_succeeds(&arm, style).await;
        assert_eq!(
            env.polls_seen(style),
            1,
            "{style:?}: one poll, at the deadline: {:?}",
            env.sim.calls()
        );
    }
}

#[tokio::test]
async fn a_poll_that_answers_after_the_deadline_is_the_last() {
    let env = start().await;
    // Polls are due 1 ms apart and the operation runs for good; every answer takes 300 ms, so the first poll,
    // started before the 200 ms deadline, answers after it.
    env.sim.set_lro(LroConfig {
        in_progress_polls: u32::MAX,
        max_duration_ms: 600_000,
        ..operations(LroStyle::Location, 0)
    });
    env.sim.set_latency(Duration::from_millis(300));
    let arm = env.arm_with_deadline(&Metrics::new(), Duration::from_millis(200));
    env.sim.clear_calls();
    let err = arm
        .put_prefix(RG, "p", &env.prefix())
        .await
        .expect_err("still running at the deadline");
    assert!(err.message.contains("did not finish within 0.2s"), "{err}");
    assert_eq!(
        env.polls_seen(LroStyle::Location),
        1,
        "no second poll after the one that answered past the deadline: {:?}",
        env.sim.calls()
    );
}
