//! A real S3-compatible server for the tiered storage tests: s3s-fs (installed by
//! `scripts/setup-test-deps.sh`), which checks SigV4 signatures and keeps each object as a file
//! under its root, so a test can see what the bucket holds.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub const ACCESS_KEY: &str = "fjord-test-access";
pub const SECRET_KEY: &str = "fjord-test-secret-key-0123456789";
pub const BUCKET: &str = "fjord-tiered";

/// The s3s-fs binary: `S3S_FS_BIN`, the one setup-test-deps installs, or one on PATH.
pub fn s3s_fs_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("S3S_FS_BIN") {
        return PathBuf::from(p);
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_default();
    let cached = home.join(".cache/fjord/tools/bin/s3s-fs");
    if cached.exists() {
        return cached;
    }
    PathBuf::from("s3s-fs")
}

pub struct S3Server {
    child: Option<Child>,
    pub root: tempfile::TempDir,
    pub port: u16,
}

impl S3Server {
    /// A server on a free loopback port with the bucket `BUCKET` created.
    pub fn start() -> S3Server {
        let root = tempfile::tempdir().expect("s3 root");
        std::fs::create_dir_all(root.path().join(BUCKET)).expect("bucket dir");
        let mut s = S3Server { child: None, root, port: crate::free_port() };
        s.spawn();
        s
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.root.path().with_extension("log"))
            .expect("s3 log");
        let child = Command::new(s3s_fs_bin())
            .args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
            .arg(self.root.path())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("s3s-fs is installed (scripts/setup-test-deps.sh)");
        self.child = Some(child);
        let addr = format!("127.0.0.1:{}", self.port);
        crate::wait_until(Duration::from_secs(30), "s3s-fs listening", || {
            std::net::TcpStream::connect_timeout(&addr.parse().expect("addr"), Duration::from_millis(200)).is_ok()
        });
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The broker flags that point a node at this server's bucket, copying often.
    pub fn broker_args(&self) -> Vec<String> {
        [
            "--remote-storage-enable",
            "true",
            "--s3-bucket",
            BUCKET,
            "--s3-endpoint",
            &self.endpoint(),
            "--s3-region",
            "us-east-1",
            "--remote-log-manager-task-interval-ms",
            "100",
            "--log-retention-check-interval-ms",
            "100",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    /// The credentials, from the environment as the AWS chain reads them (and no instance
    /// metadata lookups, which would wait on a network this machine has not got).
    pub fn env(secret: &str) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY.to_string()),
            ("AWS_SECRET_ACCESS_KEY", secret.to_string()),
            ("AWS_EC2_METADATA_DISABLED", "true".to_string()),
            ("AWS_CONFIG_FILE", "/nonexistent".to_string()),
            ("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent".to_string()),
        ]
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts again on the same port and root.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Every object in the bucket, as paths relative to it (s3s-fs's own bookkeeping files,
    /// hidden ones, left out).
    pub fn objects(&self) -> Vec<String> {
        let base = self.root.path().join(BUCKET);
        let mut out = Vec::new();
        walk(&base, &base, &mut out);
        out.sort();
        out
    }

    pub fn read(&self, object: &str) -> Vec<u8> {
        std::fs::read(self.root.path().join(BUCKET).join(object)).unwrap_or_default()
    }
}

fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let p = e.path();
        let name = e.file_name().to_string_lossy().to_string();
        if name.starts_with('.') {
            continue;
        }
        if p.is_dir() {
            walk(base, &p, out);
        } else if let Ok(rel) = p.strip_prefix(base) {
            out.push(rel.to_string_lossy().to_string());
        }
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.kill();
    }
}
