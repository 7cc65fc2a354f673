//! Authentication and TLS for the Kafka connection, from `SourceAccessConfigurations` and Secrets Manager
//! (SPEC section 6), and AWS's error codes for what goes wrong.
//!
//! Flow: [`resolve`] reads each entry's secret through a [`SecretSource`] (production:
//! [`SecretsManagerSource`], one fetch per ARN per run), checks its JSON shape and turns the whole list into a
//! [`KafkaSecurity`]: librdkafka settings that [`KafkaSecurity::apply`] puts on a `ClientConfig`. While a
//! client runs, a [`ConnectionDiagnostics`] (fed by [`DiagnosingContext`] or by the caller's own context)
//! collects librdkafka's errors and logs, and [`ConnectionDiagnostics::diagnose`] names the failure with
//! AWS's code and a `LastProcessingResult` sentence that says what to fix. [`check`] does all of this once
//! without consuming, for `run --check`.
//!
//! Rules enforced here:
//! - TLS is on whenever a SASL or certificate type is configured. AWS has no way to ask for SASL over
//!   plaintext and neither does the relay: the only place a user could force it is a `PLAINTEXT://` or
//!   `SASL_PLAINTEXT://` prefix on a bootstrap server (librdkafka honours such a prefix per broker), and
//!   [`resolve`] refuses any prefix that disagrees with the protocol it chose (`ESM_CONFIG_NOT_VALID`).
//! - Broker certificates are always verified, hostname included.
//! - Certificates and keys go to librdkafka as in-memory PEM; nothing secret is written to disk.
//! - Secret values never reach a log, an error, a `Debug` output or a report: errors name the secret ARN and
//!   the field, never a value, and librdkafka text is passed through [`KafkaSecurity::redact`] first.
//! - Secrets Manager refusing access (`AccessDeniedException`, KMS `DecryptionFailure`) is reported as
//!   `ESM_CONFIG_NOT_VALID`: the fix is in the relay's own configuration (its role's policy or the key
//!   policy), not in the cluster; the sentence names the permission to add.
//! - An MSK mapping (`EventSourceArn`) without SASL or client-certificate types authenticates with IAM
//!   (SASL_SSL + OAUTHBEARER, [`msk`]), and one without endpoints gets its brokers from
//!   `kafka:GetBootstrapBrokers`, as in AWS. Its tokens are redacted by shape wherever librdkafka text goes.

mod check;
mod diagnose;
pub mod msk;
mod secrets;
mod security;


use serde::Serialize;

pub use check::{check, check_resolved, check_with_timeout, CheckError, CheckReport, PartitionReport, TopicReport, CHECK_TIMEOUT};
pub use diagnose::{ConnectionDiagnostics, DiagnosingContext, PROBE_TIMEOUT};
pub use secrets::{SecretError, SecretSource, SecretsManagerSource};
pub(crate) use secrets::SecretFields;
pub use security::{resolve, resolve_with_msk, validate, KafkaSecurity};

pub use crate::error::ErrorCode;

/// Why a mapping cannot connect: AWS's code and a `LastProcessingResult`-style sentence that tells the user
/// what to fix. The sentence never contains a secret value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("{code}: {sentence}")]
pub struct AuthError {
    /// AWS's error code.
    pub code: ErrorCode,
    /// What went wrong and what to fix, naming secret ARNs and fields but never their values.
    pub sentence: String,
}

impl AuthError {
    /// `ESM_CONFIG_NOT_VALID` with `sentence`.
    pub fn config(sentence: impl Into<String>) -> Self {
        Self { code: ErrorCode::EsmConfigNotValid, sentence: sentence.into() }
    }

    /// `EVENT_SOURCE_AUTHN_ERROR` with `sentence`.
    pub fn authn(sentence: impl Into<String>) -> Self {
        Self { code: ErrorCode::EventSourceAuthnError, sentence: sentence.into() }
    }

    /// `EVENT_SOURCE_AUTHZ_ERROR` with `sentence`.
    pub fn authz(sentence: impl Into<String>) -> Self {
        Self { code: ErrorCode::EventSourceAuthzError, sentence: sentence.into() }
    }
}

/// The `SourceAccessConfigurations` types the relay understands, parsed from their AWS names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AccessType {
    /// `BASIC_AUTH`: SASL/PLAIN.
    BasicAuth,
    /// `SASL_SCRAM_256_AUTH`.
    Scram256,
    /// `SASL_SCRAM_512_AUTH`.
    Scram512,
    /// `CLIENT_CERTIFICATE_TLS_AUTH`: mTLS.
    ClientCertificate,
    /// `SERVER_ROOT_CA_CERTIFICATE`: a private CA for the brokers' certificates.
    ServerRootCa,
    /// `VPC_SUBNET` / `VPC_SECURITY_GROUP`: network placement, for the deployment template only.
    Network,
}

impl AccessType {
    pub(crate) fn parse(kind: &str) -> Option<Self> {
        Some(match kind {
            "BASIC_AUTH" => AccessType::BasicAuth,
            "SASL_SCRAM_256_AUTH" => AccessType::Scram256,
            "SASL_SCRAM_512_AUTH" => AccessType::Scram512,
            "CLIENT_CERTIFICATE_TLS_AUTH" => AccessType::ClientCertificate,
            "SERVER_ROOT_CA_CERTIFICATE" => AccessType::ServerRootCa,
            "VPC_SUBNET" | "VPC_SECURITY_GROUP" => AccessType::Network,
            _ => return None,
        })
    }

    /// The SASL mechanism librdkafka calls this type, for SASL types.
    pub(crate) fn sasl_mechanism(self) -> Option<&'static str> {
        match self {
            AccessType::BasicAuth => Some("PLAIN"),
            AccessType::Scram256 => Some("SCRAM-SHA-256"),
            AccessType::Scram512 => Some("SCRAM-SHA-512"),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_are_spelled_as_aws_does() {
        assert_eq!(ErrorCode::EventSourceAuthnError.as_str(), "EVENT_SOURCE_AUTHN_ERROR");
        assert_eq!(ErrorCode::EventSourceAuthzError.as_str(), "EVENT_SOURCE_AUTHZ_ERROR");
        assert_eq!(ErrorCode::EsmConfigNotValid.as_str(), "ESM_CONFIG_NOT_VALID");
        assert_eq!(ErrorCode::FunctionConfigNotValid.as_str(), "FUNCTION_CONFIG_NOT_VALID");
        for code in [
            ErrorCode::EventSourceAuthnError,
            ErrorCode::EventSourceAuthzError,
            ErrorCode::EsmConfigNotValid,
            ErrorCode::FunctionConfigNotValid,
        ] {
            assert_eq!(serde_json::to_value(code).unwrap(), serde_json::json!(code.as_str()));
        }
    }

    #[test]
    fn auth_error_displays_code_then_sentence() {
        let error = AuthError::authn("SASL authentication failed");
        assert_eq!(error.to_string(), "EVENT_SOURCE_AUTHN_ERROR: SASL authentication failed");
    }
}
