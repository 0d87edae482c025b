//! How the lab reports: a numbered step, a verified fact under it, or plain information.

/// Prints the start of a named step.
pub fn step(n: usize, name: &str) {
    println!("\n==> step {n}: {name}");
}

/// Prints a verified fact under the current step.
pub fn ok(msg: &str) {
    println!("    \u{2714} {msg}");
}

/// Prints information (not a verification) under the current step.
pub fn info(msg: &str) {
    println!("    {msg}");
}
