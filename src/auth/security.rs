//! From `SourceAccessConfigurations` and their secrets to librdkafka settings.

use std::fmt;
use std::sync::Arc;

use rdkafka::ClientConfig;

use super::secrets::{SecretFields, SecretSource};
use super::msk::{MskEnvironment, MskIamAuth};
use super::{AccessType, AuthError};
use crate::config::Mapping;

const USER_PASSWORD_SHAPE: &str = r#"{"username": "...", "password": "..."}"#;
const CLIENT_CERTIFICATE_SHAPE: &str = r#"{"certificate": "<PEM chain, client first>", "privateKey": "<PEM PKCS#8>", "privateKeyPassword": "<when the key is encrypted>"}"#;
const ROOT_CA_SHAPE: &str = r#"{"certificate": "<PEM>"}"#;

/// How one setting's value may be shown.
#[derive(Clone)]
enum Value {
    /// Shown as is.
    Text(String),
    /// Public but long (certificates): shown as its size.
    Pem(String),
    /// Never shown.
    Secret(String),
}

impl Value {
    fn as_str(&self) -> &str {
        match self {
            Value::Text(v) | Value::Pem(v) | Value::Secret(v) => v,
        }
    }
}

impl fmt::Debug for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Text(v) => write!(f, "{v:?}"),
            Value::Pem(v) => write!(f, "<PEM, {} bytes>", v.len()),
            Value::Secret(_) => f.write_str("<redacted>"),
        }
    }
}

/// The SASL part of a mapping's security, for diagnosis sentences.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SaslContext {
    /// `BASIC_AUTH`, `SASL_SCRAM_256_AUTH` or `SASL_SCRAM_512_AUTH`.
    pub(crate) kind: &'static str,
    /// `PLAIN`, `SCRAM-SHA-256` or `SCRAM-SHA-512`.
    pub(crate) mechanism: &'static str,
    /// The user name (not a secret: brokers log it too).
    pub(crate) username: String,
    /// The secret the credentials came from.
    pub(crate) arn: String,
}

/// What diagnosis sentences need to know about where the settings came from. No secret values.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct SecurityContext {
    /// The SASL type, user and secret, if any.
    pub(crate) sasl: Option<SaslContext>,
    /// The `CLIENT_CERTIFICATE_TLS_AUTH` secret ARN, if any.
    pub(crate) client_certificate_arn: Option<String>,
    /// The `SERVER_ROOT_CA_CERTIFICATE` secret ARN, if any.
    pub(crate) root_ca_arn: Option<String>,
    /// MSK IAM authentication: the cluster ARN and the region tokens are signed for.
    pub(crate) msk_iam: Option<MskIamContext>,
}

/// An MSK mapping authenticating with IAM, for diagnosis sentences.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MskIamContext {
    /// The cluster ARN (`EventSourceArn`).
    pub(crate) cluster_arn: String,
    /// The cluster's region.
    pub(crate) region: String,
}

/// librdkafka security settings for one mapping: `security.protocol`, SASL and TLS keys.
///
/// `Debug` shows every key but redacts the password, the private key and its password, and shows
/// certificates by size. Note that `rdkafka::ClientConfig`'s own `Debug` hides `sasl.password` and
/// `ssl.key.password` but prints `ssl.key.pem`: never log a `ClientConfig` this was applied to.
#[derive(Clone)]
pub struct KafkaSecurity {
    protocol: &'static str,
    settings: Vec<(&'static str, Value)>,
    pub(crate) context: SecurityContext,
    /// Bootstrap brokers looked up from an MSK cluster ARN (`kafka:GetBootstrapBrokers`).
    bootstrap: Option<String>,
    /// The OAUTHBEARER token source of an MSK mapping using IAM.
    pub(crate) msk_iam: Option<Arc<MskIamAuth>>,
}

impl fmt::Debug for KafkaSecurity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut map = f.debug_map();
        map.entry(&"security.protocol", &self.protocol);
        if let Some(bootstrap) = &self.bootstrap {
            map.entry(&"bootstrap.servers", bootstrap);
        }
        for (key, value) in &self.settings {
            map.entry(key, value);
        }
        if let Some(iam) = &self.msk_iam {
            map.entry(&"oauthbearer token", &format_args!("<MSK IAM, region {}>", iam.region()));
        }
        map.finish()
    }
}

impl KafkaSecurity {
    /// No TLS, no SASL: for a mapping without `SourceAccessConfigurations`.
    pub fn plaintext() -> Self {
        Self {
            protocol: "plaintext",
            settings: Vec::new(),
            context: SecurityContext::default(),
            bootstrap: None,
            msk_iam: None,
        }
    }

    /// Puts the settings on `config`, replacing any earlier value of the same keys (so a `security.protocol`
    /// set before cannot downgrade the connection).
    ///
    /// For an MSK mapping whose brokers were looked up, this also sets `bootstrap.servers` (so callers that
    /// built the configuration from the mapping's empty endpoint list get the cluster's brokers).
    pub fn apply(&self, config: &mut ClientConfig) {
        config.set("security.protocol", self.protocol);
        if let Some(bootstrap) = &self.bootstrap {
            config.set("bootstrap.servers", bootstrap);
        }
        for (key, value) in &self.settings {
            config.set(*key, value.as_str());
        }
    }

