//! A worker process as the harnesses run it: in its own process group (so a terminal Ctrl-C
//! reaches only the harness, which then stops the workers in order), stdout and stderr appended
//! to one log file, and its HTTP address (`/metrics`, `/readyz`) read from the `http_listen`
//! field the runtime logs at start-up.

use std::fs::{File, OpenOptions};
use std::io::{Read as _, Seek as _, SeekFrom};
use std::os::unix::process::{CommandExt as _, ExitStatusExt as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::HarnessError;

/// A running (or exited) worker process; killed and reaped when dropped.
pub struct Proc {
    pub name: String,
    pub log: PathBuf,
    child: Child,
    /// Where this process's lines start: a restarted replica appends to its predecessor's log.
    log_start: u64,
    http: Option<String>,
    exit: Option<ExitStatus>,
}

impl Proc {
    /// Starts `command` with its output appended to `log`.
    pub fn spawn(name: &str, mut command: Command, log: &Path) -> Result<Self, HarnessError> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|e| HarnessError::io(format!("open {}", log.display()), e))?;
        let log_start = file.metadata().map(|m| m.len()).unwrap_or(0);
        let err = file
            .try_clone()
            .map_err(|e| HarnessError::io(format!("open {}", log.display()), e))?;
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::from(file))
            .stderr(Stdio::from(err))
            .process_group(0)
            .spawn()
            .map_err(|e| HarnessError::io(format!("start {name}"), e))?;
        Ok(Self {
            name: name.to_string(),
            log: log.to_path_buf(),
            child,
            log_start,
            http: None,
            exit: None,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `host:port` of the worker's HTTP endpoint, once it has logged it (JSON log format).
    pub fn http_addr(&mut self) -> Option<String> {
        if self.http.is_none() {
            self.http = self.own_log().lines().find_map(|line| {
                if !line.contains("\"http_listen\"") {
                    return None;
                }
                let v: serde_json::Value = serde_json::from_str(line).ok()?;
                // The field sits at the top level or under `fields`, depending on the formatter.
                v.get("http_listen")
                    .or_else(|| v.get("fields").and_then(|f| f.get("http_listen")))
                    .and_then(|a| a.as_str())
                    .map(str::to_string)
            });
        }
        self.http.clone()
    }

    /// This process's part of the log.
    pub fn own_log(&self) -> String {
        let mut text = String::new();
        if let Ok(mut f) = File::open(&self.log) {
            if f.seek(SeekFrom::Start(self.log_start)).is_ok() {
                let mut bytes = Vec::new();
                let _ = f.read_to_end(&mut bytes);
                text = String::from_utf8_lossy(&bytes).into_owned();
            }
        }
        text
    }

    /// The last `bytes` of this process's log, for error messages.
    pub fn log_tail(&self, bytes: usize) -> String {
        let log = self.own_log();
        let mut start = log.len().saturating_sub(bytes);
        while !log.is_char_boundary(start) {
            start += 1;
        }
        log[start..].to_string()
    }

    /// The exit status once the process has exited (reaped here).
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            self.exit = self.child.try_wait().ok().flatten();
        }
        self.exit
    }

    pub fn alive(&mut self) -> bool {
        self.exit_status().is_none()
    }

    /// Sends `signal` (e.g. `libc::SIGTERM`) to the process.
    pub fn signal(&self, signal: i32) -> Result<(), HarnessError> {
        // SAFETY: kill(2) with a pid this harness started and has not reaped yet.
        let rc = unsafe { libc::kill(self.child.id() as libc::pid_t, signal) };
        if rc != 0 {
            return Err(HarnessError::io(
                format!("signal {signal} to {} (pid {})", self.name, self.pid()),
                std::io::Error::last_os_error(),
            ));
        }
        Ok(())
    }

    /// Waits up to `timeout` for the process to exit, then SIGKILLs it.
    pub async fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.exit_status() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let status = self.child.wait().unwrap_or(ExitStatus::from_raw(9));
                self.exit = Some(status);
                return status;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Sends `signal` (unless it already exited) and waits up to `timeout` for the exit.
    pub async fn stop(&mut self, signal: i32, timeout: Duration) -> ExitStatus {
        if self.alive() {
            let _ = self.signal(signal);
        }
        self.wait(timeout).await
    }
}

/// `0`, `1`, or `signal 9`: an exit status as the summaries print it.
pub fn describe(status: Option<ExitStatus>) -> String {
    match status {
        None => "(still running)".into(),
        Some(s) => match (s.code(), s.signal()) {
            (Some(code), _) => code.to_string(),
            (None, Some(sig)) => format!("signal {sig}"),
            (None, None) => "?".into(),
        },
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.exit.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn captures_the_log_finds_the_address_and_reports_the_exit() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("w.log");
        std::fs::write(&log, "{\"http_listen\":\"127.0.0.1:1\"}\n").unwrap();
        let mut c = Command::new("sh");
        c.args([
            "-c",
            r#"echo '{"level":"INFO","fields":{"message":"serving","http_listen":"127.0.0.1:4242"}}'; exit 3"#,
        ]);
        let mut p = Proc::spawn("w", c, &log).unwrap();
        let status = p.wait(Duration::from_secs(10)).await;
        // The predecessor's line (before log_start) is not this process's address.
        assert_eq!(p.http_addr().as_deref(), Some("127.0.0.1:4242"));
        assert_eq!(describe(Some(status)), "3");
        assert!(!p.alive());
    }

    #[tokio::test]
    async fn a_signal_ends_it_and_is_described() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = Command::new("sleep");
        c.arg("30");
        let mut p = Proc::spawn("sleeper", c, &dir.path().join("s.log")).unwrap();
        assert!(p.alive());
        let status = p.stop(libc::SIGKILL, Duration::from_secs(10)).await;
        assert_eq!(describe(Some(status)), "signal 9");
    }
}
