//! Naming a failed connection: librdkafka's errors and logs → AWS's code and a sentence saying what to fix.
//!
//! librdkafka retries failed connections forever and reports each failure through the client context's
//! `error` and `log` callbacks, never through the call that is waiting (a poll or metadata request simply
//! times out). So the callbacks record everything here, and the code that waited asks
//! [`ConnectionDiagnostics::diagnose`] what went wrong. The most specific finding wins: a rejected
//! password beats the generic "all brokers down" that follows it.
//!
//! Every librdkafka text is passed through [`KafkaSecurity::redact`] before it is kept.
//!
//! OpenSSL reports an untrusted broker certificate and a hostname mismatch with the same text ("certificate
//! verify failed"), so [`ConnectionDiagnostics::diagnose_with_probe`] tells them apart with a second, TLS-only
//! handshake that skips the hostname check: if that one verifies the chain, the name was the problem. The
//! probe sends no credentials (no SASL, no client certificate), since it talks to a host whose name did not
//! verify.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::{ClientConfig, ClientContext};

use super::security::{redact_with, SecurityContext};
use super::{AuthError, KafkaSecurity};
use crate::config::Mapping;

/// How specific a finding is; lower wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Rank {
    /// Names the exact cause (bad password, untrusted certificate, ACL, ...).
    Specific,
    /// A TLS failure without a recognisable cause.
    Tls,
}

/// What the mapping's connection needs for sentences: where credentials came from, topics, group.
#[derive(Debug, Clone)]
struct Subject {
    security: SecurityContext,
    topics: Vec<String>,
    group: String,
}

/// What kind of failure a finding is, where the probe needs to know.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    /// "certificate verify failed": untrusted chain or hostname mismatch, not yet told apart.
    UnverifiedServer {
        /// The broker (`host:port`) whose certificate failed.
        broker: Option<String>,
    },
    /// Anything else, or an unverified server already probed.
    Settled,
}

#[derive(Debug, Clone)]
struct Finding {
    rank: Rank,
    kind: Kind,
    error: AuthError,
}

impl Finding {
    fn settled(rank: Rank, error: AuthError) -> Self {
        Self { rank, kind: Kind::Settled, error }
    }
}

#[derive(Debug, Default)]
struct Observed {
    best: Option<Finding>,
    last_problem: Option<String>,
}

/// Records librdkafka's client errors and warnings for one client, so a failed connection can be named.
///
/// Feed it from a client context's `error` and `log` callbacks (as [`DiagnosingContext`] does) and from
/// errors returned by calls (poll, commit, metadata), then call [`ConnectionDiagnostics::diagnose`].
pub struct ConnectionDiagnostics {
    subject: Subject,
    /// For the probe: its public TLS settings (the CA) are reused.
    security: KafkaSecurity,
    /// Secret values to strip from librdkafka text (kept only for redaction).
    redactions: Vec<String>,
    observed: Mutex<Observed>,
    /// The OAUTHBEARER token source of an MSK mapping using IAM, for the client context's token refresh.
    msk_iam: Option<Arc<super::msk::MskIamAuth>>,
}

impl std::fmt::Debug for ConnectionDiagnostics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionDiagnostics")
            .field("subject", &self.subject)
            .field("observed", &self.observed)
            .finish_non_exhaustive()
    }
}

impl ConnectionDiagnostics {
    /// Diagnostics for a client of `mapping` configured with `security`.
    pub fn new(security: &KafkaSecurity, mapping: &Mapping) -> Self {
        Self {
            subject: Subject {
                security: security.context.clone(),
                topics: mapping.topics.clone(),
                group: mapping.consumer_group_id(),
            },
            redactions: security.secret_fragments(),
            security: security.clone(),
            observed: Mutex::new(Observed::default()),
            msk_iam: security.msk_iam().cloned(),
        }
    }

    /// The MSK IAM token source when the mapping authenticates with IAM: a client context's
    /// `generate_oauth_token` answers from it (as [`DiagnosingContext`] does), and
    /// [`super::msk::set_initial_token`] sets the first token right after the client is created.
    pub fn msk_iam(&self) -> Option<&super::msk::MskIamAuth> {
        self.msk_iam.as_deref()
    }

    /// An OAUTHBEARER token for librdkafka's refresh (synchronous, never blocks; see [`super::msk`]).
    pub fn oauth_token(&self) -> Result<rdkafka::client::OAuthToken, Box<dyn std::error::Error>> {
        match &self.msk_iam {
            Some(auth) => auth.oauth_token(),
            None => Err("no OAUTHBEARER token source: only MSK mappings authenticating with IAM use OAUTHBEARER".into()),
        }
    }

    /// Records an error from librdkafka's error callback (`reason` is its text) or from a call (pass `""`).
    pub fn record(&self, error: &KafkaError, reason: &str) {
        let code = error.rdkafka_error_code();
        // KafkaError::ClientConfig's Display quotes the rejected value; never keep it.
        let text = match error {
            KafkaError::ClientConfig(_, description, key, _) => format!("{key}: {description}"),
            other => format!("{other}: {reason}"),
        };
        self.observe(code, &text);
    }

