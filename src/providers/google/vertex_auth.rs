//! OAuth2 access tokens for Vertex AI (reference §4.3-§4.5): credential files, the
//! Application Default Credentials lookup, token requests, caching and refresh.
//!
//! - `service_account` JSON → an RS256 JWT (`iss` = client_email, `scope` =
//!   cloud-platform, `aud` = the token URI, `iat`, `exp` = iat + 1 h, header `kid` =
//!   private_key_id) exchanged at the token URI with the JWT bearer grant (RFC 7523).
//!   Signing uses ring, the crypto library rustls already uses in this build.
//! - `authorized_user` JSON (what `gcloud auth application-default login` writes) →
//!   the refresh-token grant; a new refresh token in the answer replaces the old one.
//! - the metadata server (GCE, GKE, Cloud Run) → `GET .../service-accounts/default/token`
//!   with `Metadata-Flavor: Google`; `GCE_METADATA_HOST` moves it (tests, proxies).
//! - a fixed access token (`google_vertex_access_token`) is used as is, never refreshed.
//!
//! Tokens are cached per connection and refreshed five minutes before they expire.
//! Requests read the cache without locking; a refresh is single-flight: the first
//! request that finds the token stale takes the refresh lock and fetches, the others
//! wait on the lock and then use the token it stored. A stale-but-valid token is kept
//! if the refresh fails. After an upstream 401 the provider calls
//! [`TokenSource::invalidate`] with the token it used and retries once.
//!
//! No secret (private key, client secret, refresh or access token, signed
//! assertion) is ever put in a log line or an error message; types holding them have
//! no `Debug`. A token endpoint may echo what it was sent (the form body, with the
//! refresh token percent-encoded): so each source registers its credential's
//! secrets and the latest ones it obtained or signed as [`RuntimeSecrets`], which
//! every redactor removes in every encoding (raw, form/percent-encoded,
//! JSON-escaped), here in the WARN line and at the door for clients.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use http::HeaderValue;
use ring::rand::SystemRandom;
use ring::signature::{RsaKeyPair, RSA_PKCS1_SHA256};
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::providers::upstream_http::send_reqwest;
use crate::secrets::RuntimeSecrets;
use crate::streaming::unix_now;

pub const CLOUD_PLATFORM_SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";
pub const DEFAULT_TOKEN_URI: &str = "https://oauth2.googleapis.com/token";
pub const DEFAULT_METADATA_HOST: &str = "metadata.google.internal";
const JWT_BEARER_GRANT: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
/// Refresh this long before a token expires (google-auth uses 3 min 45 s).
const REFRESH_MARGIN: Duration = Duration::from_secs(300);
/// Lifetime of the signed assertion; Google accepts at most one hour.
const ASSERTION_LIFETIME_SECS: u64 = 3600;
/// Cap on how much of a token endpoint's answer is read into an error message.
const ERROR_TEXT_LIMIT: usize = 300;
/// How many obtained secrets (access tokens, assertions, rotated refresh tokens) a
/// source keeps registered for redaction besides its credential's own: an access
/// token lives an hour, so the last few are all that can still be in use.
const RECENT_SECRETS: usize = 6;

// ---------------------------------------------------------------------------------
// Credential files

/// A service-account key, ready to sign.
pub struct ServiceAccount {
    pub client_email: String,
    pub private_key_id: Option<String>,
    key: RsaKeyPair,
    /// The key as the file holds it, only to be redacted should it ever be echoed.
    private_key_pem: String,
    pub token_uri: String,
    pub project_id: Option<String>,
}

/// gcloud user credentials (a refresh token).
pub struct AuthorizedUser {
    client_id: String,
    client_secret: String,
    /// Replaced when the token endpoint hands out a new one.
    refresh_token: std::sync::Mutex<String>,
    pub token_uri: String,
    pub quota_project_id: Option<String>,
}