    /// `plaintext`, `ssl` or `sasl_ssl`.
    pub fn security_protocol(&self) -> &'static str {
        self.protocol
    }

    /// `PLAIN`, `SCRAM-SHA-256` or `SCRAM-SHA-512` when SASL is configured, `OAUTHBEARER` for MSK IAM.
    pub fn sasl_mechanism(&self) -> Option<&'static str> {
        match &self.context.sasl {
            Some(sasl) => Some(sasl.mechanism),
            None => self.msk_iam.as_ref().map(|_| "OAUTHBEARER"),
        }
    }

    /// The bootstrap brokers looked up from the MSK cluster ARN, when the mapping lists none.
    pub fn bootstrap_servers(&self) -> Option<&str> {
        self.bootstrap.as_deref()
    }

    /// The bootstrap servers a client of `mapping` connects to: the looked-up ones, else the mapping's.
    pub fn bootstrap_servers_for(&self, mapping: &Mapping) -> String {
        self.bootstrap.clone().unwrap_or_else(|| mapping.bootstrap_servers().join(","))
    }

    /// The MSK IAM token source, when the mapping authenticates with IAM.
    pub fn msk_iam(&self) -> Option<&Arc<MskIamAuth>> {
        self.msk_iam.as_ref()
    }

    /// The value librdkafka will use for `key`, unless it is secret (then `None`, as for absent keys).
    pub fn public_setting(&self, key: &str) -> Option<&str> {
        if key == "security.protocol" {
            return Some(self.protocol);
        }
        if key == "bootstrap.servers" && self.bootstrap.is_some() {
            return self.bootstrap.as_deref();
        }
        self.settings.iter().find(|(k, _)| *k == key).and_then(|(_, value)| match value {
            Value::Secret(_) => None,
            other => Some(other.as_str()),
        })
    }

    /// Whether `key` is set, secret or not.
    pub fn has_setting(&self, key: &str) -> bool {
        key == "security.protocol" || self.settings.iter().any(|(k, _)| *k == key)
    }

    /// `text` with every secret value (and every line of a multi-line one, in case librdkafka truncated it)
    /// replaced by `<redacted>`. Used on all librdkafka text before it goes into a sentence or a log.
    pub fn redact(&self, text: &str) -> String {
        redact_with(&self.secret_fragments(), text)
    }

    /// The strings [`KafkaSecurity::redact`] removes, longest first.
    pub(crate) fn secret_fragments(&self) -> Vec<String> {
        let mut fragments: Vec<String> = Vec::new();
        for (_, value) in &self.settings {
            if let Value::Secret(secret) = value {
                fragments.push(secret.clone());
                // Lines of a PEM key; short lines (the END marker's tail) are not secret.
                fragments
                    .extend(secret.lines().map(str::trim).filter(|l| l.len() >= 16 && *l != secret).map(String::from));
            }
        }
        fragments.retain(|f| !f.is_empty());
        fragments.sort_by_key(|f| std::cmp::Reverse(f.len()));
        fragments.dedup();
        fragments
    }
}

impl KafkaSecurity {
    /// An MSK IAM mapping's settings without a token source, for diagnosis tests.
    #[cfg(test)]
    pub(crate) fn msk_iam_for_tests(cluster_arn: &str, region: &str) -> Self {
        let mut security = Self { protocol: "sasl_ssl", ..Self::plaintext() };
        security.settings.push(("sasl.mechanism", Value::Text("OAUTHBEARER".into())));
        security.context.msk_iam =
            Some(MskIamContext { cluster_arn: cluster_arn.to_string(), region: region.to_string() });
        security
    }
}

pub(crate) fn redact_with(fragments: &[String], text: &str) -> String {
    // MSK IAM tokens are made while the client runs, so they are recognized by shape, not listed.
    let mut out = super::msk::redact_tokens(text);
    for fragment in fragments {
        if out.contains(fragment.as_str()) {
            out = out.replace(fragment.as_str(), "<redacted>");
        }
    }
    out
}

/// Which `SourceAccessConfigurations` a mapping uses, checked without reading any secret.
struct Plan<'a> {
    protocol: &'static str,
    /// (type, its AWS name, secret ARN)
    sasl: Option<(AccessType, &'static str, &'a str)>,
    client_certificate: Option<&'a str>,
    root_ca: Option<&'a str>,
    /// An MSK mapping without SASL or client-certificate types: IAM (SASL/OAUTHBEARER), as in AWS.
    msk_iam: bool,
}

