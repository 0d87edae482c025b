//! Managed identity through the real `VirtualMachineManagedIdentityCredential` of azure_identity 0.21, which
//! always asks IMDS at 169.254.169.254: the simulator is given that address inside a network namespace of the
//! test's own (needs root, as CI has), and the token it issues then authorises a real ARM call.

mod azure_support;

use std::process::Command;
use std::sync::Arc;

use azure_core::Url;
use azure_core::auth::TokenCredential;
use azure_identity::VirtualMachineManagedIdentityCredential;
use testbed::azure::{AzureSim, Seed};

/// A network namespace that is removed even when the test fails.
struct Netns(String);

impl Netns {
    fn new(name: String) -> Self {
        let _ = Command::new("ip").args(["netns", "del", &name]).status();
        ip(&["netns", "add", &name]);
        Netns(name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("ip(8) is installed (scripts/install-deps.sh)");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn vm_managed_identity_credential_gets_a_token_that_arm_accepts() {
    let ns = Netns::new(format!("kegw-mi-{}", std::process::id()));
    ip(&["-n", &ns.0, "link", "set", "lo", "up"]);
    ip(&["-n", &ns.0, "addr", "add", "169.254.169.254/32", "dev", "lo"]);
    let path = format!("/var/run/netns/{}", ns.0);

    // Network namespaces are per thread: this thread, and the sockets it opens, live in the test's namespace.
    let worker = std::thread::spawn(move || {
        let file = std::fs::File::open(&path).expect("open netns");
        nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).expect("enter netns");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let seed = Seed::aks_like(2);
            let sim = AzureSim::start_on(&seed, "169.254.169.254:80".parse().expect("addr"))
                .await
                .expect("simulator");
            let credential: Arc<dyn TokenCredential> = Arc::new(
                VirtualMachineManagedIdentityCredential::new(azure_core::new_http_client()),
            );
            let scope = format!("{}/.default", sim.url());
            let token = credential
                .get_token(&[&scope])
                .await
                .expect("managed identity token from IMDS");
            assert!(!token.token.secret().is_empty());

            // The token authorises ARM calls through the production client.
            let compute = azure_mgmt_compute::Client::builder(credential)
                .endpoint(Url::parse(sim.url()).expect("url"))
                .retry(azure_support::fast_retry())
                .build()
                .expect("client");
            let vmss = compute
                .virtual_machine_scale_sets_client()
                .get(
                    azure_support::RG,
                    azure_support::VMSS,
                    seed.subscription_id.clone(),
                )
                .await
                .expect("GET VMSS with the managed identity token");
            assert_eq!(vmss.resource.name.as_deref(), Some(azure_support::VMSS));
        });
    });
    worker.join().expect("managed identity flow");
}
