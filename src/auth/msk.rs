//! Amazon MSK: the bootstrap brokers of a cluster ARN (`kafka:GetBootstrapBrokers`) and IAM authentication
//! (SASL/OAUTHBEARER carrying MSK's SigV4-presigned `kafka-cluster:Connect` token).
//!
//! # Bootstrap brokers
//! [`bootstrap_brokers`] asks the MSK control plane once per run for the cluster's broker strings and picks
//! the one for the mapping's authentication ([`MskAuth`]) and network path ([`Connectivity`]), as
//! [`pick_broker_string`] decides: IAM → `BootstrapBrokerStringSaslIam` (port 9098), SASL/SCRAM →
//! `...SaslScram` (9096), mTLS → `...Tls` (9094); `Public...` only when the mapping asks for `PUBLIC`,
//! `VpcConnectivity...` for `MULTI_VPC` (a cluster in another account reached over multi-VPC private
//! connectivity). MSK Serverless clusters answer with the IAM string only. Failures carry the MSK API's
//! error code (`NotFoundException`, `ForbiddenException`, ...) in the sentence; when a broker string is
//! missing or the call is refused as a conflict, `kafka:DescribeClusterV2` says whether the cluster is not
//! `ACTIVE` or is Serverless.
//!
//! # IAM tokens
//! [`sign_token`] is MSK's token exactly as AWS's signers build it (checked against
//! `aws-msk-iam-sasl-signer-python` in `tests/msk_token.rs`): a GET of
//! `https://kafka.<region>.amazonaws.com/?Action=kafka-cluster%3AConnect` presigned with SigV4 for service
//! `kafka-cluster`, valid [`TOKEN_LIFETIME`], the session token inside the signature, a `User-Agent`
//! parameter appended after signing, the whole URL base64url-encoded without padding.
//!
//! [`MskIamAuth`] serves tokens to librdkafka's OAUTHBEARER refresh, which rdkafka calls **synchronously from
//! the consumer's poll**, on whatever thread polls (a tokio worker for the relay's stream). Rules enforced
//! here, and the tests that name them:
//! - The callback never blocks on the async runtime: it signs with credentials already in memory. When they
//!   are within [`CREDENTIALS_REFRESH_BEFORE`] of their expiry, it *spawns* one refresh on the runtime
//!   captured when the run started and signs with the current ones meanwhile
//!   (`near_expiry_credentials_are_refreshed_in_the_background_without_blocking`).
//! - One credentials provider per process (the SDK's chain: [`MskEnvironment::shared`], or the relay's own
//!   configuration through [`MskEnvironment::use_for_process`]); credentials are loaded once per run and then
//!   only refreshed before they expire (the same test counts the loads).
//! - A token never outlives the credentials that signed it: its lifetime is the earlier of 15 minutes and
//!   the credentials' expiry, and librdkafka asks for a new one at 80% of that
//!   (`token_lifetime_never_exceeds_the_credentials_expiry`). Credentials that expire within
//!   [`MIN_CREDENTIALS_VALIDITY`] are not signed with (`expired_credentials_give_an_error_not_a_token`).
//! - The first token is set on the client right after it is created ([`set_initial_token`]), before the
//!   first metadata request: a client that asks for metadata before anything polls it would otherwise wait
//!   for a refresh that never comes (tests/e2e_msk.rs shows both).
//! - Neither credentials nor tokens reach a `Debug` output, a log or an error: tokens are recognized by shape
//!   wherever librdkafka text is redacted ([`redact_tokens`], `tokens_and_presigned_parameters_are_redacted`;
//!   tests/e2e_msk.rs scans the captured logs, librdkafka's debug lines included).

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use aws_credential_types::Credentials;
use aws_sdk_kafka::error::ProvideErrorMetadata;
use aws_sdk_kafka::operation::get_bootstrap_brokers::GetBootstrapBrokersOutput;
use base64::Engine as _;
use rdkafka::client::{Client, ClientContext, OAuthToken};

use super::AuthError;
use crate::config::Mapping;

/// How long an MSK IAM token is valid: 900 seconds, as AWS's signers sign it (`X-Amz-Expires=900`).
pub const TOKEN_LIFETIME: Duration = Duration::from_secs(900);

/// The SigV4 service name of MSK's data plane.
pub const SIGNING_SERVICE: &str = "kafka-cluster";

/// The `User-Agent` query parameter the relay puts on its tokens (MSK logs it; it is not signed).
pub const USER_AGENT: &str = concat!("kafka-lambda-relay/", env!("CARGO_PKG_VERSION"));