impl<'a> Plan<'a> {
    fn of(mapping: &'a Mapping) -> Result<Self, AuthError> {
        let mut sasl: Option<(AccessType, &'static str, &str)> = None;
        let mut client_certificate: Option<&str> = None;
        let mut root_ca: Option<&str> = None;
        for entry in &mapping.source_access_configurations {
            let kind = entry.kind.as_str();
            let (access, name) = AccessType::parse(kind)
                .zip(crate::config::SOURCE_ACCESS_TYPES.iter().copied().find(|t| *t == kind))
                .ok_or_else(|| {
                    AuthError::config(format!(
                        "SourceAccessConfigurations Type {kind:?} is not supported; allowed {}",
                        crate::config::SOURCE_ACCESS_TYPES.join(", ")
                    ))
                })?;
            let slot = match access {
                AccessType::Network => continue,
                AccessType::BasicAuth | AccessType::Scram256 | AccessType::Scram512 => {
                    if let Some((_, other, _)) = sasl {
                        return Err(AuthError::config(format!(
                            "SourceAccessConfigurations has {other} and {kind}; choose one SASL mechanism"
                        )));
                    }
                    sasl = Some((access, name, entry.uri.as_str()));
                    continue;
                }
                AccessType::ClientCertificate => &mut client_certificate,
                AccessType::ServerRootCa => &mut root_ca,
            };
            if slot.replace(entry.uri.as_str()).is_some() {
                return Err(AuthError::config(format!(
                    "SourceAccessConfigurations has {kind} more than once; allowed once"
                )));
            }
        }
        // AWS: an MSK mapping without SASL/SCRAM or mTLS access configurations authenticates with IAM.
        let msk_iam = mapping.is_msk() && sasl.is_none() && client_certificate.is_none();
        let protocol = match (sasl.is_some() || msk_iam, client_certificate.is_some() || root_ca.is_some()) {
            (true, _) => "sasl_ssl",
            (false, true) => "ssl",
            (false, false) => "plaintext",
        };
        let sasl_kind = match sasl {
            Some((_, kind, _)) => Some(kind),
            None if msk_iam => Some("MSK IAM authentication"),
            None => None,
        };
        refuse_protocol_prefixes(mapping, protocol, sasl_kind)?;
        Ok(Self { protocol, sasl, client_certificate, root_ca, msk_iam })
    }
}

/// What can be checked without reading secrets or connecting (for `validate`): known types, at most one
/// SASL type, certificate types at most once, and no bootstrap server prefix that would change the protocol
/// (e.g. `SASL_PLAINTEXT://` with a SASL type). Errors are `ESM_CONFIG_NOT_VALID`.
pub fn validate(mapping: &Mapping) -> Result<(), AuthError> {
    Plan::of(mapping).map(|_| ())
}

/// Reads the mapping's `SourceAccessConfigurations` and their secrets into librdkafka settings.
///
/// Errors: everything [`validate`] reports; `ESM_CONFIG_NOT_VALID` for a secret that cannot be read, is
/// not the documented JSON or lacks a field, or an encrypted key without `privateKeyPassword`;
/// `EVENT_SOURCE_AUTHN_ERROR` when a certificate or key is not PEM (AWS: "Provided certificate or private
/// key is invalid").
///
/// An MSK mapping (`EventSourceArn` of a cluster) also gets, through the process-wide
/// [`MskEnvironment::shared`]: its bootstrap brokers from `kafka:GetBootstrapBrokers` when it lists none, and
/// IAM authentication (SASL/OAUTHBEARER, tokens from the function's credentials) when it has no SASL or
/// client-certificate type. See [`resolve_with_msk`] for the errors.
pub async fn resolve(mapping: &Mapping, secrets: &dyn SecretSource) -> Result<KafkaSecurity, AuthError> {
    if mapping.is_msk() {
        return resolve_with_msk(mapping, secrets, MskEnvironment::shared().await).await;
    }
    resolve_secrets(mapping, secrets).await
}

/// [`resolve`] with an explicit MSK environment (control-plane client and credentials provider).
///
/// MSK errors: those of [`super::msk::bootstrap_brokers`]; `EVENT_SOURCE_AUTHN_ERROR` when no AWS
/// credentials can be loaded for IAM.
pub async fn resolve_with_msk(
    mapping: &Mapping,
    secrets: &dyn SecretSource,
    msk: &MskEnvironment,
) -> Result<KafkaSecurity, AuthError> {
    let mut security = resolve_secrets(mapping, secrets).await?;
    let Some(arn) = mapping.event_source_arn.as_deref().filter(|_| mapping.is_msk()) else {
        return Ok(security);
    };
    let region = super::msk::cluster_region(arn)
        .ok_or_else(|| AuthError::config(format!("EventSourceArn {arn:?} names no region")))?;
    if mapping.bootstrap_servers().is_empty() {
        let client = msk.kafka_client(region);
        let brokers = super::msk::bootstrap_brokers(
            &client,
            arn,
            super::msk::msk_auth_of(mapping),
            mapping.msk_connectivity.unwrap_or_default(),
        )
        .await?;
        security.bootstrap = Some(brokers);
    }
    if Plan::of(mapping)?.msk_iam {
        let auth = MskIamAuth::start(msk.credentials_provider()?, region).await?;
        security.settings.push(("sasl.mechanism", Value::Text("OAUTHBEARER".into())));
        security.msk_iam = Some(Arc::new(auth));
        security.context.msk_iam = Some(MskIamContext { cluster_arn: arn.to_string(), region: region.to_string() });
    }
    Ok(security)
}

/// The `SourceAccessConfigurations` part of [`resolve`]: secrets → settings.
async fn resolve_secrets(mapping: &Mapping, secrets: &dyn SecretSource) -> Result<KafkaSecurity, AuthError> {
    let Plan { protocol, sasl, client_certificate, root_ca, msk_iam: _ } = Plan::of(mapping)?;
    let mut security = KafkaSecurity { protocol, ..KafkaSecurity::plaintext() };
    if protocol != "plaintext" {
        // Both are librdkafka defaults today; set anyway so a changed default cannot turn verification off.
        security.settings.push(("enable.ssl.certificate.verification", Value::Text("true".into())));
        security.settings.push(("ssl.endpoint.identification.algorithm", Value::Text("https".into())));
    }

    if let Some((access, kind, arn)) = sasl {
        let text = secrets.secret_string(arn).await?;
        let fields = SecretFields::parse(arn, kind, USER_PASSWORD_SHAPE, &text)?;
        let username = fields.required("username")?;
        let password = fields.required("password")?;
        let mechanism = access.sasl_mechanism().expect("a SASL type has a mechanism");
        security.settings.push(("sasl.mechanism", Value::Text(mechanism.into())));
        security.settings.push(("sasl.username", Value::Text(username.clone())));
        security.settings.push(("sasl.password", Value::Secret(password)));
        security.context.sasl = Some(SaslContext { kind, mechanism, username, arn: arn.to_string() });
    }

    if let Some(arn) = root_ca {
        let kind = "SERVER_ROOT_CA_CERTIFICATE";
        let text = secrets.secret_string(arn).await?;
        let fields = SecretFields::parse(arn, kind, ROOT_CA_SHAPE, &text)?;
        let certificate = fields.required("certificate")?;
        require_certificates(&fields, kind, &certificate)?;
        security.settings.push(("ssl.ca.pem", Value::Pem(certificate)));
        security.context.root_ca_arn = Some(arn.to_string());
    }

    if let Some(arn) = client_certificate {
        let kind = "CLIENT_CERTIFICATE_TLS_AUTH";
        let text = secrets.secret_string(arn).await?;
        let fields = SecretFields::parse(arn, kind, CLIENT_CERTIFICATE_SHAPE, &text)?;
        let certificate = fields.required("certificate")?;
        let private_key = fields.required("privateKey")?;
        let password = fields.optional("privateKeyPassword")?;
        require_certificates(&fields, kind, &certificate)?;
        let key = PrivateKeyPem::inspect(&private_key).ok_or_else(|| {
            AuthError::authn(format!(
                "Provided certificate or private key is invalid: field \"privateKey\" of secret {:?} for {kind} holds no PEM private key (-----BEGIN PRIVATE KEY----- or -----BEGIN ENCRYPTED PRIVATE KEY-----); store the key as PEM PKCS#8",
                fields.arn()
            ))
        })?;
        if key.encrypted && password.is_none() {
            return Err(AuthError::config(format!(
                "secret {:?} for {kind} holds an encrypted private key but no \"privateKeyPassword\" field (or it is empty); expected {CLIENT_CERTIFICATE_SHAPE}",
                fields.arn()
            )));
        }
        security.settings.push(("ssl.certificate.pem", Value::Pem(certificate)));
        security.settings.push(("ssl.key.pem", Value::Secret(private_key)));
        if let Some(password) = password {
            security.settings.push(("ssl.key.password", Value::Secret(password)));
        }
        if key.needs_legacy_provider {
            // PKCS#5 PBES1 with DES or RC2 (which AWS accepts) lives in OpenSSL 3's legacy provider.
            security.settings.push(("ssl.providers", Value::Text("default,legacy".into())));
        }
        security.context.client_certificate_arn = Some(arn.to_string());
    }
    Ok(security)
}

/// librdkafka takes `proto://host:port` in `bootstrap.servers` and uses that protocol for that broker, which
/// is the one way a mapping could send SASL credentials in plaintext. The protocol comes from
/// `SourceAccessConfigurations` only, as in AWS.
fn refuse_protocol_prefixes(mapping: &Mapping, protocol: &str, sasl_kind: Option<&str>) -> Result<(), AuthError> {
    for server in mapping.bootstrap_servers() {
        let Some((prefix, _)) = server.split_once("://") else { continue };
        if prefix.eq_ignore_ascii_case(protocol) {
            continue;
        }
        let plaintext = prefix.eq_ignore_ascii_case("plaintext") || prefix.eq_ignore_ascii_case("sasl_plaintext");
        let sentence = match sasl_kind {
            Some(kind) if plaintext => format!(
                "bootstrap server {server:?} asks for plaintext, but {kind} always uses TLS, as in AWS (SASL credentials are never sent unencrypted); remove the \"{prefix}://\" prefix and use the brokers' TLS listener"
            ),
            _ => format!(
                "bootstrap server {server:?} asks for protocol {prefix:?}, but SourceAccessConfigurations select {protocol:?}; remove the \"{prefix}://\" prefix (the protocol follows from SourceAccessConfigurations, as in AWS)"
            ),
        };
        return Err(AuthError::config(sentence));
    }
    Ok(())
}

fn require_certificates(fields: &SecretFields<'_>, kind: &str, certificate: &str) -> Result<(), AuthError> {
    if certificate.contains("-----BEGIN CERTIFICATE-----") && certificate.contains("-----END CERTIFICATE-----") {
        return Ok(());
    }
    Err(AuthError::authn(format!(
        "Provided certificate or private key is invalid: field \"certificate\" of secret {:?} for {kind} holds no PEM certificate (-----BEGIN CERTIFICATE-----); store the certificate(s) as PEM",
        fields.arn()
    )))
}

/// What the relay needs to know about a PEM private key before librdkafka reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PrivateKeyPem {
    encrypted: bool,
    needs_legacy_provider: bool,
}

