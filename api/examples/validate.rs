//! Prints the verdict the rules give each manifest: `cargo run -p api --example validate -- FILE...`.

use api::rules::{PoolFacts, validate_pool_object, validate_sgc_object};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for path in std::env::args().skip(1) {
        let text = std::fs::read_to_string(&path)?;
        let mut obj: serde_json::Value = serde_yaml::from_str(&text)?;
        let kind = obj["kind"].as_str().unwrap_or_default().to_string();
        let verdict = match kind.as_str() {
            "StaticGatewayConfiguration" => {
                let patch = api::defaults::sgc_defaults(&obj);
                json_patch::patch(&mut obj, &patch)?;
                validate_sgc_object(&obj, None, &PoolFacts::default())
            }
            "GatewayPool" => validate_pool_object(&obj, None, None),
            other => {
                println!("?  {path}: kind {other:?} is not validated");
                continue;
            }
        };
        let name = obj["metadata"]["name"].as_str().unwrap_or("?");
        if verdict.is_allowed() {
            println!("✔  {kind} {name} ({path}): accepted");
        } else {
            println!("✘  {kind} {name} ({path}): denied: {}", verdict.message());
        }
        for w in &verdict.warnings {
            println!("   warning: {w}");
        }
    }
    Ok(())
}