    /// Records a librdkafka log line; warnings and worse are examined (OpenSSL's detail arrives this way).
    pub fn record_log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        let serious = !matches!(level, RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info | RDKafkaLogLevel::Debug);
        if serious {
            self.observe(None, &format!("{facility}: {message}"));
        }
    }

    /// The most specific authentication or authorization failure seen so far, if any.
    ///
    /// An unverified broker certificate is reported as "untrusted, or not naming the host"; use
    /// [`Self::diagnose_with_probe`] to tell which.
    pub fn diagnose(&self) -> Option<AuthError> {
        self.lock().best.as_ref().map(|finding| finding.error.clone())
    }

    /// [`Self::diagnose`], and when the finding is an unverified broker certificate, a TLS-only handshake
    /// with that broker without the hostname check (at most [`PROBE_TIMEOUT`], once) to say whether the
    /// chain is untrusted or the certificate names another host. Blocks: call it from `spawn_blocking` in
    /// async code.
    pub fn diagnose_with_probe(&self) -> Option<AuthError> {
        let finding = self.lock().best.clone()?;
        let Kind::UnverifiedServer { broker: Some(broker) } = &finding.kind else {
            return Some(finding.error);
        };
        let detail = librdkafka_detail(&finding.error.sentence);
        let refined = match probe_chain(&self.security, broker) {
            Some(ChainVerdict::Trusted) => hostname_mismatch(
                &format!("broker {broker}"),
                &format!("{detail}; a handshake without the hostname check verified the certificate chain"),
            ),
            Some(ChainVerdict::Untrusted) => {
                unverified_server(&self.subject.security, &format!("broker {broker}"), false, detail)
            }
            None => return Some(finding.error),
        };
        self.lock().best = Some(Finding::settled(Rank::Specific, refined.clone()));
        Some(refined)
    }

    /// The last error seen that is not an authentication or authorization failure (connection refused,
    /// name resolution, timeouts), redacted; for a "cannot connect" sentence when [`Self::diagnose`] is `None`.
    pub fn connection_problem(&self) -> Option<String> {
        self.lock().last_problem.clone()
    }

    /// Names a failure of `ClientConfig::create` (librdkafka reads certificates and keys there): an unreadable
    /// certificate or key, or a wrong key password, is `EVENT_SOURCE_AUTHN_ERROR`; anything else is
    /// `ESM_CONFIG_NOT_VALID`. Never log the `KafkaError` itself: a `ClientConfig` error quotes the value.
    pub fn creation_error(&self, error: &KafkaError) -> AuthError {
        let text = match error {
            KafkaError::ClientConfig(_, description, key, _) => format!("{key}: {description}"),
            KafkaError::ClientCreation(text) => text.clone(),
            other => other.to_string(),
        };
        let text = redact_with(&self.redactions, &text);
        let lower = text.to_ascii_lowercase();
        let certificate_or_key =
            ["ssl.key", "ssl_key", "private key", "ssl.certificate", "ssl_cert", "certificate", "bad decrypt", "pem"]
                .iter()
                .any(|needle| lower.contains(needle));
        if certificate_or_key {
            AuthError::authn(format!(
                "Provided certificate or private key is invalid: {} (librdkafka: {text})",
                self.fix_certificate_and_key()
            ))
        } else {
            AuthError::config(format!("the Kafka client cannot be created with this configuration: {text}"))
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Observed> {
        self.observed.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn observe(&self, code: Option<RDKafkaErrorCode>, text: &str) {
        let text = redact_with(&self.redactions, text);
        let finding = classify(&self.subject, code, &text);
        let mut observed = self.lock();
        match finding {
            Some(finding) => {
                if observed.best.as_ref().is_none_or(|best| finding.rank < best.rank) {
                    observed.best = Some(finding);
                }
            }
            None => observed.last_problem = Some(text),
        }
    }

    fn fix_certificate_and_key(&self) -> String {
        match &self.subject.security.client_certificate_arn {
            Some(arn) => format!(
                "check that \"certificate\" in secret {arn:?} is the PEM chain (client certificate first), \"privateKey\" its PEM PKCS#8 key, and \"privateKeyPassword\" the key's password"
            ),
            None => "check the certificates and keys of the mapping's secrets".into(),
        }
    }
}

/// The broker a librdkafka text is about: `sasl_ssl://127.0.0.1:9093/bootstrap: ...` → `127.0.0.1:9093`.
fn broker_of(text: &str) -> Option<&str> {
    let start = text.find("://")? + 3;
    let rest = &text[start..];
    let end = rest.find(['/', ':', ' ']).map(|colon| {
        // Keep the port: find the end after "host:port".
        match rest[colon..].strip_prefix(':') {
            Some(after) => colon + 1 + after.find(|c: char| !c.is_ascii_digit()).unwrap_or(after.len()),
            None => colon,
        }
    })?;
    Some(&rest[..end]).filter(|broker| !broker.is_empty())
}

fn classify(subject: &Subject, code: Option<RDKafkaErrorCode>, text: &str) -> Option<Finding> {
    let lower = text.to_ascii_lowercase();
    let has = |needle: &str| lower.contains(needle);
    let broker = broker_of(text).map(|b| format!("broker {b}")).unwrap_or_else(|| "the broker".into());
    let security = &subject.security;
    let detail = format!("librdkafka: {text}");

    // Authorization: the connection works, an ACL refuses.
    let authz = match code {
        Some(RDKafkaErrorCode::TopicAuthorizationFailed) => Some("topic"),
        Some(RDKafkaErrorCode::GroupAuthorizationFailed) => Some("group"),
        Some(RDKafkaErrorCode::ClusterAuthorizationFailed) => Some("cluster"),
        _ if has("topic authorization failed") || has("topic_authorization_failed") => Some("topic"),
        _ if has("group authorization failed") || has("group_authorization_failed") => Some("group"),
        _ if has("cluster authorization failed") || has("cluster_authorization_failed") => Some("cluster"),
        _ => None,
    };
    if let (Some(resource), Some(iam)) = (authz, &security.msk_iam) {
        let actions = match resource {
            "topic" => "kafka-cluster:DescribeTopic and kafka-cluster:ReadData on the topic ARN(s)",
            "group" => "kafka-cluster:DescribeGroup and kafka-cluster:AlterGroup on the group ARN",
            _ => "kafka-cluster:Connect and kafka-cluster:DescribeClusterDynamicConfiguration on the cluster ARN",
        };
        return Some(Finding::settled(
            Rank::Specific,
            AuthError::authz(format!(
                "Cluster failed to authorize Lambda: {resource} authorization failed for the function's IAM role on MSK cluster {:?}; allow {actions} in the role's policy (topics {}, consumer group {:?}; template parameter MskClusterArns) ({detail})",
                iam.cluster_arn,
                subject.topics.join(", "),
                subject.group
            )),
        ));
    }
    if let Some(resource) = authz {
        let principal = match (&security.sasl, &security.client_certificate_arn) {
            (Some(sasl), _) => format!("user {:?}", sasl.username),
            (None, Some(arn)) => format!("the client certificate from secret {arn:?}"),
            (None, None) => "the relay's (anonymous) principal".into(),
        };
        return Some(Finding::settled(
            Rank::Specific,
            AuthError::authz(format!(
                "Cluster failed to authorize Lambda: {resource} authorization failed for {principal}; grant it Describe and Read on topic(s) {} and on consumer group {:?}, and DescribeConfigs on the cluster ({detail})",
                subject.topics.join(", "),
                subject.group
            )),
        ));
    }

    // SASL.
    if has("unsupported sasl mechanism") || has("no worthy mechs") {
        let mechanism = security.sasl.as_ref().map(|s| s.mechanism).unwrap_or("the configured mechanism");
        return Some(Finding::settled(
            Rank::Specific,
            AuthError::authn(format!(
                "SASL authentication failed: {broker} does not offer {mechanism}; use the SourceAccessConfigurations type that matches the listener's SASL mechanism ({detail})"
            )),
        ));
    }
    let sasl_failed =
        matches!(code, Some(RDKafkaErrorCode::Authentication | RDKafkaErrorCode::SaslAuthenticationFailed))
            || has("sasl authentication error")
            || has("sasl authentication failed")
            || has("invalid credentials");
    if let (true, Some(iam)) = (sasl_failed, &security.msk_iam) {
        // librdkafka's text when generate_oauth_token failed: no token was sent, nothing was rejected.
        if has("failed to acquire sasl oauthbearer token") {
            return Some(Finding::settled(
                Rank::Specific,
                AuthError::authn(format!(
                    "SASL authentication failed: the relay could not sign an MSK IAM token for cluster {:?}; check that the function's execution role credentials can be loaded and are not expired ({detail})",
                    iam.cluster_arn
                )),
            ));
        }
        if has("access denied") || has("not authorized") || has("accessdenied") {
            return Some(Finding::settled(
                Rank::Specific,
                AuthError::authz(format!(
                    "Cluster failed to authorize Lambda: {broker} accepted the IAM signature but the function's role may not connect to MSK cluster {:?}; allow kafka-cluster:Connect on the cluster ARN in the role's policy ({detail})",
                    iam.cluster_arn
                )),
            ));
        }
        return Some(Finding::settled(
            Rank::Specific,
            AuthError::authn(format!(
                "SASL authentication failed: {broker} rejected the MSK IAM token (SASL/OAUTHBEARER, signed for region {:?}); check that IAM access control is on for cluster {:?}, that the function's role credentials are valid and the clock is right ({detail})",
                iam.region, iam.cluster_arn
            )),
        ));
    }
    if sasl_failed {
        let fix = match &security.sasl {
            Some(sasl) => format!(
                "{broker} rejected user {:?} with {}; check \"username\" and \"password\" in secret {:?} ({}) and that the user has {} credentials on the cluster",
                sasl.username, sasl.mechanism, sasl.arn, sasl.kind, sasl.mechanism
            ),
            None => format!("{broker} requires SASL authentication; add a BASIC_AUTH, SASL_SCRAM_256_AUTH or SASL_SCRAM_512_AUTH secret"),
        };
        return Some(Finding::settled(
            Rank::Specific,
            AuthError::authn(format!("SASL authentication failed: {fix} ({detail})")),
        ));
    }

    // The broker's certificate.
    if has("hostname mismatch") || has("ip address mismatch") {
        return Some(Finding::settled(Rank::Specific, hostname_mismatch(&broker, &detail)));
    }
    if has("certificate verify failed") || has("failed to verify broker certificate") {
        return Some(Finding {
            rank: Rank::Specific,
            kind: Kind::UnverifiedServer { broker: broker_of(text).map(String::from) },
            error: unverified_server(security, &broker, true, &detail),
        });
    }

    // Our certificate, as judged by the broker (TLS alerts it sent).
    let client_refused = has("alert certificate required")
        || has("alert bad certificate")
        || has("alert unknown ca")
        || has("alert certificate unknown")
        || has("alert certificate expired")
        || has("alert certificate revoked")
        || has("alert access denied")
        || has("client ssl authentication might be required");
    if client_refused {
        let fix = match &security.client_certificate_arn {
            Some(arn) => format!(
                "{broker} rejected the client certificate from secret {arn:?} (CLIENT_CERTIFICATE_TLS_AUTH); it must be signed by a CA in the brokers' trust store and be valid now, and the listener must accept client certificates"
            ),
            None => format!(
                "{broker} requires a client certificate (mTLS); add a CLIENT_CERTIFICATE_TLS_AUTH secret with the certificate chain and private key, or use a listener without mTLS"
            ),
        };
        return Some(Finding::settled(
            Rank::Specific,
            AuthError::authn(format!("Server failed to authenticate Lambda: {fix} ({detail})")),
        ));
    }

    // Certificates or keys librdkafka could not load.
    if has("ssl.key.pem failed")
        || has("ssl.certificate.pem failed")
        || has("private key check failed")
        || has("ssl_key")
        || has("bad decrypt")
    {
        let fix = match &security.client_certificate_arn {
            Some(arn) => format!(
                "check that \"certificate\" in secret {arn:?} is the PEM chain (client certificate first), \"privateKey\" its PEM PKCS#8 key, and \"privateKeyPassword\" the key's password"
            ),
            None => "check the mapping's certificate secrets".into(),
        };
        return Some(Finding::settled(
            Rank::Specific,
            AuthError::authn(format!("Provided certificate or private key is invalid: {fix} ({detail})")),
        ));
    }

    // A TLS failure without a recognisable cause.
    if has("wrong version number") || has("packet length too long") || has("record layer failure") {
        return Some(Finding::settled(
            Rank::Tls,
            AuthError::authn(format!(
                "TLS handshake failed: {broker} does not answer TLS; SASL and certificate types always use TLS (as in AWS), so use the brokers' TLS listener port ({detail})"
            )),
        ));
    }
    if matches!(code, Some(RDKafkaErrorCode::SSL)) || has("ssl handshake failed") {
        return Some(Finding::settled(
            Rank::Tls,
            AuthError::authn(format!(
                "TLS handshake failed with {broker}; check that it is a TLS listener, that its certificate is trusted (SERVER_ROOT_CA_CERTIFICATE for a private CA) and, if it requires mTLS, the CLIENT_CERTIFICATE_TLS_AUTH secret ({detail})"
            )),
        ));
    }
    None
}

fn hostname_mismatch(broker: &str, detail: &str) -> AuthError {
    AuthError::authn(format!(
        "Lambda failed to authenticate server: the certificate of {broker} does not name the host the relay connected to; the brokers' certificates need the bootstrap and advertised host names (or IP addresses) as subject alternative names, or the mapping must use the names the certificates have ({detail})"
    ))
}

/// `librdkafka: ...` from the end of a sentence made by [`classify`].
fn librdkafka_detail(sentence: &str) -> &str {
    match sentence.rfind("(librdkafka: ") {
        Some(start) => sentence[start + 1..].strip_suffix(')').unwrap_or(&sentence[start + 1..]),
        None => sentence,
    }
}

/// The sentence for a broker certificate that did not verify; `maybe_hostname` while a hostname mismatch
/// has not been ruled out.
fn unverified_server(security: &SecurityContext, broker: &str, maybe_hostname: bool, detail: &str) -> AuthError {
    let or_hostname =
        if maybe_hostname { ", or the certificate does not name the host the relay connects to" } else { "" };
    let fix = match &security.root_ca_arn {
        Some(arn) => format!(
            "the certificate of {broker} could not be verified with the CA in secret {arn:?} (SERVER_ROOT_CA_CERTIFICATE){or_hostname}; put the root CA that signed the brokers' certificates in that secret, and check that the certificates are valid now"
        ),
        None => format!(
            "the certificate of {broker} is not signed by a publicly trusted CA (or is expired){or_hostname}; for a private or self-signed CA add a SERVER_ROOT_CA_CERTIFICATE secret holding the root CA certificate"
        ),
    };
    AuthError::authn(format!("Lambda failed to authenticate server: {fix} ({detail})"))
}

/// The longest the hostname probe waits for a TLS handshake.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// What the probe learned about a broker's certificate chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChainVerdict {
    /// The chain verified (so a failed verification was about the host name).
    Trusted,
    /// The chain did not verify.
    Untrusted,
}

/// A TLS-only handshake with `broker` with the mapping's trust settings but no hostname check; `None` when
/// no handshake completed in time (broker gone, or the probe client could not be made).
fn probe_chain(security: &KafkaSecurity, broker: &str) -> Option<ChainVerdict> {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", broker)
        .set("security.protocol", "ssl")
        .set("enable.ssl.certificate.verification", "true")
        .set("ssl.endpoint.identification.algorithm", "none")
        .set("socket.connection.setup.timeout.ms", PROBE_TIMEOUT.as_millis().to_string())
        .set("reconnect.backoff.ms", "100")
        // "Broker SSL certificate verified" is a debug line of the security context.
        .set("debug", "security")
        .set_log_level(RDKafkaLogLevel::Debug);
    if let Some(ca) = security.public_setting("ssl.ca.pem") {
        config.set("ssl.ca.pem", ca);
    }
    let consumer: BaseConsumer<ProbeContext> = config.create_with_context(ProbeContext::default()).ok()?;
    let deadline = Instant::now() + PROBE_TIMEOUT;
    while Instant::now() < deadline {
        // The request is only a reason to connect; its result does not matter.
        let _ = consumer.fetch_metadata(None, Duration::from_millis(100));
        while consumer.poll(Duration::ZERO).is_some() {}
        if let Some(verdict) = *consumer.context().verdict.lock().unwrap_or_else(|p| p.into_inner()) {
            return Some(verdict);
        }
    }
    None
}

/// Watches the probe client's logs and errors for the outcome of certificate verification.
#[derive(Default)]
struct ProbeContext {
    verdict: Mutex<Option<ChainVerdict>>,
}

impl ProbeContext {
    fn see(&self, text: &str) {
        let verdict = if text.contains("Broker SSL certificate verified") {
            ChainVerdict::Trusted
        } else if text.contains("certificate verify failed") || text.contains("Failed to verify broker certificate") {
            ChainVerdict::Untrusted
        } else {
            return;
        };
        self.verdict.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert(verdict);
    }
}

impl ClientContext for ProbeContext {
    fn log(&self, _level: RDKafkaLogLevel, _facility: &str, message: &str) {
        self.see(message);
    }

    fn error(&self, _error: KafkaError, reason: &str) {
        self.see(reason);
    }
}

impl ConsumerContext for ProbeContext {}

/// A client context that feeds a [`ConnectionDiagnostics`] and forwards librdkafka's logs to `tracing`,
/// redacted. Usable for consumers, producers and admin clients; a caller with its own context can do the
/// same by calling [`ConnectionDiagnostics::record`] and [`ConnectionDiagnostics::record_log`].
#[derive(Debug, Clone)]
pub struct DiagnosingContext {
    diagnostics: Arc<ConnectionDiagnostics>,
}

impl DiagnosingContext {
    /// A context recording into `diagnostics`.
    pub fn new(diagnostics: Arc<ConnectionDiagnostics>) -> Self {
        Self { diagnostics }
    }

    /// The diagnostics this context records into.
    pub fn diagnostics(&self) -> &Arc<ConnectionDiagnostics> {
        &self.diagnostics
    }
}

impl ClientContext for DiagnosingContext {
    /// MSK IAM mappings authenticate with SASL/OAUTHBEARER; for every other client librdkafka never asks.
    const ENABLE_REFRESH_OAUTH_TOKEN: bool = true;

    fn generate_oauth_token(
        &self,
        _oauthbearer_config: Option<&str>,
    ) -> Result<rdkafka::client::OAuthToken, Box<dyn std::error::Error>> {
        self.diagnostics.oauth_token()
    }

    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        self.diagnostics.record_log(level, facility, message);
        let message = redact_with(&self.diagnostics.redactions, message);
        match level {
            RDKafkaLogLevel::Emerg | RDKafkaLogLevel::Alert | RDKafkaLogLevel::Critical | RDKafkaLogLevel::Error => {
                tracing::error!(target: "librdkafka", facility, message = %message, "librdkafka log")
            }
            RDKafkaLogLevel::Warning => {
                tracing::warn!(target: "librdkafka", facility, message = %message, "librdkafka log")
            }
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!(target: "librdkafka", facility, message = %message, "librdkafka log")
            }
            RDKafkaLogLevel::Debug => {
                tracing::debug!(target: "librdkafka", facility, message = %message, "librdkafka log")
            }
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.diagnostics.record(&error, reason);
        let reason = redact_with(&self.diagnostics.redactions, reason);
        let error_code = self.diagnostics.diagnose().map(|e| e.code.as_str()).unwrap_or("KAFKA_CLIENT_ERROR");
        let kafka_error = match &error {
            KafkaError::ClientConfig(_, description, key, _) => format!("client config error: {key}: {description}"),
            other => other.to_string(),
        };
        tracing::warn!(error_code, kafka_error = %kafka_error, reason = %reason, "kafka client error");
    }
}