impl PrivateKeyPem {
    /// `None` when `pem` has no `-----BEGIN ... PRIVATE KEY-----` block.
    fn inspect(pem: &str) -> Option<Self> {
        let begin = pem.find("-----BEGIN ")?;
        let rest = &pem[begin + "-----BEGIN ".len()..];
        let label = &rest[..rest.find("-----")?];
        if !label.ends_with("PRIVATE KEY") {
            return None;
        }
        if label == "ENCRYPTED PRIVATE KEY" {
            let needs_legacy_provider = pem_body(rest).is_some_and(|der| pkcs8_needs_legacy_provider(&der));
            return Some(Self { encrypted: true, needs_legacy_provider });
        }
        // Traditional OpenSSL encryption ("Proc-Type: 4,ENCRYPTED" headers) also takes a password.
        Some(Self { encrypted: rest.contains("Proc-Type: 4,ENCRYPTED"), needs_legacy_provider: false })
    }
}

/// The DER bytes of the first PEM block in `after_begin` (the text after `-----BEGIN `).
fn pem_body(after_begin: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    let body_start = after_begin.find('\n')? + 1;
    let body_end = after_begin.find("-----END ")?;
    let body: String = after_begin.get(body_start..body_end)?.chars().filter(|c| !c.is_whitespace()).collect();
    base64::engine::general_purpose::STANDARD.decode(body).ok()
}

/// Whether an `EncryptedPrivateKeyInfo` uses a PBES1 / PKCS#12 scheme whose cipher (DES, RC2, RC4) OpenSSL
/// 3 only has in its legacy provider. PBES2 and the 3DES PKCS#12 schemes work with the default provider.
fn pkcs8_needs_legacy_provider(der: &[u8]) -> bool {
    const PKCS5: [u8; 8] = [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x05];
    const PKCS12_PBE: [u8; 9] = [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x0c, 0x01];
    let Some(oid) = encryption_algorithm_oid(der) else { return false };
    match oid.len() {
        // pbeWith{MD2,MD5,SHA1}And{DES,RC2}-CBC: 1.2.840.113549.1.5.{1,3,4,6,10,11}
        9 if oid[..8] == PKCS5 => matches!(oid[8], 1 | 3 | 4 | 6 | 10 | 11),
        // pbeWithSHAAnd{128,40}Bit{RC4,RC2}: 1.2.840.113549.1.12.1.{1,2,5,6}
        10 if oid[..9] == PKCS12_PBE => matches!(oid[9], 1 | 2 | 5 | 6),
        _ => false,
    }
}