/// A parsed credentials JSON file.
pub enum CredentialsFile {
    // Boxed: the parsed RSA key makes this variant several times larger.
    ServiceAccount(Box<ServiceAccount>),
    AuthorizedUser(AuthorizedUser),
}

impl CredentialsFile {
    /// Read and parse a credentials file. Errors name the problem, never the content.
    pub fn load(path: &Path) -> Result<CredentialsFile, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read credentials file '{}': {e}", path.display()))?;
        CredentialsFile::parse(&text)
            .map_err(|problem| format!("credentials file '{}': {problem}", path.display()))
    }

    pub fn parse(text: &str) -> Result<CredentialsFile, String> {
        let value: Value = serde_json::from_str(text)
            .map_err(|e| format!("not valid JSON (line {}, column {})", e.line(), e.column()))?;
        let field = |name: &str| -> Option<String> {
            value
                .get(name)
                .and_then(Value::as_str)
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
        };
        let required = |name: &str| field(name).ok_or_else(|| format!("`{name}` is missing"));
        match value.get("type").and_then(Value::as_str) {
            Some("service_account") => {
                let pem = value
                    .get("private_key")
                    .and_then(Value::as_str)
                    .ok_or("`private_key` is missing")?;
                Ok(CredentialsFile::ServiceAccount(Box::new(ServiceAccount {
                    client_email: required("client_email")?,
                    private_key_id: field("private_key_id"),
                    key: rsa_key_from_pem(pem)?,
                    private_key_pem: pem.to_owned(),
                    token_uri: field("token_uri").unwrap_or_else(|| DEFAULT_TOKEN_URI.into()),
                    project_id: field("project_id"),
                })))
            }
            Some("authorized_user") => Ok(CredentialsFile::AuthorizedUser(AuthorizedUser {
                client_id: required("client_id")?,
                client_secret: required("client_secret")?,
                refresh_token: std::sync::Mutex::new(required("refresh_token")?),
                token_uri: field("token_uri").unwrap_or_else(|| DEFAULT_TOKEN_URI.into()),
                quota_project_id: field("quota_project_id"),
            })),
            Some(other) => Err(format!(
                "credentials of type '{other}' are not supported (supported: service_account, authorized_user)"
            )),
            None => Err("`type` is missing (expected service_account or authorized_user)".into()),
        }
    }

    /// The project the file names: a service account's `project_id`, or a user's
    /// `quota_project_id`.
    pub fn project_id(&self) -> Option<&str> {
        match self {
            CredentialsFile::ServiceAccount(sa) => sa.project_id.as_deref(),
            CredentialsFile::AuthorizedUser(user) => user.quota_project_id.as_deref(),
        }
    }

    /// The quota project to bill user credentials to (`x-goog-user-project`).
    pub fn quota_project(&self) -> Option<&str> {
        match self {
            CredentialsFile::ServiceAccount(_) => None,
            CredentialsFile::AuthorizedUser(user) => user.quota_project_id.as_deref(),
        }
    }
}

/// An RSA private key from PEM: PKCS#8 (`BEGIN PRIVATE KEY`, what Google issues) or
/// PKCS#1 (`BEGIN RSA PRIVATE KEY`).
fn rsa_key_from_pem(pem: &str) -> Result<RsaKeyPair, String> {
    let (label, der) = pem_block(pem).ok_or("`private_key` is not a PEM block")?;
    let parsed = match label.as_str() {
        "PRIVATE KEY" => RsaKeyPair::from_pkcs8(&der),
        "RSA PRIVATE KEY" => RsaKeyPair::from_der(&der),
        other => {
            return Err(format!(
                "`private_key` is a '{other}' PEM block, not an RSA private key"
            ))
        }
    };
    parsed.map_err(|e| format!("`private_key` is not a usable RSA key ({e})"))
}