/// Credentials closer than this to their expiry are refreshed in the background.
pub const CREDENTIALS_REFRESH_BEFORE: Duration = Duration::from_secs(300);

/// Credentials closer than this to their expiry are not signed with.
pub const MIN_CREDENTIALS_VALIDITY: Duration = Duration::from_secs(30);

/// The principal name given to librdkafka with each token (librdkafka requires one; MSK derives the real
/// principal from the signature).
const PRINCIPAL: &str = "msk-iam";

/// base64url of `https://kafka`: how every MSK token starts, for redaction.
const TOKEN_PREFIX: &str = "aHR0cHM6Ly9rYWZrYS";

/// An MSK IAM token and when it stops being valid.
#[derive(Clone, PartialEq, Eq)]
pub struct IamToken {
    /// base64url (no padding) of the presigned URL.
    pub token: String,
    /// The end of its validity: signing time + 900 s, or the credentials' expiry if earlier.
    pub expires_at: SystemTime,
}

impl fmt::Debug for IamToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IamToken").field("token", &"<redacted>").field("expires_at", &self.expires_at).finish()
    }
}

/// RFC 3986 unreserved characters stay, everything else is percent-encoded (what SigV4 and botocore's
/// `percent_encode_sequence` do).
fn query_escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// MSK's IAM token for `region`, signed with `credentials` at `time`, `user_agent` appended.
///
/// The query parameters come in the order AWS's signers write them: `Action`, the SigV4 parameters
/// (`X-Amz-Algorithm`, `-Credential`, `-Date`, `-Expires`, `-SignedHeaders`, `-Security-Token` when there is
/// a session token), `X-Amz-Signature`, then the unsigned `User-Agent`.
pub fn sign_token(
    region: &str,
    credentials: &Credentials,
    time: SystemTime,
    user_agent: &str,
) -> Result<IamToken, AuthError> {
    use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SignatureLocation, SigningSettings};
    use aws_sigv4::sign::v4;

    let failed = |what: &str| AuthError::authn(format!("cannot sign the MSK IAM token for region {region:?}: {what}"));
    if region.is_empty() || !region.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        return Err(failed("the region is not a region name"));
    }
    let endpoint = format!("https://kafka.{region}.amazonaws.com/");
    let url = format!("{endpoint}?Action={}", query_escape("kafka-cluster:Connect"));
    let identity = credentials.clone().into();
    let mut settings = SigningSettings::default();
    settings.signature_location = SignatureLocation::QueryParams;
    settings.expires_in = Some(TOKEN_LIFETIME);
    let params: aws_sigv4::http_request::SigningParams<'_> = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(SIGNING_SERVICE)
        .time(time)
        .settings(settings)
        .build()
        .map_err(|e| failed(&e.to_string()))?
        .into();
    let request = SignableRequest::new("GET", url.as_str(), std::iter::empty(), SignableBody::Bytes(&[]))
        .map_err(|e| failed(&e.to_string()))?;
    let (instructions, _signature) = sign(request, &params).map_err(|e| failed(&e.to_string()))?.into_parts();
    let signed = instructions.params();
    let mut query = url;
    for name in [
        "X-Amz-Algorithm",
        "X-Amz-Credential",
        "X-Amz-Date",
        "X-Amz-Expires",
        "X-Amz-SignedHeaders",
        "X-Amz-Security-Token",
        "X-Amz-Signature",
    ] {
        if let Some((_, value)) = signed.iter().find(|(key, _)| *key == name) {
            query.push_str(&format!("&{name}={}", query_escape(value)));
        } else if name != "X-Amz-Security-Token" {
            return Err(failed(&format!("the signer returned no {name}")));
        }
    }
    query.push_str(&format!("&User-Agent={}", query_escape(user_agent)));
    let mut expires_at = time + TOKEN_LIFETIME;
    if let Some(expiry) = credentials.expiry() {
        expires_at = expires_at.min(expiry);
    }
    Ok(IamToken { token: base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(query), expires_at })
}

/// `text` with anything that looks like an MSK token or a presigned URL's signature or session token
/// replaced by `<redacted>`. Applied to all librdkafka text with the mapping's other secrets.
pub fn redact_tokens(text: &str) -> String {
    let mut out = text.to_string();
    // base64url tokens.
    while let Some(start) = out.find(TOKEN_PREFIX) {
        let end = out[start..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '='))
            .map_or(out.len(), |n| start + n);
        out.replace_range(start..end, "<redacted>");
    }
    // Decoded URLs.
    for parameter in ["X-Amz-Signature=", "X-Amz-Security-Token=", "X-Amz-Credential="] {
        let mut from = 0;
        while let Some(found) = out[from..].find(parameter) {
            let start = from + found + parameter.len();
            let end = out[start..].find(['&', ' ', '"', '\'', ')']).map_or(out.len(), |n| start + n);
            out.replace_range(start..end, "<redacted>");
            from = start + "<redacted>".len();
        }
    }
    out
}