/// The OID bytes of `EncryptedPrivateKeyInfo.encryptionAlgorithm.algorithm`:
/// `SEQUENCE { SEQUENCE { OBJECT IDENTIFIER, params }, OCTET STRING }`.
fn encryption_algorithm_oid(der: &[u8]) -> Option<&[u8]> {
    let (outer, _) = der_element(der, 0x30)?;
    let (algorithm, _) = der_element(outer, 0x30)?;
    let (oid, _) = der_element(algorithm, 0x06)?;
    Some(oid)
}

/// One DER element with tag `tag` at the start of `input`: (contents, rest).
fn der_element(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (&first, rest) = input.split_first()?;
    if first != tag {
        return None;
    }
    let (&length_byte, rest) = rest.split_first()?;
    let (length, rest) = if length_byte < 0x80 {
        (length_byte as usize, rest)
    } else {
        let count = (length_byte & 0x7f) as usize;
        if count == 0 || count > 4 || rest.len() < count {
            return None;
        }
        let length = rest[..count].iter().fold(0usize, |acc, b| (acc << 8) | *b as usize);
        (length, &rest[count..])
    };
    (rest.len() >= length).then(|| rest.split_at(length))
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::auth::{ErrorCode, SecretError};

    pub(crate) const SCRAM_ARN: &str = "arn:aws:secretsmanager:us-east-1:123456789012:secret:scram-AbCdEf";
    pub(crate) const CERT_ARN: &str = "arn:aws:secretsmanager:us-east-1:123456789012:secret:client-AbCdEf";
    pub(crate) const CA_ARN: &str = "arn:aws:secretsmanager:us-east-1:123456789012:secret:ca-AbCdEf";
    pub(crate) const PASSWORD: &str = "pw-Zq8!never-print-me";
    const KEY_PASSWORD: &str = "key-pw-never-print-me";
    const CERTIFICATE: &str = "-----BEGIN CERTIFICATE-----\nMIIBdummycertificatebody\n-----END CERTIFICATE-----\n";
    const KEY_BODY: &str = "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQDdummy";

    /// An in-memory [`SecretSource`].
    pub(crate) struct FakeSecrets(pub(crate) HashMap<String, String>);

    #[async_trait::async_trait]
    impl SecretSource for FakeSecrets {
        async fn secret_string(&self, arn: &str) -> Result<String, SecretError> {
            self.0
                .get(arn)
                .cloned()
                .ok_or_else(|| SecretError::NotFound { arn: arn.into(), code: "ResourceNotFoundException".into() })
        }
    }

    pub(crate) fn secrets(entries: &[(&str, serde_json::Value)]) -> FakeSecrets {
        FakeSecrets(entries.iter().map(|(arn, value)| (arn.to_string(), value.to_string())).collect())
    }

    pub(crate) fn mapping(access: serde_json::Value, servers: &[&str]) -> Mapping {
        serde_json::from_value(serde_json::json!({
            "FunctionName": "target",
            "Topics": ["orders"],
            "StartingPosition": "TRIM_HORIZON",
            "SelfManagedEventSource": {"Endpoints": {"KAFKA_BOOTSTRAP_SERVERS": servers}},
            "SourceAccessConfigurations": access
        }))
        .expect("mapping parses")
    }

    fn scram_secret() -> serde_json::Value {
        serde_json::json!({"username": "alice", "password": PASSWORD})
    }

    fn key_pem(label: &str) -> String {
        format!("-----BEGIN {label}-----\n{KEY_BODY}\n-----END {label}-----\n")
    }

    fn settings(security: &KafkaSecurity) -> Vec<(String, String)> {
        let mut config = ClientConfig::new();
        security.apply(&mut config);
        // config_map() masks some secrets; get() returns what librdkafka will receive.
        let mut pairs: Vec<(String, String)> = config
            .config_map()
            .keys()
            .map(|k| (k.to_string(), config.get(k).unwrap_or_default().to_string()))
            .collect();
        pairs.sort();
        pairs
    }

    fn pairs(expected: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut pairs: Vec<(String, String)> = expected.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        pairs.sort();
        pairs
    }

    #[tokio::test]
    async fn scram_512_uses_sasl_ssl_with_verified_hostnames() -> Result<(), AuthError> {
        let m = mapping(serde_json::json!([{"Type": "SASL_SCRAM_512_AUTH", "URI": SCRAM_ARN}]), &["b-1.example:9096"]);
        let security = resolve(&m, &secrets(&[(SCRAM_ARN, scram_secret())])).await?;
        assert_eq!(
            settings(&security),
            pairs(&[
                ("security.protocol", "sasl_ssl"),
                ("enable.ssl.certificate.verification", "true"),
                ("ssl.endpoint.identification.algorithm", "https"),
                ("sasl.mechanism", "SCRAM-SHA-512"),
                ("sasl.username", "alice"),
                ("sasl.password", PASSWORD),
            ])
        );
        assert_eq!(security.sasl_mechanism(), Some("SCRAM-SHA-512"));
        Ok(())
    }

    #[tokio::test]
    async fn each_sasl_type_selects_its_mechanism_and_always_tls() -> Result<(), AuthError> {
        for (kind, mechanism) in [
            ("BASIC_AUTH", "PLAIN"),
            ("SASL_SCRAM_256_AUTH", "SCRAM-SHA-256"),
            ("SASL_SCRAM_512_AUTH", "SCRAM-SHA-512"),
        ] {
            let m = mapping(serde_json::json!([{"Type": kind, "URI": SCRAM_ARN}]), &["b-1.example:9096"]);
            let security = resolve(&m, &secrets(&[(SCRAM_ARN, scram_secret())])).await?;
            assert_eq!(security.security_protocol(), "sasl_ssl", "{kind}");
            assert_eq!(security.public_setting("sasl.mechanism"), Some(mechanism), "{kind}");
            assert_eq!(security.public_setting("sasl.password"), None, "{kind}: the password is not public");
            assert!(security.has_setting("sasl.password"));
        }
        Ok(())
    }

    #[tokio::test]
    async fn mtls_with_private_ca_and_encrypted_key_sets_in_memory_pem() -> Result<(), AuthError> {
        let m = mapping(
            serde_json::json!([
                {"Type": "CLIENT_CERTIFICATE_TLS_AUTH", "URI": CERT_ARN},
                {"Type": "SERVER_ROOT_CA_CERTIFICATE", "URI": CA_ARN},
                {"Type": "VPC_SUBNET", "URI": "subnet:subnet-0123"},
                {"Type": "VPC_SECURITY_GROUP", "URI": "security_group:sg-0123"}
            ]),
            &["b-1.example:9094"],
        );
        let key = key_pem("ENCRYPTED PRIVATE KEY");
        let source = secrets(&[
            (
                CERT_ARN,
                serde_json::json!({"certificate": CERTIFICATE, "privateKey": key, "privateKeyPassword": KEY_PASSWORD}),
            ),
            (CA_ARN, serde_json::json!({"certificate": CERTIFICATE})),
        ]);
        let security = resolve(&m, &source).await?;
        assert_eq!(
            settings(&security),
            pairs(&[
                ("security.protocol", "ssl"),
                ("enable.ssl.certificate.verification", "true"),
                ("ssl.endpoint.identification.algorithm", "https"),
                ("ssl.ca.pem", CERTIFICATE),
                ("ssl.certificate.pem", CERTIFICATE),
                ("ssl.key.pem", &key),
                ("ssl.key.password", KEY_PASSWORD),
            ])
        );
        Ok(())
    }

    /// PLAIN has no working listener here (tansu 0.6.0's PLAIN handshake fails), so this is its coverage below
    /// the settings: librdkafka, as built (features ssl + zstd), accepts every mechanism with TLS.
    #[tokio::test]
    async fn librdkafka_accepts_every_sasl_mechanism_over_tls() -> Result<(), Box<dyn std::error::Error>> {
        for kind in ["BASIC_AUTH", "SASL_SCRAM_256_AUTH", "SASL_SCRAM_512_AUTH"] {
            let m = mapping(serde_json::json!([{"Type": kind, "URI": SCRAM_ARN}]), &["127.0.0.1:9"]);
            let security = resolve(&m, &secrets(&[(SCRAM_ARN, scram_secret())])).await?;
            let mut config = ClientConfig::new();
            config.set("bootstrap.servers", "127.0.0.1:9").set("compression.codec", "zstd");
            security.apply(&mut config);
            // Creation validates the mechanism against what librdkafka was built with; it does not connect.
            let producer: rdkafka::producer::BaseProducer = config.create().map_err(|e| format!("{kind}: {e}"))?;
            drop(producer);
        }
        Ok(())
    }

    #[tokio::test]
    async fn root_ca_alone_gives_tls_without_client_authentication() -> Result<(), AuthError> {
        let m = mapping(serde_json::json!([{"Type": "SERVER_ROOT_CA_CERTIFICATE", "URI": CA_ARN}]), &["b:9094"]);
        let security = resolve(&m, &secrets(&[(CA_ARN, serde_json::json!({"certificate": CERTIFICATE}))])).await?;
        assert_eq!(security.security_protocol(), "ssl");
        assert_eq!(security.public_setting("ssl.ca.pem"), Some(CERTIFICATE));
        assert!(!security.has_setting("ssl.key.pem"));
        Ok(())
    }

    #[tokio::test]
    async fn no_access_configuration_is_plaintext_without_tls_settings() -> Result<(), AuthError> {
        let m = mapping(serde_json::json!([{"Type": "VPC_SUBNET", "URI": "subnet:subnet-0123"}]), &["b:9092"]);
        let security = resolve(&m, &secrets(&[])).await?;
        assert_eq!(settings(&security), pairs(&[("security.protocol", "plaintext")]));
        assert_eq!(settings(&KafkaSecurity::plaintext()), pairs(&[("security.protocol", "plaintext")]));
        Ok(())
    }

    #[tokio::test]
    async fn debug_redacts_password_key_and_key_password() -> Result<(), AuthError> {
        let m = mapping(
            serde_json::json!([
                {"Type": "SASL_SCRAM_256_AUTH", "URI": SCRAM_ARN},
                {"Type": "CLIENT_CERTIFICATE_TLS_AUTH", "URI": CERT_ARN}
            ]),
            &["b:9096"],
        );
        let source = secrets(&[
            (SCRAM_ARN, scram_secret()),
            (
                CERT_ARN,
                serde_json::json!({"certificate": CERTIFICATE, "privateKey": key_pem("ENCRYPTED PRIVATE KEY"), "privateKeyPassword": KEY_PASSWORD}),
            ),
        ]);
        let security = resolve(&m, &source).await?;
        let debug = format!("{security:?}");
        for secret in [PASSWORD, KEY_PASSWORD, KEY_BODY] {
            assert!(!debug.contains(secret), "{debug}");
        }
        assert!(debug.contains(r#""sasl.password": <redacted>"#), "{debug}");
        assert!(debug.contains(r#""ssl.key.pem": <redacted>"#), "{debug}");
        assert!(debug.contains(r#""ssl.key.password": <redacted>"#), "{debug}");
        assert!(debug.contains(r#""sasl.username": "alice""#), "{debug}");
        assert!(debug.contains(&format!(r#""ssl.certificate.pem": <PEM, {} bytes>"#, CERTIFICATE.len())), "{debug}");
        Ok(())
    }

    #[tokio::test]
    async fn apply_overrides_an_earlier_plaintext_protocol() -> Result<(), AuthError> {
        let m = mapping(serde_json::json!([{"Type": "BASIC_AUTH", "URI": SCRAM_ARN}]), &["b:9096"]);
        let security = resolve(&m, &secrets(&[(SCRAM_ARN, scram_secret())])).await?;
        let mut config = ClientConfig::new();
        config.set("security.protocol", "sasl_plaintext");
        security.apply(&mut config);
        assert_eq!(config.get("security.protocol"), Some("sasl_ssl"));
        Ok(())
    }

    #[tokio::test]
    async fn sasl_over_a_plaintext_bootstrap_prefix_is_refused() {
        for server in ["SASL_PLAINTEXT://b-1.example:9092", "plaintext://b-1.example:9092"] {
            let m = mapping(serde_json::json!([{"Type": "SASL_SCRAM_512_AUTH", "URI": SCRAM_ARN}]), &[server]);
            let error = resolve(&m, &secrets(&[(SCRAM_ARN, scram_secret())])).await.unwrap_err();
            assert_eq!(error.code, ErrorCode::EsmConfigNotValid);
            assert!(error.sentence.contains(&format!("bootstrap server {server:?} asks for plaintext")), "{error}");
            assert!(error.sentence.contains("SASL_SCRAM_512_AUTH always uses TLS"), "{error}");
        }
    }

    #[tokio::test]
    async fn a_matching_prefix_is_accepted_and_a_mismatching_one_refused() -> Result<(), AuthError> {
        let m = mapping(serde_json::json!([{"Type": "SASL_SCRAM_256_AUTH", "URI": SCRAM_ARN}]), &["SASL_SSL://b:9096"]);
        assert_eq!(resolve(&m, &secrets(&[(SCRAM_ARN, scram_secret())])).await?.security_protocol(), "sasl_ssl");
        let m = mapping(serde_json::json!([]), &["SSL://b:9094"]);
        let error = resolve(&m, &secrets(&[])).await.unwrap_err();
        assert_eq!(error.code, ErrorCode::EsmConfigNotValid);
        assert!(
            error.sentence.contains(r#"asks for protocol "SSL", but SourceAccessConfigurations select "plaintext""#),
            "{error}"
        );
        Ok(())
    }

    #[tokio::test]
    async fn missing_secret_fields_name_arn_and_field() {
        let cases = [
            (
                serde_json::json!([{"Type": "SASL_SCRAM_256_AUTH", "URI": SCRAM_ARN}]),
                SCRAM_ARN,
                serde_json::json!({"username": "alice"}),
                "\"password\"",
            ),
            (
                serde_json::json!([{"Type": "BASIC_AUTH", "URI": SCRAM_ARN}]),
                SCRAM_ARN,
                serde_json::json!({"password": PASSWORD}),
                "\"username\"",
            ),
            (
                serde_json::json!([{"Type": "SERVER_ROOT_CA_CERTIFICATE", "URI": CA_ARN}]),
                CA_ARN,
                serde_json::json!({"cert": CERTIFICATE}),
                "\"certificate\"",
            ),
            (
                serde_json::json!([{"Type": "CLIENT_CERTIFICATE_TLS_AUTH", "URI": CERT_ARN}]),
                CERT_ARN,
                serde_json::json!({"certificate": CERTIFICATE, "privateKeyPassword": KEY_PASSWORD}),
                "\"privateKey\"",
            ),
            (
                serde_json::json!([{"Type": "CLIENT_CERTIFICATE_TLS_AUTH", "URI": CERT_ARN}]),
                CERT_ARN,
                serde_json::json!({"certificate": CERTIFICATE, "privateKey": key_pem("ENCRYPTED PRIVATE KEY")}),
                "\"privateKeyPassword\"",
            ),
        ];
        for (access, arn, secret, field) in cases {
            let m = mapping(access, &["b:9096"]);
            let error = resolve(&m, &secrets(&[(arn, secret)])).await.unwrap_err();
            assert_eq!(error.code, ErrorCode::EsmConfigNotValid, "{error}");
            assert!(error.sentence.contains(arn) && error.sentence.contains(field), "{error}");
            for secret in [PASSWORD, KEY_PASSWORD, KEY_BODY] {
                assert!(!error.sentence.contains(secret), "{error}");
            }
        }
    }

    #[tokio::test]
    async fn absent_secret_is_a_config_error_naming_the_arn() {
        let m = mapping(serde_json::json!([{"Type": "SASL_SCRAM_256_AUTH", "URI": SCRAM_ARN}]), &["b:9096"]);
        let error = resolve(&m, &secrets(&[])).await.unwrap_err();
        assert_eq!(error.code, ErrorCode::EsmConfigNotValid);
        assert!(error.sentence.contains(&format!("secret {SCRAM_ARN:?} does not exist")), "{error}");
    }

    #[tokio::test]
    async fn non_pem_certificate_or_key_is_an_authn_error() {
        let m = mapping(serde_json::json!([{"Type": "CLIENT_CERTIFICATE_TLS_AUTH", "URI": CERT_ARN}]), &["b:9094"]);
        let not_pem = serde_json::json!({"certificate": "MIIBdummy", "privateKey": key_pem("PRIVATE KEY")});
        let error = resolve(&m, &secrets(&[(CERT_ARN, not_pem)])).await.unwrap_err();
        assert_eq!(error.code, ErrorCode::EventSourceAuthnError);
        assert!(
            error.sentence.starts_with("Provided certificate or private key is invalid: field \"certificate\""),
            "{error}"
        );
        let no_key = serde_json::json!({"certificate": CERTIFICATE, "privateKey": KEY_BODY});
        let error = resolve(&m, &secrets(&[(CERT_ARN, no_key)])).await.unwrap_err();
        assert_eq!(error.code, ErrorCode::EventSourceAuthnError);
        assert!(error.sentence.contains("field \"privateKey\""), "{error}");
        assert!(!error.sentence.contains(KEY_BODY), "{error}");
    }

    #[test]
    fn validate_refuses_plaintext_sasl_without_reading_secrets() {
        let m = mapping(serde_json::json!([{"Type": "BASIC_AUTH", "URI": SCRAM_ARN}]), &["SASL_PLAINTEXT://b:9092"]);
        let error = validate(&m).unwrap_err();
        assert_eq!(error.code, ErrorCode::EsmConfigNotValid);
        assert!(error.sentence.contains("BASIC_AUTH always uses TLS"), "{error}");
        let m = mapping(serde_json::json!([{"Type": "BASIC_AUTH", "URI": SCRAM_ARN}]), &["b:9096"]);
        assert_eq!(validate(&m), Ok(()));
    }

    #[tokio::test]
    async fn two_sasl_types_or_a_repeated_certificate_are_refused() {
        let m = mapping(
            serde_json::json!([{"Type": "BASIC_AUTH", "URI": SCRAM_ARN}, {"Type": "SASL_SCRAM_256_AUTH", "URI": SCRAM_ARN}]),
            &["b:9096"],
        );
        let error = resolve(&m, &secrets(&[(SCRAM_ARN, scram_secret())])).await.unwrap_err();
        assert_eq!(
            error.sentence,
            "SourceAccessConfigurations has BASIC_AUTH and SASL_SCRAM_256_AUTH; choose one SASL mechanism"
        );
        let m = mapping(
            serde_json::json!([{"Type": "SERVER_ROOT_CA_CERTIFICATE", "URI": CA_ARN}, {"Type": "SERVER_ROOT_CA_CERTIFICATE", "URI": CA_ARN}]),
            &["b:9094"],
        );
        let error = resolve(&m, &secrets(&[])).await.unwrap_err();
        assert_eq!(
            error.sentence,
            "SourceAccessConfigurations has SERVER_ROOT_CA_CERTIFICATE more than once; allowed once"
        );
        let m = mapping(serde_json::json!([{"Type": "KERBEROS", "URI": CA_ARN}]), &["b:9094"]);
        let error = resolve(&m, &secrets(&[])).await.unwrap_err();
        assert_eq!(error.code, ErrorCode::EsmConfigNotValid);
        assert!(error.sentence.starts_with("SourceAccessConfigurations Type \"KERBEROS\" is not supported"), "{error}");
    }

    #[test]
    fn redact_removes_secret_values_and_lines_of_pem_keys() -> Result<(), AuthError> {
        let key = format!("-----BEGIN PRIVATE KEY-----\n{KEY_BODY}\n{KEY_BODY}XYZ\n-----END PRIVATE KEY-----\n");
        let security = KafkaSecurity {
            protocol: "sasl_ssl",
            settings: vec![("sasl.password", Value::Secret(PASSWORD.into())), ("ssl.key.pem", Value::Secret(key))],
            ..KafkaSecurity::plaintext()
        };
        assert_eq!(security.redact(&format!("bad password {PASSWORD}!")), "bad password <redacted>!");
        // A truncated key still loses its lines.
        assert_eq!(security.redact(&format!("PEM: {KEY_BODY}XYZ")), "PEM: <redacted>");
        assert_eq!(security.redact("nothing secret"), "nothing secret");
        Ok(())
    }

    /// `EncryptedPrivateKeyInfo` prefixes with the given algorithm OID (contents only).
    fn encrypted_key_info(oid: &[u8]) -> Vec<u8> {
        let mut algorithm = vec![0x06, oid.len() as u8];
        algorithm.extend_from_slice(oid);
        algorithm.extend_from_slice(&[0x30, 0x00]);
        let mut inner = vec![0x30, algorithm.len() as u8];
        inner.extend_from_slice(&algorithm);
        inner.extend_from_slice(&[0x04, 0x02, 0xaa, 0xbb]);
        let mut der = vec![0x30, 0x81, inner.len() as u8];
        der.extend_from_slice(&inner);
        der
    }

    #[test]
    fn legacy_provider_is_needed_for_des_and_rc2_pbes1_only() {
        let pkcs5 = |last: u8| vec![0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x05, last];
        let pkcs12 = |last: u8| vec![0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x0c, 0x01, last];
        assert!(pkcs8_needs_legacy_provider(&encrypted_key_info(&pkcs5(10))), "pbeWithSHA1AndDES-CBC");
        assert!(pkcs8_needs_legacy_provider(&encrypted_key_info(&pkcs5(3))), "pbeWithMD5AndDES-CBC");
        assert!(pkcs8_needs_legacy_provider(&encrypted_key_info(&pkcs12(6))), "pbeWithSHAAnd40BitRC2-CBC");
        assert!(!pkcs8_needs_legacy_provider(&encrypted_key_info(&pkcs5(13))), "PBES2");
        assert!(!pkcs8_needs_legacy_provider(&encrypted_key_info(&pkcs12(3))), "pbeWithSHAAnd3-KeyTripleDES-CBC");
        assert!(!pkcs8_needs_legacy_provider(b"\x30\x03\x02\x01\x00"), "not an EncryptedPrivateKeyInfo");
        assert!(!pkcs8_needs_legacy_provider(b""), "empty");
    }

    #[test]
    fn private_key_pem_detects_encryption() {
        assert_eq!(
            PrivateKeyPem::inspect(&key_pem("PRIVATE KEY")),
            Some(PrivateKeyPem { encrypted: false, needs_legacy_provider: false })
        );
        assert_eq!(PrivateKeyPem::inspect(&key_pem("ENCRYPTED PRIVATE KEY")).map(|k| k.encrypted), Some(true));
        let traditional = format!("-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-256-CBC,00\n\n{KEY_BODY}\n-----END RSA PRIVATE KEY-----\n");
        assert_eq!(PrivateKeyPem::inspect(&traditional).map(|k| k.encrypted), Some(true));
        assert_eq!(PrivateKeyPem::inspect(CERTIFICATE), None);
        assert_eq!(PrivateKeyPem::inspect(KEY_BODY), None);
    }
}
