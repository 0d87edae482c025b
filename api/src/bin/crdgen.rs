//! Writes the CRD manifests into the chart: `cargo run -p api --bin crdgen [-- <workspace root>]`.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if std::env::args().nth(1).as_deref() == Some("--version") {
        println!("crdgen {}", env!("CARGO_PKG_VERSION"));
        return Ok(());
    }
    let root = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".."));
    let dir = root.join(api::crd::CHART_CRD_DIR);
    std::fs::create_dir_all(&dir)?;
    for (file, body) in api::crd::manifests()? {
        std::fs::write(dir.join(&file), body)?;
        println!("wrote {}", dir.join(file).display());
    }
    Ok(())
}