impl ConsumerContext for DiagnosingContext {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::security::tests::{mapping, secrets, CA_ARN, CERT_ARN, PASSWORD, SCRAM_ARN};
    use crate::auth::{resolve, ErrorCode};

    const CERTIFICATE: &str = "-----BEGIN CERTIFICATE-----\nMIIBdummy\n-----END CERTIFICATE-----\n";
    const KEY: &str =
        "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQD\n-----END PRIVATE KEY-----\n";

    async fn scram_diagnostics() -> ConnectionDiagnostics {
        let m = mapping(serde_json::json!([{"Type": "SASL_SCRAM_256_AUTH", "URI": SCRAM_ARN}]), &["127.0.0.1:9093"]);
        let source = secrets(&[(SCRAM_ARN, serde_json::json!({"username": "alice", "password": PASSWORD}))]);
        let security = resolve(&m, &source).await.expect("resolves");
        ConnectionDiagnostics::new(&security, &m)
    }

    async fn mtls_diagnostics(with_ca: bool, with_client_certificate: bool) -> ConnectionDiagnostics {
        let mut access = Vec::new();
        if with_ca {
            access.push(serde_json::json!({"Type": "SERVER_ROOT_CA_CERTIFICATE", "URI": CA_ARN}));
        }
        if with_client_certificate {
            access.push(serde_json::json!({"Type": "CLIENT_CERTIFICATE_TLS_AUTH", "URI": CERT_ARN}));
        }
        let m = mapping(serde_json::Value::Array(access), &["127.0.0.1:9094"]);
        let source = secrets(&[
            (CA_ARN, serde_json::json!({"certificate": CERTIFICATE})),
            (CERT_ARN, serde_json::json!({"certificate": CERTIFICATE, "privateKey": KEY})),
        ]);
        let security = resolve(&m, &source).await.expect("resolves");
        ConnectionDiagnostics::new(&security, &m)
    }

