//! Bearer-token authentication. Tokens live in a file (a mounted Secret), one per line; the file
//! is looked at every two seconds off the request path and read again when it changed, so a
//! rotated Secret takes effect without a restart and a request never touches the disk.

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
    time::{Duration, SystemTime},
};
use subtle::{Choice, ConstantTimeEq};
use tokio::sync::watch;

/// Who may call the API.
#[derive(Clone)]
pub enum Auth {
    /// Everyone (local use; announced loudly at startup).
    Disabled,
    /// Holders of a token in the file.
    Tokens(Arc<TokenFile>),
}

impl Auth {
    /// Tokens from the file at `path`, watched for changes by a task spawned on the current
    /// runtime for as long as it runs.
    pub fn from_file(path: PathBuf) -> std::io::Result<Self> {
        let file = Arc::new(TokenFile::open(path)?);
        tokio::spawn(file.clone().watch());
        Ok(Auth::Tokens(file))
    }
}

/// How often the token file is looked at for a change (a rotated Secret).
pub const TOKEN_FILE_RECHECK: Duration = Duration::from_secs(2);

/// Accepted tokens: the SHA-256 digests of the file's tokens (the tokens themselves are not
/// kept), read again by [`TokenFile::watch`] when the file changes, so a request only reads
/// memory.
pub struct TokenFile {
    path: PathBuf,
    digests: RwLock<(Option<SystemTime>, Vec<[u8; 32]>)>,
    /// Bumped each time the tokens are read again.
    reloads: watch::Sender<u64>,
}

impl TokenFile {
    /// Reads the file once, failing if it cannot be read or holds no token.
    pub fn open(path: PathBuf) -> std::io::Result<Self> {
        let file = Self {
            path,
            digests: RwLock::new((None, Vec::new())),
            reloads: watch::channel(0).0,
        };
        file.reload()?;
        if file.digests.read().map_or(true, |d| d.1.is_empty()) {
            return Err(std::io::Error::other(format!(
                "{} holds no token",
                file.path.display()
            )));
        }
        Ok(file)
    }

    /// Reads the file again if its modification time changed (blocking file reads).
    fn reload(&self) -> std::io::Result<()> {
        let modified = std::fs::metadata(&self.path)?.modified().ok();
        if let Ok(held) = self.digests.read()
            && held.0.is_some()
            && held.0 == modified
        {
            return Ok(());
        }
        let text = std::fs::read_to_string(&self.path)?;
        let digests: HashSet<[u8; 32]> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(|token| Sha256::digest(token.as_bytes()).into())
            .collect();
        if let Ok(mut held) = self.digests.write() {
            *held = (modified, digests.into_iter().collect());
        }
        self.reloads.send_modify(|n| *n = n.wrapping_add(1));
        Ok(())
    }

    /// Looks at the file every [`TOKEN_FILE_RECHECK`] (on the blocking pool) and takes its
    /// tokens when it changed; a file that cannot be read keeps the tokens last read. Runs until
    /// dropped.
    pub async fn watch(self: Arc<Self>) {
        let mut ticks = tokio::time::interval(TOKEN_FILE_RECHECK);
        loop {
            ticks.tick().await;
            let file = self.clone();
            match tokio::task::spawn_blocking(move || file.reload()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(path = %self.path.display(), error = %e,
                    "the token file cannot be read; keeping the tokens read before"),
                Err(e) => tracing::warn!(error = %e, "the token file check stopped"),
            }
        }
    }

    /// Whether `candidate` is an accepted token. Every token is compared, each in constant
    /// time over its SHA-256 digest, so neither the match nor the length leaks through timing.
    pub fn accepts(&self, candidate: &str) -> bool {
        self.accepts_digest(&Sha256::digest(candidate.as_bytes()).into())
    }

    fn accepts_digest(&self, wanted: &[u8; 32]) -> bool {
        let Ok(held) = self.digests.read() else {
            return false;
        };
        held.1
            .iter()
            .fold(Choice::from(0), |found, digest| {
                found | digest.as_slice().ct_eq(wanted.as_slice())
            })
            .into()
    }
}

/// Who made a request: its token's digest, so a long request (an event stream) can end when
/// that token leaves the file. Put in the request's extensions by [`require_token`].
#[derive(Clone)]
pub struct Caller {
    digest: [u8; 32],
    file: Arc<TokenFile>,
}

impl Caller {
    /// The caller's client id: the first 16 hex digits of its token's SHA-256, the value of
    /// the [`CLIENT_LABEL`](super::quota::CLIENT_LABEL) of the jobs it creates.
    pub fn client_id(&self) -> String {
        self.digest[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// Resolves once the caller's token is no longer accepted (the file was rotated without
    /// it).
    pub async fn revoked(self) {
        let mut reloads = self.file.reloads.subscribe();
        while self.file.accepts_digest(&self.digest) {
            if reloads.changed().await.is_err() {
                // The file is gone with the facade: nothing will revoke the token any more.
                std::future::pending::<()>().await;
            }
        }
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
    mut request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    if let Auth::Tokens(file) = &auth {
        let header = request
            .headers()
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .ok_or(ApiError::Unauthenticated)?;
        let token = bearer_token(header).ok_or(ApiError::Unauthenticated)?;
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if !file.accepts_digest(&digest) {
            return Err(ApiError::Forbidden);
        }
        request.extensions_mut().insert(Caller {
            digest,
            file: file.clone(),
        });
    }
    Ok(next.run(request).await)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes `text` to the file at `path`, dated 5 s ahead so the change shows even within
    /// the file system's timestamp resolution.
    fn rewrite(path: &std::path::Path, text: &str) {
        std::fs::write(path, text).unwrap();
        std::fs::File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_modified(SystemTime::now() + Duration::from_secs(5))
            .unwrap();
    }

    #[test]
    fn tokens_are_reread_when_the_file_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        std::fs::write(&path, "# comment\nalpha\n\n").unwrap();
        let file = TokenFile::open(path.clone()).unwrap();
        assert!(file.accepts("alpha"));
        assert!(!file.accepts("beta"));
        assert!(!file.accepts("alph"));
        rewrite(&path, "beta\n");
        assert!(
            file.accepts("alpha"),
            "requests read memory only: nothing changes until..."
        );
        file.reload().unwrap();
        assert!(file.accepts("beta"));
        assert!(!file.accepts("alpha"));
    }

    #[tokio::test]
    async fn a_rotated_token_file_is_taken_by_the_watch_off_the_request_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        std::fs::write(&path, "alpha\n").unwrap();
        let Auth::Tokens(file) = Auth::from_file(path.clone()).unwrap() else {
            panic!("tokens expected");
        };
        rewrite(&path, "gamma\n");
        let deadline = tokio::time::Instant::now() + 4 * TOKEN_FILE_RECHECK;
        while !file.accepts("gamma") {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the rotation was not taken"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(!file.accepts("alpha"));
        // A file that vanishes keeps the tokens read before.
        std::fs::remove_file(&path).unwrap();
        assert!(file.reload().is_err());
        assert!(file.accepts("gamma"));
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
