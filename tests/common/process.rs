//! The built binary as a child process: started on a free port with its stderr
//! collected, killed on drop; and run-to-exit helpers for startup errors.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_lm-proxy-server");

/// The binary running on a free port; stderr is collected; killed on drop.
pub struct Proc {
    pub child: Child,
    pub url: String,
    stderr: Arc<Mutex<Vec<String>>>,
    /// The thread reading stderr; it ends at EOF, once the process has exited.
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Proc {
    pub fn start(dir: &Path, args: &[&str], envs: &[(&str, &str)]) -> Proc {
        lm_proxy::server::install_crypto_provider();
        let mut cmd = Command::new(BIN);
        cmd.current_dir(dir)
            .args(args)
            .args(["--port", "0", "--host", "127.0.0.1"])
            .env_remove("LM_PROXY_DEBUG")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("binary starts");
        let stderr = child.stderr.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = lines.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(pos) = line.find("listening on ") {
                    let url = line[pos + 13..]
                        .split_whitespace()
                        .next()
                        .unwrap_or("")
                        .to_owned();
                    let _ = tx.send(url);
                }
                sink.lock().unwrap().push(line);
            }
        });
        let url = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(url) => url,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "server did not become ready; stderr: {:?}",
                    lines.lock().unwrap()
                );
            }
        };
        Proc {
            child,
            url,
            stderr: lines,
            reader: Some(reader),
        }
    }

    pub fn log(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }

    /// All of stderr, once the process has exited (waits for the reader to see EOF).
    pub fn log_after_exit(&mut self) -> String {
        assert!(
            self.child.try_wait().unwrap().is_some(),
            "log_after_exit: the process is still running"
        );
        if let Some(reader) = self.reader.take() {
            reader.join().unwrap();
        }
        self.log()
    }

    /// Wait until a log line contains `needle` (log lines are written after the answer;
    /// request lines up to 100 ms later, in batches).
    pub fn wait_for_log(&self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let log = self.log();
            if log.contains(needle) {
                return log;
            }
            // Returning quietly here would leave the caller asserting on a log that
            // is merely incomplete; say what was awaited instead.
            assert!(
                Instant::now() < deadline,
                "no {needle:?} in the log within 10 s:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Run the binary expecting it to exit; returns (exit code, stdout, stderr).
pub fn run_to_exit(dir: &Path, args: &[&str], envs: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = Command::new(BIN);
    cmd.current_dir(dir)
        .args(args)
        .env_remove("LM_PROXY_DEBUG")
        .stdin(Stdio::null());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

pub fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::File::create(&path)
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    path
}

impl Proc {
    /// Send a signal (`-TERM`, `-HUP`, ...) with kill(1).
    pub fn signal(&self, signal: &str) {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill")
            .args([signal, &pid])
            .status()
            .unwrap()
            .success());
    }

    /// Wait for the process to exit (bounded).
    pub fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "process did not exit within {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
