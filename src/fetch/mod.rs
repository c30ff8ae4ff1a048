//! Fetching a job's image from its URL, which a user chose and so is untrusted: http(s) only;
//! every address the name resolves to is checked ([`address`]) and the connection goes to the
//! checked addresses (the check is the client's resolver: no second lookup); redirects are
//! checked the same way; the body is bounded in size (while it streams) and time; the content
//! must sniff as an image and its pixel count is bounded before anything decodes it.

pub mod address;
mod sniff;

pub use address::{AddressPolicy, Cidr, Restricted};
pub use sniff::{ImageFormat, decode_rgb, sniff};

use reqwest::{
    dns::{Addrs, Name, Resolve, Resolving},
    redirect,
};
use std::{net::IpAddr, sync::Arc, time::Duration};
use url::Url;

/// Most redirects followed.
const MAX_REDIRECTS: usize = 5;

/// Why an image could not be fetched. [`FetchError::is_retryable`] tells the transient ones.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum FetchError {
    /// Not an http(s) URL.
    #[error("image URL is not http(s): {0}")]
    Scheme(String),
    /// The URL (or a redirect) leads to an address that is not on the public internet.
    #[error("image URL resolves to a {kind} address ({ip})")]
    Refused {
        /// What kind of address.
        kind: Restricted,
        /// The address.
        ip: IpAddr,
    },
    /// The host name does not resolve.
    #[error("image URL host {0} does not resolve")]
    Unresolvable(String),
    /// More than [`MAX_REDIRECTS`] redirects.
    #[error("image URL redirects more than {MAX_REDIRECTS} times")]
    TooManyRedirects,
    /// The body is larger than the limit.
    #[error("image larger than {} MiB", .0 / (1024 * 1024))]
    TooLarge(u64),
    /// The content is not an image of a known format.
    #[error("not an image (JPEG, PNG, WebP or GIF expected)")]
    NotAnImage,
    /// The image has more pixels than the limit (a decompression bomb, or just too large).
    #[error("image of {width}x{height} pixels exceeds the limit of {limit} pixels")]
    TooManyPixels {
        /// Width.
        width: u32,
        /// Height.
        height: u32,
        /// The limit.
        limit: u64,
    },
    /// The server answered with an error status.
    #[error("image URL answered HTTP {0}")]
    Status(u16),
    /// No complete answer within the time limit.
    #[error("image URL did not answer within {0:?}")]
    Timeout(Duration),
    /// The connection failed (refused, reset...).
    #[error("image URL could not be fetched: {0}")]
    Transport(String),
}

impl FetchError {
    /// Whether the same fetch may succeed later: timeouts, broken connections and 5xx/429
    /// answers. Every refusal is final.
    pub fn is_retryable(&self) -> bool {
        match self {
            FetchError::Timeout(_) | FetchError::Transport(_) => true,
            FetchError::Status(code) => *code >= 500 || *code == 429,
            _ => false,
        }
    }
}

/// Limits of one fetch.
#[derive(Clone, Debug)]
pub struct FetchLimits {
    /// Most bytes read.
    pub max_bytes: u64,
    /// Most time for the whole fetch, connection to last byte.
    pub timeout: Duration,
    /// Most pixels (width times height) of the image.
    pub max_pixels: u64,
}

impl Default for FetchLimits {
    fn default() -> Self {
        Self {
            max_bytes: 20 * 1024 * 1024,
            timeout: Duration::from_secs(30),
            max_pixels: 40_000_000,
        }
    }
}

/// A fetched image: its bytes, sniffed format and size.
#[derive(Debug)]
pub struct FetchedImage {
    /// The encoded bytes.
    pub bytes: Vec<u8>,
    /// The format the content sniffed as.
    pub format: ImageFormat,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
}

/// Fetches images under an address policy and limits.
#[derive(Clone)]
pub struct ImageFetcher {
    http: reqwest::Client,
    policy: Arc<AddressPolicy>,
    limits: FetchLimits,
}

/// The client's resolver: a name's addresses, all checked; refused when any is restricted
/// (a name that mixes public and private addresses is not trusted with either).
struct CheckedResolver(Arc<AddressPolicy>);

impl Resolve for CheckedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.0.clone();
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let addrs: Vec<_> = tokio::net::lookup_host((host.as_str(), 0))
                .await
                .map_err(|_| FetchError::Unresolvable(host.clone()))?
                .collect();
            if addrs.is_empty() {
                return Err(FetchError::Unresolvable(host).into());
            }
            if let Some((kind, ip)) = addrs
                .iter()
                .find_map(|a| policy.refusal(a.ip()).map(|k| (k, a.ip())))
            {
                return Err(FetchError::Refused { kind, ip }.into());
            }
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

/// Checks what can be checked of a URL before connecting: the scheme and a literal address
/// (a literal is never resolved, so the resolver does not see it).
fn check_url(url: &Url, policy: &AddressPolicy) -> Result<(), FetchError> {
    if !matches!(url.scheme(), "http" | "https") {
        return Err(FetchError::Scheme(url.scheme().to_owned()));
    }
    let ip = match url.host() {
        Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip),
        Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip),
        Some(url::Host::Domain(_)) => return Ok(()),
        None => return Err(FetchError::Scheme(url.scheme().to_owned())),
    };
    match policy.refusal(ip) {
        Some(kind) => Err(FetchError::Refused { kind, ip }),
        None => Ok(()),
    }
}