    fn msk_iam_diagnostics() -> ConnectionDiagnostics {
        let m: Mapping = serde_json::from_value(serde_json::json!({
            "FunctionName": "target",
            "Topics": ["orders"],
            "StartingPosition": "LATEST",
            "EventSourceArn": MSK_ARN,
            "AmazonManagedKafkaEventSourceConfig": {"ConsumerGroupId": "orders-relay"}
        }))
        .expect("mapping");
        ConnectionDiagnostics::new(&KafkaSecurity::msk_iam_for_tests(MSK_ARN, "us-east-1"), &m)
    }

    const MSK_ARN: &str = "arn:aws:kafka:us-east-1:123456789012:cluster/orders/751d2973-a626-431c-9d4e-d7975eb44dd7-2";
    const TOKEN: &str = "aHR0cHM6Ly9rYWZrYS51cy1lYXN0LTEuYW1hem9uYXdzLmNvbS8_QWN0aW9uPWthZmthLWNsdXN0ZXIlM0FDb25uZWN0";

    #[test]
    fn rejected_msk_iam_token_is_authn_naming_cluster_and_region_without_the_token() {
        let d = msk_iam_diagnostics();
        d.record(
            &KafkaError::Global(RDKafkaErrorCode::Authentication),
            &format!("sasl_ssl://b-1.orders.kafka.us-east-1.amazonaws.com:9098/bootstrap: SASL authentication error: [f00] Invalid authentication payload {TOKEN} (after 3ms in state AUTH_REQ)"),
        );
        let error = d.diagnose().expect("diagnosed");
        assert_eq!(error.code, ErrorCode::EventSourceAuthnError);
        assert!(
            error.sentence.starts_with("SASL authentication failed: broker b-1.orders.kafka.us-east-1.amazonaws.com:9098 rejected the MSK IAM token (SASL/OAUTHBEARER, signed for region \"us-east-1\")"),
            "{error}"
        );
        assert!(error.sentence.contains(MSK_ARN), "{error}");
        assert!(!error.sentence.contains(TOKEN), "{error}");
    }