/// The AWS region of an MSK cluster ARN (`arn:aws:kafka:<region>:<account>:cluster/...`).
pub fn cluster_region(arn: &str) -> Option<&str> {
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    (parts.len() == 6 && parts[2] == "kafka" && !parts[3].is_empty()).then_some(parts[3])
}

/// Serves MSK IAM tokens for one run of one mapping: credentials from one shared provider, cached, refreshed
/// in the background before they expire. See the module docs for the rules.
pub struct MskIamAuth {
    region: String,
    provider: SharedCredentialsProvider,
    credentials: Mutex<Credentials>,
    refreshing: Arc<AtomicBool>,
    shared: Arc<Mutex<Option<Credentials>>>,
    runtime: Option<tokio::runtime::Handle>,
    user_agent: String,
}

impl fmt::Debug for MskIamAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MskIamAuth").field("region", &self.region).finish_non_exhaustive()
    }
}

impl MskIamAuth {
    /// Loads credentials once from `provider` (through the SDK's chain in production) for tokens of
    /// `region`. Fails with `EVENT_SOURCE_AUTHN_ERROR` when there are none.
    pub async fn start(provider: SharedCredentialsProvider, region: &str) -> Result<Self, AuthError> {
        let credentials = provider.provide_credentials().await.map_err(|error| {
            AuthError::authn(format!(
                "no AWS credentials for MSK IAM authentication: the function's role credentials could not be loaded ({}); check the function's execution role",
                redact_tokens(&error.to_string())
            ))
        })?;
        Ok(Self {
            region: region.to_string(),
            provider,
            credentials: Mutex::new(credentials),
            refreshing: Arc::new(AtomicBool::new(false)),
            shared: Arc::new(Mutex::new(None)),
            runtime: tokio::runtime::Handle::try_current().ok(),
            user_agent: USER_AGENT.to_string(),
        })
    }

    /// The region tokens are signed for.
    pub fn region(&self) -> &str {
        &self.region
    }

    /// A token for now, for librdkafka's OAUTHBEARER refresh. Synchronous and non-blocking: see the module
    /// docs.
    pub fn token(&self) -> Result<IamToken, AuthError> {
        self.token_at(SystemTime::now())
    }

    /// [`Self::token`] at `now`.
    pub fn token_at(&self, now: SystemTime) -> Result<IamToken, AuthError> {
        if let Some(fresh) = self.shared.lock().unwrap_or_else(|p| p.into_inner()).take() {
            *self.credentials.lock().unwrap_or_else(|p| p.into_inner()) = fresh;
        }
        let credentials = self.credentials.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if let Some(expiry) = credentials.expiry() {
            if expiry <= now + CREDENTIALS_REFRESH_BEFORE {
                self.refresh_in_background();
            }
            if expiry <= now + MIN_CREDENTIALS_VALIDITY {
                return Err(AuthError::authn(format!(
                    "the function's AWS credentials expire {}; a refresh has been started and the MSK IAM token will be signed once it completes",
                    expiry
                        .duration_since(UNIX_EPOCH)
                        .map(|d| format!("at Unix time {}", d.as_secs()))
                        .unwrap_or_else(|_| "now".into())
                )));
            }
        }
        sign_token(&self.region, &credentials, now, &self.user_agent)
    }

    /// Starts one credentials refresh on the run's runtime unless one is under way; never waits for it.
    fn refresh_in_background(&self) {
        let Some(runtime) = &self.runtime else { return };
        if self.refreshing.swap(true, Ordering::AcqRel) {
            return;
        }
        let provider = self.provider.clone();
        let shared = self.shared.clone();
        let refreshing = self.refreshing.clone();
        runtime.spawn(async move {
            match provider.provide_credentials().await {
                Ok(credentials) => *shared.lock().unwrap_or_else(|p| p.into_inner()) = Some(credentials),
                Err(error) => tracing::warn!(
                    error_code = "CREDENTIALS_REFRESH_FAILED",
                    error = %redact_tokens(&error.to_string()),
                    "refreshing the AWS credentials for MSK IAM authentication failed; retrying at the next token"
                ),
            }
            refreshing.store(false, Ordering::Release);
        });
    }

    /// Whether a background refresh is under way (for tests).
    pub fn is_refreshing(&self) -> bool {
        self.refreshing.load(Ordering::Acquire)
    }