/// The label and decoded body of the first PEM block.
fn pem_block(pem: &str) -> Option<(String, Vec<u8>)> {
    let after_begin = &pem[pem.find("-----BEGIN ")? + "-----BEGIN ".len()..];
    let label_end = after_begin.find("-----")?;
    let label = after_begin[..label_end].to_owned();
    let body_and_rest = &after_begin[label_end + 5..];
    let end_marker = format!("-----END {label}-----");
    let body = &body_and_rest[..body_and_rest.find(&end_marker)?];
    let compact: String = body.chars().filter(|c| !c.is_whitespace()).collect();
    let der = STANDARD.decode(compact).ok()?;
    Some((label, der))
}

impl ServiceAccount {
    /// The signed JWT for the bearer grant, for `audience` (the token URI posted to).
    pub fn assertion(&self, audience: &str, now: u64) -> Result<String, String> {
        let mut header = json!({"alg": "RS256", "typ": "JWT"});
        if let Some(kid) = &self.private_key_id {
            header["kid"] = Value::String(kid.clone());
        }
        let claims = json!({
            "iss": self.client_email,
            "scope": CLOUD_PLATFORM_SCOPE,
            "aud": audience,
            "iat": now,
            "exp": now + ASSERTION_LIFETIME_SECS,
        });
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let mut signature = vec![0u8; self.key.public().modulus_len()];
        self.key
            .sign(
                &RSA_PKCS1_SHA256,
                &SystemRandom::new(),
                signing_input.as_bytes(),
                &mut signature,
            )
            .map_err(|_| "signing the token request failed".to_owned())?;
        Ok(format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(signature)
        ))
    }
}

// ---------------------------------------------------------------------------------
// Application Default Credentials

/// Where Application Default Credentials come from.
#[derive(Debug, Clone, PartialEq)]
pub enum AdcSource {
    /// A credentials file, and how it was found (for messages).
    File {
        path: PathBuf,
        found_by: &'static str,
    },
    /// The metadata server at this host.
    Metadata { host: String },
}

/// The ADC lookup order of google-auth: `GOOGLE_APPLICATION_CREDENTIALS`, then the
/// gcloud file (`$CLOUDSDK_CONFIG/application_default_credentials.json`, else
/// `~/.config/gcloud/...`, `%APPDATA%\gcloud\...` on Windows), then the metadata
/// server (`GCE_METADATA_HOST` or metadata.google.internal). `env` and `exists` are
/// parameters so the order can be tested without touching the process.
pub fn find_adc(env: &dyn Fn(&str) -> Option<String>, exists: &dyn Fn(&Path) -> bool) -> AdcSource {
    let var = |name: &str| env(name).filter(|v| !v.trim().is_empty());
    if let Some(path) = var("GOOGLE_APPLICATION_CREDENTIALS") {
        return AdcSource::File {
            path: PathBuf::from(path),
            found_by: "GOOGLE_APPLICATION_CREDENTIALS",
        };
    }
    let gcloud_dir = var("CLOUDSDK_CONFIG").map(PathBuf::from).or_else(|| {
        if cfg!(windows) {
            var("APPDATA").map(|d| PathBuf::from(d).join("gcloud"))
        } else {
            var("HOME").map(|h| PathBuf::from(h).join(".config").join("gcloud"))
        }
    });
    if let Some(file) = gcloud_dir.map(|d| d.join("application_default_credentials.json")) {
        if exists(&file) {
            return AdcSource::File {
                path: file,
                found_by: "the gcloud application-default credentials file",
            };
        }
    }
    AdcSource::Metadata {
        host: var("GCE_METADATA_HOST").unwrap_or_else(|| DEFAULT_METADATA_HOST.into()),
    }
}

fn metadata_url(host: &str, path: &str) -> String {
    format!("http://{host}/computeMetadata/v1/{path}")
}