    #[test]
    fn unsigned_msk_iam_token_is_authn_about_the_roles_credentials() {
        let d = msk_iam_diagnostics();
        d.record(
            &KafkaError::Global(RDKafkaErrorCode::Authentication),
            "Failed to acquire SASL OAUTHBEARER token: the function's AWS credentials expire at Unix time 1700000000; a refresh has been started",
        );
        let error = d.diagnose().expect("diagnosed");
        assert_eq!(error.code, ErrorCode::EventSourceAuthnError);
        assert!(error.sentence.contains("could not sign an MSK IAM token"), "{error}");
        assert!(error.sentence.contains("execution role credentials"), "{error}");
    }

    #[test]
    fn msk_access_denied_is_authz_naming_kafka_cluster_connect() {
        let d = msk_iam_diagnostics();
        d.record(
            &KafkaError::Global(RDKafkaErrorCode::Authentication),
            "sasl_ssl://b-1:9098/bootstrap: SASL authentication error: [1a2b] Access denied (after 5ms in state AUTH_REQ)",
        );
        let error = d.diagnose().expect("diagnosed");
        assert_eq!(error.code, ErrorCode::EventSourceAuthzError);
        assert!(error.sentence.contains("allow kafka-cluster:Connect on the cluster ARN"), "{error}");
    }

