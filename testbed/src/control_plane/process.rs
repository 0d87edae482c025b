//! A child process that cannot outlive the test process: it runs under a small `sh` guard whose stdin is a
//! pipe from us. When we close it (drop) or exit for any reason (panic, abort, SIGKILL), the guard reads EOF,
//! kills the child and, for the last process of a control plane, removes its folder.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};

use anyhow::Context as _;

/// `"$@"` in the background with its output in `$LOG`, then wait for EOF on stdin.
const GUARD: &str = r#""$@" </dev/null >>"$LOG" 2>&1 &
child=$!
echo "$child" >"$LOG.pid"
cat >/dev/null
kill -9 "$child" 2>/dev/null
wait "$child" 2>/dev/null
if [ -n "$CLEAN" ]; then rm -rf "$CLEAN"; fi
"#;

/// One guarded process.
#[derive(Debug)]
pub struct Guarded {
    name: String,
    log: PathBuf,
    guard: Child,
    lifeline: Option<ChildStdin>,
}

impl Guarded {
    /// Starts `program args` with its output appended to `log`; `clean` is removed once it has stopped.
    pub fn spawn(
        name: &str,
        program: &Path,
        args: &[String],
        log: &Path,
        clean: Option<&Path>,
    ) -> anyhow::Result<Self> {
        let mut guard = Command::new("sh")
            .arg("-c")
            .arg(GUARD)
            .arg("sh")
            .arg(program)
            .args(args)
            .env("LOG", log)
            .env("CLEAN", clean.map(Path::as_os_str).unwrap_or_default())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {name} ({})", program.display()))?;
        let lifeline = guard.stdin.take();
        Ok(Self {
            name: name.to_string(),
            log: log.to_path_buf(),
            guard,
            lifeline,
        })
    }

    /// The last `lines` lines of its output (for error messages).
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        let tail = all[all.len().saturating_sub(lines)..].join("\n");
        format!("--- {} ({}) ---\n{tail}", self.name, self.log.display())
    }

    /// Whether the process still runs (its guard is up and its pid is alive).
    pub fn running(&self) -> bool {
        let Ok(pid) = std::fs::read_to_string(self.log.with_extension("log.pid")) else {
            return true; // not written yet: just started
        };
        Path::new("/proc").join(pid.trim()).join("stat").exists()
            && std::fs::read_to_string(Path::new("/proc").join(pid.trim()).join("stat"))
                .is_ok_and(|s| !s.contains(") Z "))
    }

    /// Stops the process and waits for its guard (which also removes its `clean` folder).
    pub fn stop(&mut self) {
        if let Some(mut l) = self.lifeline.take() {
            let _ = l.flush();
        }
        let _ = self.guard.wait();
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        self.stop();
    }
}