/// The project id the metadata server reports.
pub async fn metadata_project_id(
    client: &reqwest::Client,
    host: &str,
    timeout: Duration,
) -> Result<String, ApiError> {
    let request = client
        .get(metadata_url(host, "project/project-id"))
        .header("Metadata-Flavor", "Google");
    let failure = |what: String| {
        let detail =
            format!("cannot get the project id from the metadata server at {host}: {what}");
        tracing::warn!("{detail}");
        ApiError::upstream_failure(detail)
    };
    let response = send_reqwest(request, timeout)
        .await
        .map_err(|e| failure(e.to_string()))?;
    let status = response.status();
    let text = crate::upstream::reqwest_bytes(response, crate::upstream::SMALL_ANSWER_LIMIT)
        .await
        .map_err(|e| failure(e.to_string()))?;
    let text = String::from_utf8_lossy(&text);
    let project = text.trim();
    if !status.is_success() || project.is_empty() {
        return Err(failure(format!("answered {status}")));
    }
    Ok(project.to_owned())
}

// ---------------------------------------------------------------------------------
// Token source

/// How a connection gets its tokens.
pub enum Credential {
    /// A fixed token (`google_vertex_access_token`); never refreshed.
    Static(HeaderValue),
    ServiceAccount(Box<ServiceAccount>),
    AuthorizedUser(AuthorizedUser),
    /// The metadata server at this host.
    Metadata {
        host: String,
    },
}

impl Credential {
    pub fn from_file(file: CredentialsFile) -> Credential {
        match file {
            CredentialsFile::ServiceAccount(sa) => Credential::ServiceAccount(sa),
            CredentialsFile::AuthorizedUser(user) => Credential::AuthorizedUser(user),
        }
    }

    /// The secrets this credential holds, to be redacted wherever they show up.
    fn secrets(&self) -> Vec<String> {
        match self {
            Credential::Static(value) => {
                let text = String::from_utf8_lossy(value.as_bytes()).into_owned();
                let token = text.strip_prefix("Bearer ").unwrap_or(&text).to_owned();
                vec![token, text]
            }
            Credential::ServiceAccount(sa) => vec![sa.private_key_pem.clone()],
            Credential::AuthorizedUser(user) => vec![
                user.client_secret.clone(),
                lock(&user.refresh_token).clone(),
            ],
            Credential::Metadata { .. } => Vec::new(),
        }
    }

    /// A fixed bearer token.
    pub fn fixed(token: &str) -> Result<Credential, String> {
        let mut value = HeaderValue::from_str(&format!("Bearer {}", token.trim()))
            .map_err(|_| "the access token contains characters not allowed in a header")?;
        value.set_sensitive(true);
        Ok(Credential::Static(value))
    }
}

struct Token {
    /// `Bearer <token>`, marked sensitive.
    bearer: HeaderValue,
    refresh_at: Instant,
    expires_at: Instant,
}

/// Access tokens for one connection: cached, refreshed early, single-flight.
pub struct TokenSource {
    connection: String,
    credential: Credential,
    /// `token_uri` from the connection settings, replacing the file's.
    token_uri_override: Option<String>,
    client: reqwest::Client,
    timeout: Duration,
    current: ArcSwapOption<Token>,
    refresh: tokio::sync::Mutex<()>,
    /// Registered for redaction: the credential's secrets, then the latest ones
    /// obtained or signed.
    redacted: RuntimeSecrets,
    fixed_secrets: Vec<String>,
    recent_secrets: std::sync::Mutex<std::collections::VecDeque<String>>,
}

impl TokenSource {
    pub fn new(
        connection: &str,
        credential: Credential,
        token_uri_override: Option<String>,
        client: reqwest::Client,
        timeout: Duration,
    ) -> TokenSource {
        let fixed_secrets = credential.secrets();
        TokenSource {
            connection: connection.to_owned(),
            redacted: RuntimeSecrets::new(fixed_secrets.clone()),
            fixed_secrets,
            recent_secrets: std::sync::Mutex::new(std::collections::VecDeque::new()),
            credential,
            token_uri_override,
            client,
            timeout,
            current: ArcSwapOption::empty(),
            refresh: tokio::sync::Mutex::new(()),
        }
    }

