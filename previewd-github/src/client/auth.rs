//! Authentication: a static token, or a GitHub App (RS256 JWT → installation tokens).
//!
//! The App's JWT is signed with the app's PEM private key, `iat` 60 s in the past (clock
//! drift) and `exp` 9 minutes ahead (GitHub allows at most 10). An App may be installed
//! many times (organisations, accounts); each installation has its own tokens. They last
//! an hour; one per installation is cached and refreshed when less than five minutes
//! remain, or after a 401. An async mutex per installation makes concurrent callers
//! share one refresh, and a slow refresh of one installation never holds up another.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use super::error::GitHubError;

/// Refresh an installation token when less than this much of its life is left.
pub const TOKEN_REFRESH_MARGIN: Duration = Duration::from_secs(5 * 60);

/// Credentials of a GitHub App.
#[derive(Clone)]
pub struct AppCredentials {
    /// App id (the JWT issuer).
    pub app_id: u64,
    /// Default installation: used for a repository GitHub names no installation of the
    /// App for, and for requests that name no repository. `None`: each repository's
    /// installation comes from its deliveries (`installation.id`) or from GitHub
    /// (`GET /repos/{owner}/{repo}/installation`), so one client serves every
    /// installation of the App.
    pub installation_id: Option<u64>,
    /// PEM-encoded RSA private key of the app.
    pub private_key_pem: SecretString,
    /// The app's slug; its comments are authored by `<slug>[bot]`. Looked up with
    /// `GET /app` when not given.
    pub app_slug: Option<String>,
}

impl std::fmt::Debug for AppCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppCredentials")
            .field("app_id", &self.app_id)
            .field("installation_id", &self.installation_id)
            .field("app_slug", &self.app_slug)
            .finish_non_exhaustive()
    }
}

/// How the client authenticates.
#[derive(Clone)]
pub enum GitHubAuth {
    /// A personal access token or other static token.
    Token(SecretString),
    /// A GitHub App installation.
    App(AppCredentials),
}

impl std::fmt::Debug for GitHubAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GitHubAuth::Token(_) => f.write_str("Token(redacted)"),
            GitHubAuth::App(app) => f.debug_tuple("App").field(app).finish(),
        }
    }
}

#[derive(Serialize)]
struct Claims {
    iat: i64,
    exp: i64,
    iss: String,
}

/// A GitHub App JWT for `app_id`, valid from 60 s ago for 10 minutes.
pub fn app_jwt(app_id: u64, key: &EncodingKey, now: Timestamp) -> Result<String, GitHubError> {
    let now = now.as_second();
    let claims = Claims {
        iat: now - 60,
        exp: now + 9 * 60,
        iss: app_id.to_string(),
    };
    jsonwebtoken::encode(&Header::new(Algorithm::RS256), &claims, key)
        .map_err(|e| GitHubError::Config(format!("could not sign the app JWT: {e}")))
}

/// A cached installation token.
#[derive(Clone)]
pub(crate) struct InstallationToken {
    pub(crate) token: SecretString,
    pub(crate) expires_at: Timestamp,
}

#[derive(Deserialize)]
pub(crate) struct AccessTokenResponse {
    pub(crate) token: String,
    pub(crate) expires_at: Timestamp,
}

/// The cached token of one installation; its mutex is held while it is refreshed.
pub(crate) type TokenSlot = Arc<Mutex<Option<InstallationToken>>>;

/// Authentication state held by the client.
pub(crate) enum AuthState {
    Token(SecretString),
    App {
        credentials: AppCredentials,
        key: Box<EncodingKey>,
        /// Token slots by installation id.
        tokens: std::sync::Mutex<HashMap<u64, TokenSlot>>,
    },
}

impl AuthState {
    pub(crate) fn new(auth: GitHubAuth) -> Result<Self, GitHubError> {
        match auth {
            GitHubAuth::Token(token) => Ok(AuthState::Token(token)),
            GitHubAuth::App(credentials) => {
                let key = EncodingKey::from_rsa_pem(
                    credentials.private_key_pem.expose_secret().as_bytes(),
                )
                .map_err(|e| GitHubError::Config(format!("invalid app private key: {e}")))?;
                Ok(AuthState::App {
                    credentials,
                    key: Box::new(key),
                    tokens: std::sync::Mutex::new(HashMap::new()),
                })
            }
        }
    }

    /// The token slot of `installation` (created empty on first use).
    pub(crate) fn token_slot(&self, installation: u64) -> Option<TokenSlot> {
        match self {
            AuthState::Token(_) => None,
            AuthState::App { tokens, .. } => Some(
                tokens
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .entry(installation)
                    .or_default()
                    .clone(),
            ),
        }
    }
}
