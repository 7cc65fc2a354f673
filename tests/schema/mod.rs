//! Helpers of the schema registry tests: the Confluent registry test double (`registry_double.py`) and
//! the producers (`produce.py`), both run with the project virtualenv's Python (`RELAY_VENV`).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::Value;

pub type TestResult<T = ()> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

pub fn python() -> PathBuf {
    let venv = std::env::var("RELAY_VENV").expect("RELAY_VENV names the project virtualenv (scripts/test.sh sets it)");
    Path::new(&venv).join("bin/python")
}

pub fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/schema").join(name)
}

pub fn moto() -> String {
    std::env::var("RELAY_TEST_MOTO").expect("RELAY_TEST_MOTO names moto_server (scripts/test.sh sets it)")
}

pub async fn moto_config() -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .endpoint_url(moto())
        .credentials_provider(aws_sdk_secretsmanager::config::Credentials::new("test", "test", None, None, "moto"))
        .load()
        .await
}

/// One produced record's framed key and value.
pub type Framed = (Option<Vec<u8>>, Option<Vec<u8>>);

/// Runs tests/schema/produce.py: the framed key/value bytes of each record, and the Glue registry ARN.
pub fn produce(request: Value) -> TestResult<(Vec<Framed>, Option<String>)> {
    let mut child = Command::new(python())
        .arg(script("produce.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    serde_json::to_writer(child.stdin.take().ok_or("stdin")?, &request)?;
    let output = child.wait_with_output()?;
    if !output.status.success() {
        return Err(format!("produce.py failed: {}", String::from_utf8_lossy(&output.stderr)).into());
    }
    let answer: Value = serde_json::from_slice(&output.stdout)?;
    let b64 = |v: &Value| v.as_str().map(|s| base64::engine::general_purpose::STANDARD.decode(s)).transpose();
    let mut records = Vec::new();
    for record in answer["records"].as_array().ok_or("records")? {
        records.push((b64(&record["key"])?, b64(&record["value"])?));
    }
    Ok((records, answer["registry_arn"].as_str().map(String::from)))
}

/// The Confluent registry test double on a free 127.0.0.1 port, serving from its own directory; stopped
/// (by its PID) on drop.
pub struct RegistryDouble {
    child: Child,
    /// The directory it serves from (and its test hooks: `down`, `basic-auth`, `requests.log`).
    pub dir: PathBuf,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
}

impl RegistryDouble {
    /// Starts it on a free port.
    pub fn start() -> TestResult<Self> {
        Self::start_with(&[], "http")
    }

    /// Starts it serving HTTPS with `cert` and `key`, requiring client certificates signed by `client_ca`
    /// when given.
    pub fn start_tls(cert: &Path, key: &Path, client_ca: Option<&Path>) -> TestResult<Self> {
        let mut args = vec![cert.to_path_buf(), key.to_path_buf()];
        args.extend(client_ca.map(Path::to_path_buf));
        Self::start_with(&args, "https")
    }

    fn start_with(tls: &[PathBuf], scheme: &str) -> TestResult<Self> {
        let dir = std::env::temp_dir().join(unique("registry-double"));
        std::fs::create_dir_all(&dir)?;
        let port_file = dir.join("port");
        let child = Command::new(python())
            .arg(script("registry_double.py"))
            .arg(&dir)
            .arg(&port_file)
            .args(tls)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()?;
        let mut double = Self { child, dir, url: String::new() };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !port_file.exists() {
            if Instant::now() > deadline {
                return Err("the registry test double did not start in 20 s".into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        double.url = format!("{scheme}://127.0.0.1:{}", std::fs::read_to_string(&port_file)?.trim());
        Ok(double)
    }

    /// Makes every request answer 503 (a registry outage), or stops that.
    pub fn set_down(&self, down: bool) -> TestResult {
        let flag = self.dir.join("down");
        if down {
            std::fs::write(flag, "")?;
        } else {
            std::fs::remove_file(flag)?;
        }
        Ok(())
    }

    /// `METHOD PATH STATUS` lines, one per request answered.
    pub fn requests(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.join("requests.log")).unwrap_or_default().lines().map(String::from).collect()
    }
}

impl Drop for RegistryDouble {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