    /// The token as rdkafka's `generate_oauth_token` returns it.
    pub fn oauth_token(&self) -> Result<OAuthToken, Box<dyn std::error::Error>> {
        let token = self.token().map_err(|e| e.sentence)?;
        let lifetime_ms = token.expires_at.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0);
        Ok(OAuthToken { token: token.token, principal_name: PRINCIPAL.into(), lifetime_ms })
    }
}

/// Sets the first OAUTHBEARER token on a freshly created client, so its first connection (and metadata
/// request) can authenticate before anything polls it. A no-op without `auth`.
pub fn set_initial_token<C: ClientContext>(client: &Client<C>, auth: Option<&MskIamAuth>) -> Result<(), AuthError> {
    let Some(auth) = auth else { return Ok(()) };
    let token = auth.oauth_token().map_err(|e| AuthError::authn(e.to_string()))?;
    let value = std::ffi::CString::new(token.token).map_err(|_| AuthError::authn("the MSK IAM token is not text"))?;
    let principal = std::ffi::CString::new(token.principal_name).expect("constant principal");
    let mut error = [0 as std::os::raw::c_char; 512];
    // SAFETY: the client handle is alive, the strings are NUL-terminated and the error buffer is writable for
    // its length.
    let code = unsafe {
        rdkafka::bindings::rd_kafka_oauthbearer_set_token(
            client.native_ptr(),
            value.as_ptr(),
            token.lifetime_ms,
            principal.as_ptr(),
            std::ptr::null_mut(),
            0,
            error.as_mut_ptr(),
            error.len(),
        )
    };
    if code == rdkafka::types::RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR {
        return Ok(());
    }
    // SAFETY: librdkafka NUL-terminates the message within the buffer.
    let message = unsafe { std::ffi::CStr::from_ptr(error.as_ptr()) }.to_string_lossy().into_owned();
    Err(AuthError::authn(format!("librdkafka refused the MSK IAM token: {}", redact_tokens(&message))))
}

/// How the mapping authenticates to its MSK cluster, which decides the broker string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MskAuth {
    /// IAM access control (no SASL or client-certificate `SourceAccessConfigurations`): port 9098.
    Iam,
    /// `SASL_SCRAM_512_AUTH` (or 256): port 9096.
    SaslScram,
    /// `CLIENT_CERTIFICATE_TLS_AUTH`: port 9094.
    Tls,
}

impl MskAuth {
    fn describe(self) -> &'static str {
        match self {
            MskAuth::Iam => "IAM",
            MskAuth::SaslScram => "SASL/SCRAM",
            MskAuth::Tls => "mTLS",
        }
    }
}

/// Which network path to the brokers a mapping uses: relay field `MskConnectivity`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Connectivity {
    /// The cluster's own VPC (the relay runs in it or a peered one): the default.
    #[default]
    Private,
    /// The cluster's public endpoints (public access turned on for the cluster).
    Public,
    /// Multi-VPC private connectivity (PrivateLink), e.g. a cluster in another account.
    MultiVpc,
}

impl Connectivity {
    fn as_str(self) -> &'static str {
        match self {
            Connectivity::Private => "PRIVATE",
            Connectivity::Public => "PUBLIC",
            Connectivity::MultiVpc => "MULTI_VPC",
        }
    }
}

/// The response field names (as AWS's API reference spells them) for `auth` over `connectivity`.
pub fn broker_string_field(auth: MskAuth, connectivity: Connectivity) -> &'static str {
    match (connectivity, auth) {
        (Connectivity::Private, MskAuth::Iam) => "BootstrapBrokerStringSaslIam",
        (Connectivity::Private, MskAuth::SaslScram) => "BootstrapBrokerStringSaslScram",
        (Connectivity::Private, MskAuth::Tls) => "BootstrapBrokerStringTls",
        (Connectivity::Public, MskAuth::Iam) => "BootstrapBrokerStringPublicSaslIam",
        (Connectivity::Public, MskAuth::SaslScram) => "BootstrapBrokerStringPublicSaslScram",
        (Connectivity::Public, MskAuth::Tls) => "BootstrapBrokerStringPublicTls",
        (Connectivity::MultiVpc, MskAuth::Iam) => "BootstrapBrokerStringVpcConnectivitySaslIam",
        (Connectivity::MultiVpc, MskAuth::SaslScram) => "BootstrapBrokerStringVpcConnectivitySaslScram",
        (Connectivity::MultiVpc, MskAuth::Tls) => "BootstrapBrokerStringVpcConnectivityTls",
    }
}