    /// Whether a 401 can be helped by fetching a new token.
    pub fn can_refresh(&self) -> bool {
        !matches!(self.credential, Credential::Static(_))
    }

    /// The `Authorization` value to send now.
    pub async fn bearer(&self) -> Result<HeaderValue, ApiError> {
        if let Credential::Static(value) = &self.credential {
            return Ok(value.clone());
        }
        if let Some(token) = self.current.load_full() {
            if Instant::now() < token.refresh_at {
                return Ok(token.bearer.clone());
            }
        }
        // Single flight: whoever holds the lock fetches; the others wait here and then
        // find the fresh token below.
        let _guard = self.refresh.lock().await;
        let cached = self.current.load_full();
        if let Some(token) = &cached {
            if Instant::now() < token.refresh_at {
                return Ok(token.bearer.clone());
            }
        }
        match self.fetch().await {
            Ok(token) => {
                let bearer = token.bearer.clone();
                self.current.store(Some(Arc::new(token)));
                Ok(bearer)
            }
            Err(error) => match cached {
                // The early refresh failed but the old token has not expired: use it.
                Some(token) if Instant::now() < token.expires_at => {
                    tracing::warn!(
                        "connection '{}': token refresh failed, using the current token until it expires: {error}",
                        self.connection
                    );
                    Ok(token.bearer.clone())
                }
                _ => Err(error),
            },
        }
    }

    /// Forget `used` (after the upstream refused it) so the next [`bearer`] fetches a
    /// new token. A token that another request already replaced is left alone.
    ///
    /// [`bearer`]: TokenSource::bearer
    pub fn invalidate(&self, used: &HeaderValue) {
        let current = self.current.load();
        if current.as_ref().is_some_and(|t| t.bearer == *used) {
            self.current.compare_and_swap(&*current, None);
        }
    }

    /// Register a secret obtained or about to be sent (an access token, a signed
    /// assertion, the current refresh token) for redaction, as the most recent one.
    fn remember(&self, secret: &str) {
        let mut recent = lock(&self.recent_secrets);
        if recent.back().is_some_and(|s| s == secret) {
            return;
        }
        recent.retain(|s| s != secret);
        recent.push_back(secret.to_owned());
        while recent.len() > RECENT_SECRETS {
            recent.pop_front();
        }
        self.redacted.set(
            self.fixed_secrets
                .iter()
                .chain(recent.iter())
                .cloned()
                .collect(),
        );
    }

    fn token_uri<'a>(&'a self, from_file: &'a str) -> &'a str {
        self.token_uri_override.as_deref().unwrap_or(from_file)
    }