    #[test]
    fn msk_topic_and_group_refusals_name_the_kafka_cluster_actions() {
        for (code, actions) in [
            (RDKafkaErrorCode::TopicAuthorizationFailed, "kafka-cluster:DescribeTopic and kafka-cluster:ReadData"),
            (RDKafkaErrorCode::GroupAuthorizationFailed, "kafka-cluster:DescribeGroup and kafka-cluster:AlterGroup"),
        ] {
            let d = msk_iam_diagnostics();
            d.record(&KafkaError::Global(code), "");
            let error = d.diagnose().expect("diagnosed");
            assert_eq!(error.code, ErrorCode::EventSourceAuthzError);
            assert!(error.sentence.contains(actions), "{error}");
            assert!(error.sentence.contains("function's IAM role") && error.sentence.contains(MSK_ARN), "{error}");
            assert!(error.sentence.contains("\"orders-relay\""), "{error}");
        }
    }

    #[tokio::test]
    async fn rejected_scram_password_is_authn_naming_user_mechanism_and_secret() {
        let d = scram_diagnostics().await;
        d.record(
            &KafkaError::Global(RDKafkaErrorCode::Authentication),
            "sasl_ssl://127.0.0.1:9093/bootstrap: SASL authentication error: Authentication failed during authentication due to invalid credentials with SASL mechanism SCRAM-SHA-256 (after 12ms in state AUTH_REQ)",
        );
        let error = d.diagnose().expect("diagnosed");
        assert_eq!(error.code, ErrorCode::EventSourceAuthnError);
        assert!(
            error.sentence.starts_with(&format!(
                "SASL authentication failed: broker 127.0.0.1:9093 rejected user \"alice\" with SCRAM-SHA-256; check \"username\" and \"password\" in secret {SCRAM_ARN:?}"
            )),
            "{error}"
        );
    }