/// The broker string for `auth` over `connectivity` from a `GetBootstrapBrokers` answer, if the cluster
/// has one. Never another authentication's string: connecting with IAM to the SCRAM port fails later
/// with a confusing error, so a missing string is reported as such.
pub fn pick_broker_string(
    output: &GetBootstrapBrokersOutput,
    auth: MskAuth,
    connectivity: Connectivity,
) -> Option<String> {
    let value = match (connectivity, auth) {
        (Connectivity::Private, MskAuth::Iam) => output.bootstrap_broker_string_sasl_iam(),
        (Connectivity::Private, MskAuth::SaslScram) => output.bootstrap_broker_string_sasl_scram(),
        (Connectivity::Private, MskAuth::Tls) => output.bootstrap_broker_string_tls(),
        (Connectivity::Public, MskAuth::Iam) => output.bootstrap_broker_string_public_sasl_iam(),
        (Connectivity::Public, MskAuth::SaslScram) => output.bootstrap_broker_string_public_sasl_scram(),
        (Connectivity::Public, MskAuth::Tls) => output.bootstrap_broker_string_public_tls(),
        (Connectivity::MultiVpc, MskAuth::Iam) => output.bootstrap_broker_string_vpc_connectivity_sasl_iam(),
        (Connectivity::MultiVpc, MskAuth::SaslScram) => output.bootstrap_broker_string_vpc_connectivity_sasl_scram(),
        (Connectivity::MultiVpc, MskAuth::Tls) => output.bootstrap_broker_string_vpc_connectivity_tls(),
    };
    value.map(str::trim).filter(|v| !v.is_empty()).map(String::from)
}

/// What `DescribeClusterV2` said about a cluster, for error sentences.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ClusterFacts {
    state: Option<String>,
    serverless: bool,
}

async fn describe(client: &aws_sdk_kafka::Client, arn: &str) -> Option<ClusterFacts> {
    let output = client.describe_cluster_v2().cluster_arn(arn).send().await.ok()?;
    let info = output.cluster_info()?;
    Some(ClusterFacts {
        state: info.state().map(|s| s.as_str().to_string()),
        serverless: info.cluster_type().is_some_and(|t| t.as_str() == "SERVERLESS") || info.serverless().is_some(),
    })
}

