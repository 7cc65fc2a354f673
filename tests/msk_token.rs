//! Golden test of the MSK IAM token: for fixed credentials, region and signing time, the relay's token is the
//! token AWS's official signer `aws-msk-iam-sasl-signer-python` (pinned in scripts/setup.sh) produces. The
//! signer runs here, through scripts/msk/reference-token.py and the project virtualenv's python
//! (`RELAY_VENV`, default `<repo>/.venv`; scripts/setup.sh installs it); nothing is pasted from it.
//!
//! The Python signer appends its own `User-Agent` query parameter (unsigned) after signing; the relay's
//! tokens carry `kafka-lambda-relay/<version>` there. The byte-for-byte comparison signs with the Python
//! signer's user agent; a second comparison checks that the relay's own token differs in nothing else.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_credential_types::Credentials;
use base64::Engine as _;
use kafka_lambda_relay::auth::msk::{sign_token, USER_AGENT};

struct Case {
    region: &'static str,
    access_key: &'static str,
    secret_key: &'static str,
    session_token: Option<&'static str>,
    epoch: u64,
}

const CASES: &[Case] = &[
    Case {
        region: "us-east-1",
        access_key: "AKIAIOSFODNN7EXAMPLE",
        secret_key: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        session_token: Some("IQoJb3JpZ2luX2VjEJr//////////wEaCXVzLWVhc3QtMSJHMEUCIQ+test/token=="),
        epoch: 1_700_000_000,
    },
    Case {
        region: "eu-central-1",
        access_key: "ASIAEXAMPLEKEYID0001",
        secret_key: "abc+def/ghi=jkl",
        session_token: None,
        epoch: 1_767_225_599, // 2025-12-31T23:59:59Z: the date in the credential scope changes the next second
    },
    Case {
        region: "ap-southeast-2",
        access_key: "ASIAEXAMPLEKEYID0002",
        secret_key: "secret",
        session_token: Some("short"),
        epoch: 1_767_225_600,
    },
];

fn python() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let venv = std::env::var_os("RELAY_VENV").map(PathBuf::from).unwrap_or_else(|| root.join(".venv"));
    let python = venv.join("bin/python");
    assert!(
        python.exists(),
        "{} does not exist: run scripts/setup.sh (it installs aws-msk-iam-sasl-signer-python into the venv) or set RELAY_VENV",
        python.display()
    );
    python
}

/// (token, expiry in ms, user agent) from AWS's Python signer.
fn reference(case: &Case) -> (String, i64, String) {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/msk/reference-token.py");
    let output = Command::new(python())
        .arg(script)
        .env("MSK_REF_REGION", case.region)
        .env("MSK_REF_ACCESS_KEY", case.access_key)
        .env("MSK_REF_SECRET_KEY", case.secret_key)
        .env("MSK_REF_SESSION_TOKEN", case.session_token.unwrap_or(""))
        .env("MSK_REF_EPOCH", case.epoch.to_string())
        // No profile or other credentials of this machine may leak into the reference.
        .env_remove("AWS_PROFILE")
        .output()
        .expect("python runs");
    assert!(output.status.success(), "reference signer failed: {}", String::from_utf8_lossy(&output.stderr));
    let value: serde_json::Value = serde_json::from_slice(&output.stdout).expect("reference prints JSON");
    (
        value["token"].as_str().expect("token").to_string(),
        value["expiry_ms"].as_i64().expect("expiry_ms"),
        value["user_agent"].as_str().expect("user_agent").to_string(),
    )
}

fn credentials(case: &Case) -> Credentials {
    Credentials::new(case.access_key, case.secret_key, case.session_token.map(String::from), None, "golden")
}

fn decode(token: &str) -> String {
    String::from_utf8(base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(token).expect("base64url, no padding"))
        .expect("UTF-8 URL")
}

#[test]
fn token_is_byte_for_byte_the_official_python_signers() {
    for case in CASES {
        let (expected, expiry_ms, user_agent) = reference(case);
        assert!(user_agent.starts_with("aws-msk-iam-sasl-signer-python/"), "{user_agent}");
        let time = UNIX_EPOCH + Duration::from_secs(case.epoch);
        let ours = sign_token(case.region, &credentials(case), time, &user_agent).expect("signs");
        // Compare the decoded URLs first: a mismatch then shows which parameter differs.
        assert_eq!(decode(&ours.token), decode(&expected), "region {}", case.region);
        assert_eq!(ours.token, expected, "region {}", case.region);
        let ours_ms = ours.expires_at.duration_since(UNIX_EPOCH).unwrap().as_millis() as i64;
        assert_eq!(ours_ms, expiry_ms, "expiry, region {}", case.region);
    }
}

#[test]
fn relay_token_differs_from_the_reference_only_in_its_user_agent() {
    let case = &CASES[0];
    let (expected, _, user_agent) = reference(case);
    let time = UNIX_EPOCH + Duration::from_secs(case.epoch);
    let ours = decode(&sign_token(case.region, &credentials(case), time, USER_AGENT).expect("signs").token);
    let theirs = decode(&expected);
    let escape = |ua: &str| ua.replace('/', "%2F");
    assert!(ours.ends_with(&format!("&User-Agent={}", escape(USER_AGENT))), "{ours}");
    assert_eq!(
        ours.strip_suffix(&format!("&User-Agent={}", escape(USER_AGENT))),
        theirs.strip_suffix(&format!("&User-Agent={}", escape(&user_agent))),
    );
}

#[test]
fn a_different_secret_or_time_changes_the_signature() {
    let case = &CASES[0];
    let time = UNIX_EPOCH + Duration::from_secs(case.epoch);
    let signature = |credentials: &Credentials, time: SystemTime| {
        let url = decode(&sign_token(case.region, credentials, time, USER_AGENT).unwrap().token);
        url.split("X-Amz-Signature=").nth(1).unwrap().split('&').next().unwrap().to_string()
    };
    let base = signature(&credentials(case), time);
    let other_secret =
        Credentials::new(case.access_key, "another-secret", case.session_token.map(String::from), None, "golden");
    assert_ne!(base, signature(&other_secret, time));
    assert_ne!(base, signature(&credentials(case), time + Duration::from_secs(1)));
    assert_eq!(base.len(), 64, "hex SHA-256 HMAC");
}