    async fn fetch(&self) -> Result<Token, ApiError> {
        let (request, what) = match &self.credential {
            // Never asked: `bearer` answers fixed tokens directly.
            Credential::Static(_) => {
                return Err(ApiError::internal("a fixed token cannot be refreshed"))
            }
            Credential::ServiceAccount(sa) => {
                let uri = self.token_uri(&sa.token_uri);
                let assertion = sa
                    .assertion(uri, unix_now())
                    .map_err(|problem| self.failure(&problem))?;
                // Registered before it is sent: an endpoint may echo it.
                self.remember(&assertion);
                let form = form_urlencoded::Serializer::new(String::new())
                    .append_pair("grant_type", JWT_BEARER_GRANT)
                    .append_pair("assertion", &assertion)
                    .finish();
                (self.form_post(uri, form), "the token endpoint")
            }
            Credential::AuthorizedUser(user) => {
                let uri = self.token_uri(&user.token_uri);
                let refresh_token = lock(&user.refresh_token).clone();
                self.remember(&refresh_token);
                let form = form_urlencoded::Serializer::new(String::new())
                    .append_pair("grant_type", "refresh_token")
                    .append_pair("client_id", &user.client_id)
                    .append_pair("client_secret", &user.client_secret)
                    .append_pair("refresh_token", &refresh_token)
                    .finish();
                (self.form_post(uri, form), "the token endpoint")
            }
            Credential::Metadata { host } => (
                self.client
                    .get(metadata_url(
                        host,
                        "instance/service-accounts/default/token",
                    ))
                    .header("Metadata-Flavor", "Google"),
                "the metadata server",
            ),
        };

        let response = send_reqwest(request, self.timeout)
            .await
            .map_err(|e| self.failure(&format!("{what} cannot be reached: {e}")))?;
        let status = response.status();
        let read = crate::upstream::reqwest_bytes(response, crate::upstream::SMALL_ANSWER_LIMIT);
        let body = tokio::time::timeout(self.timeout, read)
            .await
            .map_err(|_| self.failure(&format!("{what} did not answer in time")))?
            .map_err(|e| self.failure(&format!("reading the answer of {what}: {e}")))?;
        let value: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        if !status.is_success() {
            return Err(self.failure(&format!(
                "{what} answered {status}: {}",
                token_error_text(&value, &body)
            )));
        }
        let access_token = value
            .get("access_token")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| self.failure(&format!("{what} answered without an access_token")))?;
        self.remember(access_token);
        let mut bearer =
            HeaderValue::from_str(&format!("Bearer {access_token}")).map_err(|_| {
                self.failure(&format!(
                    "{what} sent an access token that is not a valid header value"
                ))
            })?;
        bearer.set_sensitive(true);
        // Google sends a number; accept a numeric string too. Default: one hour.
        let lifetime = value
            .get("expires_in")
            .and_then(|v| v.as_u64().or_else(|| v.as_str()?.trim().parse().ok()))
            .unwrap_or(3600);
        if let (Credential::AuthorizedUser(user), Some(new)) = (
            &self.credential,
            value.get("refresh_token").and_then(Value::as_str),
        ) {
            if !new.is_empty() {
                self.remember(new);
                *lock(&user.refresh_token) = new.to_owned();
            }
        }
        tracing::debug!(
            "connection '{}': got a Google access token from {what} (expires in {lifetime} s)",
            self.connection
        );
        let now = Instant::now();
        let expires_at = now + Duration::from_secs(lifetime);
        Ok(Token {
            bearer,
            refresh_at: expires_at
                .checked_sub(REFRESH_MARGIN)
                .unwrap_or(now)
                .max(now),
            expires_at,
        })
    }

    fn form_post(&self, uri: &str, form: String) -> reqwest::RequestBuilder {
        self.client
            .post(uri)
            .header(
                http::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .body(form)
    }

    /// A token failure: logged (it is a configuration problem the operator must see)
    /// and answered 502; the detail reaches clients only in debug mode. Any
    /// credential the endpoint echoed is redacted first (the gateway's redactor
    /// does it again at the door).
    fn failure(&self, problem: &str) -> ApiError {
        let detail = format!(
            "connection '{}': cannot get a Google access token: {problem}",
            self.connection
        );
        let detail = RuntimeSecrets::redact(&detail).into_owned();
        tracing::warn!("{detail}");
        ApiError::upstream_failure(detail)
    }
}