/// Calls `kafka:GetBootstrapBrokers` for `arn` and picks the broker string for `auth` over `connectivity`.
///
/// Errors (all name the ARN, and the MSK error code when the API refused):
/// - `NotFoundException` → `ESM_CONFIG_NOT_VALID`: the cluster does not exist.
/// - `ForbiddenException` / `UnauthorizedException` / `AccessDeniedException` → `ESM_CONFIG_NOT_VALID`:
///   the relay's role may not call `kafka:GetBootstrapBrokers`; the fix is its policy.
/// - `ConflictException`, `BadRequestException` or a missing string on a cluster that is not `ACTIVE`
///   (per `kafka:DescribeClusterV2`) → `ESM_CONFIG_NOT_VALID` naming the state.
/// - No string for the authentication → `ESM_CONFIG_NOT_VALID` naming the field, and for Serverless that it
///   supports IAM only.
/// - Anything else (throttling, a 5xx, no route to the endpoint) → `ESM_CONFIG_NOT_VALID` with the code, or
///   the network error and what route the relay needs.
pub async fn bootstrap_brokers(
    client: &aws_sdk_kafka::Client,
    arn: &str,
    auth: MskAuth,
    connectivity: Connectivity,
) -> Result<String, AuthError> {
    let field = broker_string_field(auth, connectivity);
    let output = match client.get_bootstrap_brokers().cluster_arn(arn).send().await {
        Ok(output) => output,
        Err(error) => {
            let code = error.code().map(String::from);
            let message = error.message().map(String::from).unwrap_or_default();
            return Err(match code.as_deref() {
                Some("NotFoundException") => AuthError::config(format!(
                    "MSK cluster {arn:?} does not exist (kafka:GetBootstrapBrokers: NotFoundException: {message}); check EventSourceArn and that the relay runs in the cluster's region"
                )),
                Some(code @ ("ForbiddenException" | "UnauthorizedException" | "AccessDeniedException")) => {
                    AuthError::config(format!(
                        "the relay's role may not read MSK cluster {arn:?} (kafka:GetBootstrapBrokers: {code}: {message}); allow kafka:GetBootstrapBrokers and kafka:DescribeClusterV2 on the cluster ARN in the relay's execution role (template parameter MskClusterArns)"
                    ))
                }
                Some(code @ ("ConflictException" | "BadRequestException")) => {
                    match describe(client, arn).await.and_then(|f| f.state).filter(|s| s != "ACTIVE") {
                        Some(state) => AuthError::config(format!(
                            "MSK cluster {arn:?} is {state}, not ACTIVE (kafka:GetBootstrapBrokers: {code}: {message}); wait until the cluster is ACTIVE"
                        )),
                        None => AuthError::config(format!(
                            "kafka:GetBootstrapBrokers refused MSK cluster {arn:?}: {code}: {message}"
                        )),
                    }
                }
                Some(code) => AuthError::config(format!(
                    "cannot read the bootstrap brokers of MSK cluster {arn:?} (kafka:GetBootstrapBrokers: {code}: {message}); the run is retried on the next schedule"
                )),
                None => AuthError::config(format!(
                    "cannot reach the MSK control plane for cluster {arn:?} (kafka:GetBootstrapBrokers: {}); the relay needs a route to the kafka.<region>.amazonaws.com endpoint (a NAT gateway or a VPC interface endpoint for MSK)",
                    redact_tokens(&crate::error::with_causes(&error))
                )),
            });
        }
    };
    if let Some(brokers) = pick_broker_string(&output, auth, connectivity) {
        return Ok(brokers);
    }
    let facts = describe(client, arn).await;
    let sentence = match &facts {
        Some(ClusterFacts { state: Some(state), .. }) if state != "ACTIVE" => format!(
            "MSK cluster {arn:?} is {state}, not ACTIVE, and has no {field} yet; wait until the cluster is ACTIVE"
        ),
        Some(ClusterFacts { serverless: true, .. }) if auth != MskAuth::Iam => format!(
            "MSK cluster {arn:?} is MSK Serverless, which supports IAM authentication only; remove the {} SourceAccessConfigurations so the relay uses IAM",
            auth.describe()
        ),
        _ => {
            let others: Vec<&str> = [Connectivity::Private, Connectivity::Public, Connectivity::MultiVpc]
                .into_iter()
                .filter(|c| *c != connectivity && pick_broker_string(&output, auth, *c).is_some())
                .map(Connectivity::as_str)
                .collect();
            let hint = if others.is_empty() {
                format!(
                    "turn on {} authentication on the cluster, or choose the SourceAccessConfigurations of an authentication it has",
                    auth.describe()
                )
            } else {
                format!("the cluster offers {} over MskConnectivity {}; set that", auth.describe(), others.join(" or "))
            };
            format!(
                "MSK cluster {arn:?} has no {field} (kafka:GetBootstrapBrokers), so it cannot be reached with {} authentication over MskConnectivity {}; {hint}",
                auth.describe(),
                connectivity.as_str()
            )
        }
    };
    Err(AuthError::config(sentence))
}

static SHARED: tokio::sync::OnceCell<MskEnvironment> = tokio::sync::OnceCell::const_new();

/// What MSK mappings need from AWS: the MSK control-plane client and the one credentials provider, from an
/// SDK configuration. Production loads one per process from the environment ([`MskEnvironment::shared`]),
/// which honours `AWS_ENDPOINT_URL_KAFKA` (tests point it at a local double).
#[derive(Clone)]
pub struct MskEnvironment {
    sdk_config: aws_config::SdkConfig,
}

impl fmt::Debug for MskEnvironment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MskEnvironment").field("region", &self.sdk_config.region()).finish_non_exhaustive()
    }
}

impl MskEnvironment {
    /// From an SDK configuration (its credentials provider is used for tokens as is).
    pub fn new(sdk_config: aws_config::SdkConfig) -> Self {
        Self { sdk_config }
    }

    /// Makes `sdk_config` the process-wide environment (so MSK uses the same credentials provider as the
    /// relay's other clients), unless one is already in use. Returns whether it was taken.
    pub fn use_for_process(sdk_config: &aws_config::SdkConfig) -> bool {
        SHARED.set(MskEnvironment::new(sdk_config.clone())).is_ok()
    }

    /// The process-wide environment: the one given to [`Self::use_for_process`], else loaded from the
    /// environment on first use.
    pub async fn shared() -> &'static MskEnvironment {
        SHARED
            .get_or_init(|| async {
                MskEnvironment::new(aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await)
            })
            .await
    }

    /// The MSK control-plane client for the cluster's region.
    pub fn kafka_client(&self, region: &str) -> aws_sdk_kafka::Client {
        let config = aws_sdk_kafka::config::Builder::from(&self.sdk_config)
            .region(aws_sdk_kafka::config::Region::new(region.to_string()))
            .build();
        aws_sdk_kafka::Client::from_conf(config)
    }

    /// The credentials provider; `ESM_CONFIG_NOT_VALID` when the configuration has none.
    pub fn credentials_provider(&self) -> Result<SharedCredentialsProvider, AuthError> {
        self.sdk_config.credentials_provider().ok_or_else(|| {
            AuthError::authn("no AWS credentials provider is configured for MSK IAM authentication".to_string())
        })
    }
}