    #[tokio::test]
    async fn untrusted_broker_certificate_without_ca_asks_for_root_ca_secret() {
        let d = mtls_diagnostics(false, false).await;
        d.record(
            &KafkaError::Global(RDKafkaErrorCode::SSL),
            "ssl://127.0.0.1:9094/bootstrap: SSL handshake failed: error:0A000086:SSL routines::certificate verify failed: broker certificate could not be verified, verify that ssl.ca.location is correctly configured or root CA certificates are installed (install ca-certificates package) (after 3ms in state SSL_HANDSHAKE)",
        );
        let error = d.diagnose().expect("diagnosed");
        assert_eq!(error.code, ErrorCode::EventSourceAuthnError);
        assert!(error.sentence.starts_with("Lambda failed to authenticate server: the certificate of broker 127.0.0.1:9094 is not signed by a publicly trusted CA"), "{error}");
        assert!(error.sentence.contains("add a SERVER_ROOT_CA_CERTIFICATE secret"), "{error}");
    }

    #[tokio::test]
    async fn untrusted_broker_certificate_with_ca_names_the_ca_secret() {
        let d = mtls_diagnostics(true, false).await;
        d.record(
            &KafkaError::Global(RDKafkaErrorCode::SSL),
            "ssl://b-1.example:9094/1: Failed to verify broker certificate: unable to get local issuer certificate",
        );
        let error = d.diagnose().expect("diagnosed");
        assert!(error.sentence.contains(&format!("could not be verified with the CA in secret {CA_ARN:?}")), "{error}");
        assert!(error.sentence.contains("broker b-1.example:9094"), "{error}");
    }

    #[tokio::test]
    async fn hostname_mismatch_is_named() {
        let d = mtls_diagnostics(true, false).await;
        d.record_log(RDKafkaLogLevel::Error, "SSL", "ssl://127.0.0.1:9095/bootstrap: kafka: error:0A000086:SSL routines::certificate verify failed: Verify error:Hostname mismatch");
        let error = d.diagnose().expect("diagnosed");
        assert_eq!(error.code, ErrorCode::EventSourceAuthnError);
        assert!(
            error.sentence.starts_with(
                "Lambda failed to authenticate server: the certificate of broker 127.0.0.1:9095 does not name the host"
            ),
            "{error}"
        );
    }

    #[tokio::test]
    async fn missing_client_certificate_asks_for_client_certificate_secret() {
        let d = mtls_diagnostics(true, false).await;
        d.record(
            &KafkaError::Global(RDKafkaErrorCode::SSL),
            "ssl://127.0.0.1:9096/bootstrap: SSL handshake failed: error:0A00045C:SSL routines::tlsv13 alert certificate required: SSL alert number 116",
        );
        let error = d.diagnose().expect("diagnosed");
        assert_eq!(error.code, ErrorCode::EventSourceAuthnError);
        assert!(error.sentence.starts_with("Server failed to authenticate Lambda: broker 127.0.0.1:9096 requires a client certificate (mTLS); add a CLIENT_CERTIFICATE_TLS_AUTH secret"), "{error}");
    }

    #[tokio::test]
    async fn rejected_client_certificate_names_its_secret() {
        let d = mtls_diagnostics(true, true).await;
        d.record(&KafkaError::Global(RDKafkaErrorCode::SSL), "ssl://127.0.0.1:9096/bootstrap: SSL handshake failed: error:0A000418:SSL routines::tlsv1 alert unknown ca: SSL alert number 48");
        let error = d.diagnose().expect("diagnosed");
        assert!(
            error.sentence.contains(&format!("rejected the client certificate from secret {CERT_ARN:?}")),
            "{error}"
        );
    }

    #[tokio::test]
    async fn acl_refusals_are_authz_with_the_permissions_to_grant() {
        for (code, resource) in [
            (RDKafkaErrorCode::TopicAuthorizationFailed, "topic"),
            (RDKafkaErrorCode::GroupAuthorizationFailed, "group"),
            (RDKafkaErrorCode::ClusterAuthorizationFailed, "cluster"),
        ] {
            let d = scram_diagnostics().await;
            d.record(&KafkaError::MessageConsumption(code), "");
            let error = d.diagnose().expect("diagnosed");
            assert_eq!(error.code, ErrorCode::EventSourceAuthzError);
            assert!(
                error.sentence.starts_with(&format!("Cluster failed to authorize Lambda: {resource} authorization failed for user \"alice\"; grant it Describe and Read on topic(s) orders and on consumer group")),
                "{error}"
            );
            assert!(error.sentence.contains("DescribeConfigs on the cluster"), "{error}");
        }
    }