/// A poisoned lock only means another request panicked mid-update of a string; the
/// value is still a whole string, so keep using it.
fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// `error: error_description` of an OAuth error answer (neither carries secrets), or
/// the start of the body.
fn token_error_text(value: &Value, body: &[u8]) -> String {
    let text = |k: &str| value.get(k).and_then(Value::as_str);
    let message = match (text("error"), text("error_description")) {
        (Some(e), Some(d)) => format!("{e}: {d}"),
        (Some(e), None) => e.to_owned(),
        (None, Some(d)) => d.to_owned(),
        (None, None) => match value.get("error") {
            // Google API-style `{"error": {"message": ...}}`.
            Some(inner) => inner
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned(),
            None => String::from_utf8_lossy(body).trim().to_owned(),
        },
    };
    // Redacted before it is cut: a secret cut in two would not be recognised.
    let message = RuntimeSecrets::redact(&message).replace(['\n', '\r'], " ");
    let message = crate::secrets::truncate_text(&message, ERROR_TEXT_LIMIT);
    if message.is_empty() {
        "(no details)".into()
    } else {
        message
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k: &str| map.get(k).cloned()
    }

    #[test]
    fn adc_lookup_order() {
        let all = env_of(&[
            ("GOOGLE_APPLICATION_CREDENTIALS", "/etc/sa.json"),
            ("CLOUDSDK_CONFIG", "/cfg"),
            ("HOME", "/home/u"),
            ("GCE_METADATA_HOST", "127.0.0.1:9"),
        ]);
        assert_eq!(
            find_adc(&all, &|_| true),
            AdcSource::File {
                path: "/etc/sa.json".into(),
                found_by: "GOOGLE_APPLICATION_CREDENTIALS"
            }
        );
        let gcloud = env_of(&[("CLOUDSDK_CONFIG", "/cfg"), ("HOME", "/home/u")]);
        let found = find_adc(&gcloud, &|p| {
            p == Path::new("/cfg/application_default_credentials.json")
        });
        assert!(
            matches!(found, AdcSource::File { path, .. } if path == Path::new("/cfg/application_default_credentials.json"))
        );
        if !cfg!(windows) {
            let home = env_of(&[("HOME", "/home/u")]);
            let found = find_adc(&home, &|_| true);
            assert!(matches!(found, AdcSource::File { path, .. }
                if path == Path::new("/home/u/.config/gcloud/application_default_credentials.json")));
        }
        assert_eq!(
            find_adc(&gcloud, &|_| false),
            AdcSource::Metadata {
                host: DEFAULT_METADATA_HOST.into()
            }
        );
        let moved = env_of(&[
            ("GCE_METADATA_HOST", "127.0.0.1:9"),
            ("GOOGLE_APPLICATION_CREDENTIALS", " "),
        ]);
        assert_eq!(
            find_adc(&moved, &|_| false),
            AdcSource::Metadata {
                host: "127.0.0.1:9".into()
            }
        );
    }

    #[test]
    fn credential_files_parse_without_leaking() {
        let user = CredentialsFile::parse(
            r#"{"type": "authorized_user", "client_id": "id", "client_secret": "s3cret", "refresh_token": "1//r", "quota_project_id": "qp"}"#,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(user.project_id(), Some("qp"));
        assert_eq!(user.quota_project(), Some("qp"));
        let missing = CredentialsFile::parse(r#"{"type": "authorized_user", "client_id": "id"}"#);
        assert!(missing.err().unwrap().contains("client_secret"));
        let external = CredentialsFile::parse(r#"{"type": "external_account"}"#);
        assert!(external.err().unwrap().contains("external_account"));
        let bad_key = CredentialsFile::parse(
            r#"{"type": "service_account", "client_email": "a@b", "private_key": "-----BEGIN PRIVATE KEY-----\nAAAA-secret-AAAA\n-----END PRIVATE KEY-----\n"}"#,
        );
        let problem = bad_key.err().unwrap();
        assert!(problem.contains("private_key"), "{problem}");
        assert!(!problem.contains("secret"), "{problem}");
        let not_json = CredentialsFile::parse("{\"private_key\": \"abc");
        assert!(!not_json.err().unwrap().contains("abc"));
    }

    #[test]
    fn token_errors_are_short_and_single_line() {
        let v = json!({"error": "invalid_grant", "error_description": "Invalid JWT Signature."});
        assert_eq!(
            token_error_text(&v, b""),
            "invalid_grant: Invalid JWT Signature."
        );
        let long = "x\n".repeat(400);
        let text = token_error_text(&Value::Null, long.as_bytes());
        assert!(text.len() <= ERROR_TEXT_LIMIT + 3 && !text.contains('\n'));
    }
}
