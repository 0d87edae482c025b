//! kube-egress-cni binary: reads the CNI environment and stdin, prints the result or a CNI error.
use std::io::Read as _;

fn main() -> std::process::ExitCode {
    // Runtimes pass everything through CNI_* variables; `--version` is for humans and the image tests.
    if std::env::args().nth(1).as_deref() == Some("--version") {
        println!("kube-egress-cni {}", env!("CARGO_PKG_VERSION"));
        return std::process::ExitCode::SUCCESS;
    }
    let env = cni::plugin::CniEnv::from_env();
    let mut stdin = Vec::new();
    if env.command != "VERSION" && std::io::stdin().read_to_end(&mut stdin).is_err() {
        stdin.clear();
    }
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            println!(
                "{}",
                cni::conf::CniError::new(
                    cni::conf::CniError::TRY_AGAIN,
                    "cannot start runtime",
                    e.to_string()
                )
                .to_json("1.0.0")
            );
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(cni::plugin::run(&env, &stdin)) {
        Ok(v) => {
            // STATUS and GC succeed without output.
            if !v.is_null() {
                println!("{v}");
            }
            std::process::ExitCode::SUCCESS
        }
        Err((e, version)) => {
            eprintln!("kube-egress-cni {}: {e}", env.command);
            println!("{}", e.to_json(&version));
            std::process::ExitCode::FAILURE
        }
    }
}
