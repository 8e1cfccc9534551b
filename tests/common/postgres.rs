//! A throwaway PostgreSQL cluster for the ledger and admin tests: initdb in a
//! temporary folder, pg_ctl on a free port; stopped and removed on drop.

use std::path::PathBuf;
use std::process::Command;

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A throwaway PostgreSQL cluster: initdb in a temporary folder, pg_ctl on a free
/// port; stopped and removed on drop.
pub struct Postgres {
    pub bindir: PathBuf,
    pub root: tempfile::TempDir,
    pub port: u16,
    pub as_postgres: bool,
}

impl Postgres {
    pub fn bindir() -> PathBuf {
        let mut candidates: Vec<PathBuf> = Vec::new();
        if let Ok(path) = std::env::var("PATH") {
            candidates.extend(std::env::split_paths(&path));
        }
        let mut debian: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
            .map(|d| d.flatten().map(|e| e.path().join("bin")).collect())
            .unwrap_or_default();
        // The newest version first.
        debian.sort_by_key(|p| {
            let version = p
                .parent()
                .and_then(|v| v.file_name())
                .and_then(|v| v.to_str());
            std::cmp::Reverse(version.and_then(|v| v.parse::<u32>().ok()).unwrap_or(0))
        });
        candidates.extend(debian);
        candidates
            .into_iter()
            .find(|dir| ["initdb", "pg_ctl"].iter().all(|t| dir.join(t).exists()))
            .unwrap_or_else(|| {
                panic!(
                    "PostgreSQL is not installed (initdb and pg_ctl are on neither PATH nor \
                     /usr/lib/postgresql/*/bin): scripts/test installs it (apt-get install \
                     postgresql)"
                )
            })
    }

    pub fn run(&self, tool: &str, args: &[&str]) -> std::process::Output {
        let program = self.bindir.join(tool);
        let mut cmd = if self.as_postgres {
            let mut cmd = Command::new("runuser");
            cmd.args(["-u", "postgres", "--"]).arg(&program);
            cmd
        } else {
            Command::new(&program)
        };
        cmd.args(args)
            .current_dir(self.root.path())
            .output()
            .unwrap()
    }

    pub fn data(&self) -> String {
        self.root.path().join("data").display().to_string()
    }

    pub fn start() -> Postgres {
        let bindir = Self::bindir();
        let root = tempfile::Builder::new()
            .prefix("lm-proxy-pg-")
            .tempdir()
            .unwrap();
        // PostgreSQL refuses to run as root: as root, its tools run as `postgres`.
        let as_postgres = unsafe { libc::geteuid() } == 0;
        if as_postgres {
            let chown = Command::new("chown")
                .args(["postgres:", &root.path().display().to_string()])
                .status()
                .unwrap();
            assert!(
                chown.success(),
                "chown to postgres (needs the postgres user)"
            );
        }
        let mut pg = Postgres {
            bindir,
            root,
            port: 0,
            as_postgres,
        };
        let data = pg.data();
        let out = pg.run(
            "initdb",
            &[
                "-D",
                &data,
                "-U",
                "lmproxy",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        );
        assert!(out.status.success(), "initdb: {out:?}");
        // A free port may be taken before the server binds it: try a few.
        for _ in 0..3 {
            pg.port = free_port();
            if pg.pg_start() {
                return pg;
            }
        }
        panic!("PostgreSQL did not start: {}", pg.server_log());
    }

    /// `pg_ctl start -w`: returns once the server accepts connections (or failed).
    pub fn pg_start(&self) -> bool {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.root.path().display()
        );
        let log = self.root.path().join("server.log").display().to_string();
        let data = self.data();
        let out = self.run(
            "pg_ctl",
            &[
                "-D", &data, "-l", &log, "-w", "-t", "60", "-o", &options, "start",
            ],
        );
        out.status.success()
    }

    pub fn pg_stop(&self) {
        let data = self.data();
        let out = self.run("pg_ctl", &["-D", &data, "-w", "-m", "fast", "stop"]);
        assert!(out.status.success(), "pg_ctl stop: {out:?}");
    }

    pub fn server_log(&self) -> String {
        std::fs::read_to_string(self.root.path().join("server.log")).unwrap_or_default()
    }

    pub fn url(&self) -> String {
        format!("postgres://lmproxy@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let data = self.data();
        let _ = self.run("pg_ctl", &["-D", &data, "-w", "-m", "immediate", "stop"]);
    }
}