/// Our error inside a reqwest error's chain of sources, if it is there.
fn ours(error: &reqwest::Error) -> Option<FetchError> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if let Some(fetch) = e.downcast_ref::<FetchError>() {
            return Some(fetch.clone());
        }
        source = e.source();
    }
    None
}

impl ImageFetcher {
    /// A fetcher refusing what `policy` refuses, within `limits`.
    pub fn new(policy: AddressPolicy, limits: FetchLimits) -> Result<Self, FetchError> {
        let policy = Arc::new(policy);
        let for_redirects = policy.clone();
        let redirects = redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() >= MAX_REDIRECTS {
                return attempt.error(FetchError::TooManyRedirects);
            }
            match check_url(attempt.url(), &for_redirects) {
                Ok(()) => attempt.follow(),
                Err(e) => attempt.error(e),
            }
        });
        let http = reqwest::Client::builder()
            .no_proxy()
            .dns_resolver(Arc::new(CheckedResolver(policy.clone())))
            .redirect(redirects)
            .timeout(limits.timeout)
            .user_agent(concat!("imagejob-operator/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| FetchError::Transport(e.to_string()))?;
        Ok(Self {
            http,
            policy,
            limits,
        })
    }

    /// The limits this fetcher applies.
    pub fn limits(&self) -> &FetchLimits {
        &self.limits
    }

    /// Fetches `url` and checks that it is an image within the limits.
    pub async fn fetch(&self, url: &str) -> Result<FetchedImage, FetchError> {
        let url = Url::parse(url).map_err(|_| FetchError::Scheme("(unparsable URL)".into()))?;
        check_url(&url, &self.policy)?;
        let timeout = self.limits.timeout;
        let failed = |e: reqwest::Error| {
            ours(&e).unwrap_or_else(|| {
                if e.is_timeout() {
                    FetchError::Timeout(timeout)
                } else {
                    FetchError::Transport(without_url(&e))
                }
            })
        };
        let mut response = self.http.get(url).send().await.map_err(failed)?;
        let status = response.status();
        if !status.is_success() {
            return Err(FetchError::Status(status.as_u16()));
        }
        let max = self.limits.max_bytes;
        if response.content_length().is_some_and(|n| n > max) {
            return Err(FetchError::TooLarge(max));
        }
        let mut bytes = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(failed)? {
            if bytes.len() as u64 + chunk.len() as u64 > max {
                return Err(FetchError::TooLarge(max));
            }
            bytes.extend_from_slice(&chunk);
        }
        let format = sniff(&bytes).ok_or(FetchError::NotAnImage)?;
        let (width, height) = sniff::dimensions(&bytes, format).ok_or(FetchError::NotAnImage)?;
        let pixels = u64::from(width) * u64::from(height);
        if pixels > self.limits.max_pixels {
            return Err(FetchError::TooManyPixels {
                width,
                height,
                limit: self.limits.max_pixels,
            });
        }
        Ok(FetchedImage {
            bytes,
            format,
            width,
            height,
        })
    }
}

/// A transport error's text without the URL (which the job already shows).
fn without_url(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    if let Some(url) = e.url() {
        text = text
            .replace(&format!(" ({url})"), "")
            .replace(url.as_str(), "the URL");
    }
    let mut source = std::error::Error::source(e);
    while let Some(inner) = source {
        text = format!("{text}: {inner}");
        source = inner.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literal_addresses_and_schemes_are_checked_before_connecting() {
        let policy = AddressPolicy::default();
        let url = |s: &str| Url::parse(s).unwrap();
        assert!(matches!(
            check_url(&url("http://127.0.0.1:9/a.png"), &policy),
            Err(FetchError::Refused {
                kind: Restricted::Loopback,
                ..
            })
        ));
        assert!(matches!(
            check_url(&url("http://[::1]/a.png"), &policy),
            Err(FetchError::Refused {
                kind: Restricted::Loopback,
                ..
            })
        ));
        assert!(matches!(
            check_url(&url("http://169.254.169.254/latest/meta-data"), &policy),
            Err(FetchError::Refused {
                kind: Restricted::Metadata,
                ..
            })
        ));
        assert!(matches!(
            check_url(&url("http://[::ffff:10.0.0.1]/"), &policy),
            Err(FetchError::Refused {
                kind: Restricted::Private,
                ..
            })
        ));
        assert!(matches!(
            check_url(&url("file:///etc/passwd"), &policy),
            Err(FetchError::Scheme(_))
        ));
        assert!(check_url(&url("https://shop.example/a.png"), &policy).is_ok());
    }

    #[test]
    fn refusals_are_final_and_transient_failures_are_retried() {
        assert!(FetchError::Timeout(Duration::from_secs(1)).is_retryable());
        assert!(FetchError::Status(503).is_retryable());
        assert!(!FetchError::Status(404).is_retryable());
        assert!(!FetchError::NotAnImage.is_retryable());
        assert!(!FetchError::TooLarge(1).is_retryable());
        assert_eq!(
            FetchError::TooLarge(20 * 1024 * 1024).to_string(),
            "image larger than 20 MiB"
        );
        assert_eq!(
            FetchError::Refused {
                kind: Restricted::Private,
                ip: "10.0.0.1".parse().unwrap()
            }
            .to_string(),
            "image URL resolves to a private address (10.0.0.1)"
        );
    }
}