    #[tokio::test]
    async fn specific_finding_is_not_replaced_by_later_generic_errors() {
        let d = scram_diagnostics().await;
        d.record(
            &KafkaError::Global(RDKafkaErrorCode::Authentication),
            "sasl_ssl://127.0.0.1:9093/bootstrap: SASL authentication error: Authentication failed",
        );
        d.record(
            &KafkaError::Global(RDKafkaErrorCode::SSL),
            "sasl_ssl://127.0.0.1:9093/bootstrap: SSL handshake failed: Disconnected",
        );
        d.record(&KafkaError::Global(RDKafkaErrorCode::AllBrokersDown), "1/1 brokers are down");
        let error = d.diagnose().expect("diagnosed");
        assert!(error.sentence.starts_with("SASL authentication failed"), "{error}");
        assert!(d.connection_problem().expect("recorded").ends_with(": 1/1 brokers are down"));
    }

    #[tokio::test]
    async fn generic_tls_failure_is_replaced_by_a_specific_one() {
        let d = mtls_diagnostics(true, false).await;
        d.record(&KafkaError::Global(RDKafkaErrorCode::SSL), "ssl://127.0.0.1:9096/bootstrap: SSL handshake failed: Disconnected: connection closed by peer: connecting to a PLAINTEXT broker listener?");
        assert!(d
            .diagnose()
            .expect("diagnosed")
            .sentence
            .starts_with("TLS handshake failed with broker 127.0.0.1:9096"));
        d.record_log(
            RDKafkaLogLevel::Error,
            "SSL",
            "ssl://127.0.0.1:9096/bootstrap: kafka: error:0A00045C:SSL routines::tlsv13 alert certificate required",
        );
        assert!(d.diagnose().expect("diagnosed").sentence.starts_with("Server failed to authenticate Lambda"));
    }

    #[tokio::test]
    async fn connection_refused_is_not_an_auth_error() {
        let d = scram_diagnostics().await;
        d.record(&KafkaError::Global(RDKafkaErrorCode::BrokerTransportFailure), "sasl_ssl://127.0.0.1:1/bootstrap: Connect to ipv4#127.0.0.1:1 failed: Connection refused (after 0ms in state CONNECT)");
        d.record_log(RDKafkaLogLevel::Info, "SSL", "certificate verify failed (an info line is ignored)");
        assert_eq!(d.diagnose(), None);
        assert!(d.connection_problem().expect("recorded").contains("Connection refused"));
    }

    #[tokio::test]
    async fn recorded_text_is_redacted() {
        let d = scram_diagnostics().await;
        d.record(
            &KafkaError::Global(RDKafkaErrorCode::Authentication),
            &format!("sasl_ssl://127.0.0.1:9093/bootstrap: SASL authentication error: password {PASSWORD} rejected"),
        );
        d.record(&KafkaError::Global(RDKafkaErrorCode::BrokerTransportFailure), &format!("echo {PASSWORD}"));
        let error = d.diagnose().expect("diagnosed");
        assert!(!error.sentence.contains(PASSWORD), "{error}");
        assert!(error.sentence.contains("password <redacted> rejected"), "{error}");
        assert!(!d.connection_problem().expect("recorded").contains(PASSWORD));
        assert!(!format!("{d:?}").contains(PASSWORD));
    }

    #[tokio::test]
    async fn creation_errors_about_keys_are_authn_and_never_quote_config_values() {
        let d = mtls_diagnostics(true, true).await;
        let error = d.creation_error(&KafkaError::ClientCreation(
            "ssl.key.pem failed: error:1C800064:Provider routines::bad decrypt".into(),
        ));
        assert_eq!(error.code, ErrorCode::EventSourceAuthnError);
        assert!(
            error.sentence.starts_with(&format!(
                "Provided certificate or private key is invalid: check that \"certificate\" in secret {CERT_ARN:?}"
            )),
            "{error}"
        );
        let error = d.creation_error(&KafkaError::ClientConfig(
            rdkafka::types::RDKafkaConfRes::RD_KAFKA_CONF_INVALID,
            "Invalid value".into(),
            "sasl.password".into(),
            PASSWORD.into(),
        ));
        assert_eq!(error.code, ErrorCode::EsmConfigNotValid);
        assert_eq!(
            error.sentence,
            "the Kafka client cannot be created with this configuration: sasl.password: Invalid value"
        );
    }

    #[test]
    fn librdkafka_detail_is_cut_from_the_end_of_a_sentence() {
        assert_eq!(
            librdkafka_detail(
                "Lambda failed: x (librdkafka: FAIL: handshake failed (after 7ms in state SSL_HANDSHAKE))"
            ),
            "librdkafka: FAIL: handshake failed (after 7ms in state SSL_HANDSHAKE)"
        );
    }

    #[test]
    fn broker_is_read_from_librdkafka_prefixes() {
        assert_eq!(broker_of("sasl_ssl://127.0.0.1:9093/bootstrap: x"), Some("127.0.0.1:9093"));
        assert_eq!(broker_of("ssl://b-1.example.com:9094/1: x"), Some("b-1.example.com:9094"));
        assert_eq!(broker_of("no broker here"), None);
    }
}