/// The MSK auth type of a mapping (IAM unless it has SASL or client-certificate access configurations).
pub(crate) fn msk_auth_of(mapping: &Mapping) -> MskAuth {
    let kinds: Vec<&str> = mapping.source_access_configurations.iter().map(|e| e.kind.as_str()).collect();
    if kinds.iter().any(|k| matches!(*k, "BASIC_AUTH" | "SASL_SCRAM_256_AUTH" | "SASL_SCRAM_512_AUTH")) {
        MskAuth::SaslScram
    } else if kinds.contains(&"CLIENT_CERTIFICATE_TLS_AUTH") {
        MskAuth::Tls
    } else {
        MskAuth::Iam
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn credentials(expiry: Option<SystemTime>) -> Credentials {
        Credentials::new(
            "AKIDEXAMPLE",
            "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
            Some("session/token+=".into()),
            expiry,
            "test",
        )
    }

    fn decode(token: &str) -> String {
        String::from_utf8(base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(token).expect("base64url"))
            .expect("utf-8")
    }

    #[test]
    fn token_is_the_presigned_connect_url_in_aws_parameter_order() {
        let time = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let token = sign_token("eu-west-1", &credentials(None), time, "ua/1.0").unwrap();
        assert!(!token.token.contains('=') && !token.token.contains('+') && !token.token.contains('/'));
        let url = decode(&token.token);
        let (base, query) = url.split_once('?').unwrap();
        assert_eq!(base, "https://kafka.eu-west-1.amazonaws.com/");
        let names: Vec<&str> = query.split('&').map(|p| p.split_once('=').unwrap().0).collect();
        assert_eq!(
            names,
            [
                "Action",
                "X-Amz-Algorithm",
                "X-Amz-Credential",
                "X-Amz-Date",
                "X-Amz-Expires",
                "X-Amz-SignedHeaders",
                "X-Amz-Security-Token",
                "X-Amz-Signature",
                "User-Agent"
            ]
        );
        assert!(query.starts_with("Action=kafka-cluster%3AConnect&X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIDEXAMPLE%2F20231114%2Feu-west-1%2Fkafka-cluster%2Faws4_request&X-Amz-Date=20231114T221320Z&X-Amz-Expires=900&X-Amz-SignedHeaders=host&X-Amz-Security-Token=session%2Ftoken%2B%3D&X-Amz-Signature="), "{query}");
        assert!(query.ends_with("&User-Agent=ua%2F1.0"), "{query}");
        assert_eq!(token.expires_at, time + TOKEN_LIFETIME);
    }

    #[test]
    fn token_lifetime_never_exceeds_the_credentials_expiry() {
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let expiry = now + Duration::from_secs(120);
        let token = sign_token("us-east-1", &credentials(Some(expiry)), now, USER_AGENT).unwrap();
        assert_eq!(token.expires_at, expiry);
        let later = now + Duration::from_secs(3600);
        let token = sign_token("us-east-1", &credentials(Some(later)), now, USER_AGENT).unwrap();
        assert_eq!(token.expires_at, now + TOKEN_LIFETIME);
    }

    #[test]
    fn tokens_and_presigned_parameters_are_redacted() {
        let token = sign_token("us-east-1", &credentials(None), SystemTime::now(), USER_AGENT).unwrap();
        let url = decode(&token.token);
        let text = format!("sasl failed with token {} (url {url})", token.token);
        let redacted = redact_tokens(&text);
        assert!(!redacted.contains(&token.token), "{redacted}");
        assert!(!redacted.contains("session%2Ftoken"), "{redacted}");
        assert!(!redacted.contains("AKIDEXAMPLE"), "{redacted}");
        let signature = url.split("X-Amz-Signature=").nth(1).unwrap().split('&').next().unwrap();
        assert!(!redacted.contains(signature), "{redacted}");
        assert!(redacted.starts_with("sasl failed with token <redacted> (url https://kafka.us-east-1"), "{redacted}");
        assert!(!format!("{token:?}").contains(&token.token));
    }

    #[test]
    fn region_comes_from_the_cluster_arn() {
        assert_eq!(cluster_region("arn:aws:kafka:eu-central-1:123456789012:cluster/demo/abc-1"), Some("eu-central-1"));
        assert_eq!(cluster_region("arn:aws:sqs:eu-central-1:1:q"), None);
        assert!(sign_token("", &credentials(None), SystemTime::now(), USER_AGENT).is_err());
    }

    #[test]
    fn every_auth_and_connectivity_picks_its_own_string() {
        let output = GetBootstrapBrokersOutput::builder()
            .bootstrap_broker_string("b:9092")
            .bootstrap_broker_string_tls("b:9094")
            .bootstrap_broker_string_sasl_scram("b:9096")
            .bootstrap_broker_string_sasl_iam("b:9098")
            .bootstrap_broker_string_public_tls("b:9194")
            .bootstrap_broker_string_public_sasl_scram("b:9196")
            .bootstrap_broker_string_public_sasl_iam("b:9198")
            .bootstrap_broker_string_vpc_connectivity_tls("v:14001")
            .bootstrap_broker_string_vpc_connectivity_sasl_scram("v:14002")
            .bootstrap_broker_string_vpc_connectivity_sasl_iam("v:14003")
            .build();
        let expected = [
            (MskAuth::Iam, Connectivity::Private, "b:9098"),
            (MskAuth::SaslScram, Connectivity::Private, "b:9096"),
            (MskAuth::Tls, Connectivity::Private, "b:9094"),
            (MskAuth::Iam, Connectivity::Public, "b:9198"),
            (MskAuth::SaslScram, Connectivity::Public, "b:9196"),
            (MskAuth::Tls, Connectivity::Public, "b:9194"),
            (MskAuth::Iam, Connectivity::MultiVpc, "v:14003"),
            (MskAuth::SaslScram, Connectivity::MultiVpc, "v:14002"),
            (MskAuth::Tls, Connectivity::MultiVpc, "v:14001"),
        ];
        for (auth, connectivity, brokers) in expected {
            assert_eq!(
                pick_broker_string(&output, auth, connectivity).as_deref(),
                Some(brokers),
                "{auth:?} {connectivity:?}"
            );
        }
        // The plaintext string is never picked, and an absent string is absent (no fallback to another auth).
        let only_plaintext = GetBootstrapBrokersOutput::builder().bootstrap_broker_string("b:9092").build();
        assert_eq!(pick_broker_string(&only_plaintext, MskAuth::Iam, Connectivity::Private), None);
    }

    /// Rule: the callback never blocks on the async runtime; credentials near expiry are refreshed in the
    /// background and the current ones are used meanwhile.
    #[tokio::test]
    async fn near_expiry_credentials_are_refreshed_in_the_background_without_blocking() {
        use std::sync::atomic::AtomicUsize;
        #[derive(Debug)]
        struct Counting(Arc<AtomicUsize>);
        impl ProvideCredentials for Counting {
            fn provide_credentials<'a>(&'a self) -> aws_credential_types::provider::future::ProvideCredentials<'a>
            where
                Self: 'a,
            {
                let n = self.0.fetch_add(1, Ordering::SeqCst);
                // First credentials expire in 2 minutes, later ones in an hour.
                let expiry = SystemTime::now() + Duration::from_secs(if n == 0 { 120 } else { 3600 });
                aws_credential_types::provider::future::ProvideCredentials::ready(Ok(credentials(Some(expiry))))
            }
        }
        let calls = Arc::new(AtomicUsize::new(0));
        let auth =
            MskIamAuth::start(SharedCredentialsProvider::new(Counting(calls.clone())), "us-east-1").await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 1, "loaded once at start");
        let first = auth.token().unwrap();
        assert!(first.expires_at <= SystemTime::now() + Duration::from_secs(120), "bounded by the credentials");
        // The refresh ran on the runtime, not inside token().
        for _ in 0..100 {
            if !auth.is_refreshing() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(calls.load(Ordering::SeqCst), 2, "one background refresh");
        let second = auth.token().unwrap();
        assert!(second.expires_at > SystemTime::now() + Duration::from_secs(800), "fresh credentials in use");
        assert_eq!(calls.load(Ordering::SeqCst), 2, "no refresh while credentials are fresh");
    }

    #[tokio::test]
    async fn expired_credentials_give_an_error_not_a_token() {
        let expired = credentials(Some(SystemTime::now() + Duration::from_secs(5)));
        let provider = SharedCredentialsProvider::new(expired);
        let auth = MskIamAuth::start(provider, "us-east-1").await.unwrap();
        let error = auth.token().unwrap_err();
        assert_eq!(error.code, super::super::ErrorCode::EventSourceAuthnError);
        assert!(!error.sentence.contains("wJalrXUtnFEMI"), "{error}");
    }
}
