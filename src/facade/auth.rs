//! Bearer-token authentication. Tokens live in a file (a mounted Secret), one per line; the file
//! is re-read when it changes, so a rotated Secret takes effect without a restart.

use super::error::ApiError;
use axum::{
    extract::{Request, State},
    http::header::AUTHORIZATION,
    middleware::Next,
    response::Response,
};
use sha2::{Digest, Sha256};
use std::{
    collections::HashSet,
    path::PathBuf,
    sync::{Arc, RwLock},
    time::SystemTime,
};
use subtle::{Choice, ConstantTimeEq};

/// Who may call the API.
#[derive(Clone)]
pub enum Auth {
    /// Everyone (local use; announced loudly at startup).
    Disabled,
    /// Holders of a token in the file.
    Tokens(Arc<TokenFile>),
}

/// Accepted tokens, cached by the file's modification time.
pub struct TokenFile {
    path: PathBuf,
    cache: RwLock<(Option<SystemTime>, HashSet<String>)>,
}

impl TokenFile {
    /// Reads the file once, failing if it cannot be read or holds no token.
    pub fn open(path: PathBuf) -> std::io::Result<Self> {
        let file = Self {
            path,
            cache: RwLock::new((None, HashSet::new())),
        };
        if file.tokens()?.is_empty() {
            return Err(std::io::Error::other(format!(
                "{} holds no token",
                file.path.display()
            )));
        }
        Ok(file)
    }

    fn tokens(&self) -> std::io::Result<HashSet<String>> {
        let modified = std::fs::metadata(&self.path)?.modified().ok();
        if let Ok(cache) = self.cache.read()
            && cache.0.is_some()
            && cache.0 == modified
        {
            return Ok(cache.1.clone());
        }
        let text = std::fs::read_to_string(&self.path)?;
        let tokens: HashSet<String> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(str::to_owned)
            .collect();
        if let Ok(mut cache) = self.cache.write() {
            *cache = (modified, tokens.clone());
        }
        Ok(tokens)
    }

    /// Whether `candidate` is an accepted token. Every token is compared, each in constant
    /// time over its SHA-256 digest, so neither the match nor the length leaks through timing.
    pub fn accepts(&self, candidate: &str) -> bool {
        let Ok(tokens) = self.tokens() else {
            return false;
        };
        let wanted = Sha256::digest(candidate.as_bytes());
        tokens
            .iter()
            .fold(Choice::from(0), |found, t| {
                found | Sha256::digest(t.as_bytes()).ct_eq(&wanted)
            })
            .into()
    }
}

/// The token of an `Authorization` header value: the `Bearer` scheme, in any case (RFC 9110
/// makes schemes case-insensitive), then the token.
fn bearer_token(header: &str) -> Option<&str> {
    let (scheme, token) = header.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Middleware: 401 without a bearer token, 403 with one that is not accepted.
pub async fn require_token(
    State(auth): State<Auth>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    if let Auth::Tokens(file) = &auth {
        let header = request
            .headers()
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .ok_or(ApiError::Unauthenticated)?;
        let token = bearer_token(header).ok_or(ApiError::Unauthenticated)?;
        if !file.accepts(token) {
            return Err(ApiError::Forbidden);
        }
    }
    Ok(next.run(request).await)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_reread_when_the_file_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        std::fs::write(&path, "# comment\nalpha\n\n").unwrap();
        let file = TokenFile::open(path.clone()).unwrap();
        assert!(file.accepts("alpha"));
        assert!(!file.accepts("beta"));
        assert!(!file.accepts("alph"));
        std::fs::write(&path, "beta\n").unwrap();
        let later = SystemTime::now() + std::time::Duration::from_secs(5);
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(later)
            .unwrap();
        assert!(file.accepts("beta"));
        assert!(!file.accepts("alpha"));
    }

    #[test]
    fn the_bearer_scheme_is_matched_in_any_case() {
        assert_eq!(bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(bearer_token("bearer abc"), Some("abc"));
        assert_eq!(bearer_token("BEARER  abc "), Some("abc"));
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token("Bearer"), None);
        assert_eq!(bearer_token("Bearer   "), None);
        assert_eq!(bearer_token("Bearerabc"), None);
    }

    #[test]
    fn a_prefix_or_an_extension_of_a_token_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        std::fs::write(&path, "alpha-0123456789\nbeta\n").unwrap();
        let file = TokenFile::open(path).unwrap();
        assert!(file.accepts("alpha-0123456789") && file.accepts("beta"));
        for wrong in ["alpha-012345678", "alpha-01234567890", "", "bet", "betaa"] {
            assert!(!file.accepts(wrong), "{wrong:?}");
        }
    }

    #[test]
    fn an_empty_token_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        std::fs::write(&path, "\n# nothing\n").unwrap();
        assert!(TokenFile::open(path).is_err());
    }
}
