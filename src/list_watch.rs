//! The list and watch of ImageJobs behind the controller's and the facade's caches, the list
//! read from the apiserver's watch cache and decoded as it arrives.
//!
//! kube-runtime's watcher lists in pages of 500, each page read from etcd: over 100,000 jobs
//! the test apiserver took 45 s. A list at `resourceVersion=0` is served from the apiserver's
//! watch cache, as client-go's informers list, in about 10 s; but kube drops
//! `resourceVersion=0` when a page size is set, the watch cache does not page before
//! Kubernetes 1.31 anyway, and kube reads and decodes that one response whole (116 MB at
//! 100,000 jobs; the controller peaked at 704 MiB). Here the response is decoded while it is
//! read, one item at a time, each handed on (in the controller, to the
//! [settled](crate::controller::SettledJobs) stage, which keeps a uid and a phase of most)
//! before more is read, so memory stays flat. After the list, the watch resumes from the
//! list's resourceVersion with bookmarks, as kube's watcher does. A watch that fell behind (410
//! Gone) lists again no older than the version it last saw, as client-go's reflector does: a
//! list at "any" version may be served by an apiserver whose cache is behind what this stream
//! already delivered, and take the cache back in time. The events are kube's
//! [`watcher::Event`]s, for its reflector.

use crate::crd::ImageJob;
use futures::{Stream, StreamExt, stream::BoxStream};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ListMeta;
use kube::{
    Api, ResourceExt,
    api::{ListParams, VersionMatch, WatchEvent, WatchParams},
    runtime::watcher::{self, Event},
};
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use std::{fmt, io::Read, time::Duration};
use tokio::{sync::mpsc, task::JoinHandle};
use tokio_util::{compat::FuturesAsyncReadCompatExt, io::SyncIoBridge};

/// How long the apiserver keeps one watch request open (kube's watcher default).
const WATCH_TIMEOUT_SECS: u32 = 290;
/// A watch silent for this long (not even a bookmark) is taken as broken and resumed.
const WATCH_IDLE: Duration = Duration::from_secs(WATCH_TIMEOUT_SECS as u64 + 60);
/// Jobs decoded ahead of the stream's consumer.
const DECODED_AHEAD: usize = 256;

type Decoding = JoinHandle<Result<Option<String>, kube::Error>>;

/// Which state of the jobs a list asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
enum ListFrom {
    /// Whatever the apiserver's watch cache holds (`resourceVersion=0`): the first list.
    Cache,
    /// At least as new as this version, the last one seen: the list after a watch fell behind.
    NotOlderThan(String),
    /// The newest, read from etcd (no `resourceVersion`): when the apiserver cannot serve a list
    /// at the version last seen (too old for it, or newer than its cache gets in time).
    Latest,
}

impl ListFrom {
    /// The list's parameters.
    fn params(&self) -> ListParams {
        match self {
            ListFrom::Cache => ListParams::default().match_any(),
            ListFrom::NotOlderThan(version) => ListParams::default()
                .at(version)
                .matching(VersionMatch::NotOlderThan),
            ListFrom::Latest => ListParams::default(),
        }
    }

    /// What to list from after a list from here failed with `error`.
    fn after_failure(self, error: &kube::Error) -> ListFrom {
        // 410 Expired: too old for the apiserver; 504 "Too large resource version": its cache
        // did not reach the version within its wait.
        let unservable = matches!(error, kube::Error::Api(s) if s.code == 410 || s.code == 504);
        match self {
            ListFrom::NotOlderThan(_) if unservable => ListFrom::Latest,
            from => from,
        }
    }
}

enum State {
    /// A list is due.
    Unlisted(ListFrom),
    /// The list's items arrive on `items`; `done` gives its resourceVersion; `from` is listed
    /// again if it fails.
    Listing {
        items: mpsc::Receiver<ImageJob>,
        done: Decoding,
        from: ListFrom,
    },
    /// Listed (or a watch ended) at `resource_version`: a watch from there is due.
    Listed { resource_version: String },
    /// Watching from `resource_version`, the last version seen.
    Watching {
        resource_version: String,
        stream: BoxStream<'static, kube::Result<WatchEvent<ImageJob>>>,
    },
}

type Step = (Option<watcher::Result<Event<ImageJob>>>, State);

/// The jobs of `api` as watcher events: `Init`, an `InitApply` per listed job, `InitDone`,
/// then `Apply` and `Delete` as they change, and again from `Init` after a desync. Errors are
/// passed on and the stream recovers on the next poll (back off by polling later).
pub fn list_watch(
    api: Api<ImageJob>,
) -> impl Stream<Item = watcher::Result<Event<ImageJob>>> + Send + 'static {
    let start = State::Unlisted(ListFrom::Cache);
    futures::stream::unfold((api, start), |(api, mut state)| async move {
        loop {
            match step(&api, state).await {
                (Some(event), next) => return Some((event, (api, next))),
                (None, next) => state = next,
            }
        }
    })
}

async fn step(api: &Api<ImageJob>, state: State) -> Step {
    match state {
        State::Unlisted(from) => match list(api, &from).await {
            Ok((items, done)) => (Some(Ok(Event::Init)), State::Listing { items, done, from }),
            Err(e) => {
                let next = State::Unlisted(from.after_failure(&e));
                (Some(Err(watcher::Error::InitialListFailed(e))), next)
            }
        },
        State::Listing {
            mut items,
            done,
            from,
        } => match items.recv().await {
            Some(job) => (
                Some(Ok(Event::InitApply(job))),
                State::Listing { items, done, from },
            ),
            None => listed(done, from).await,
        },
        State::Listed { resource_version } => {
            // Bookmarks are on by default.
            let params = WatchParams::default().timeout(WATCH_TIMEOUT_SECS);
            match api.watch(&params, &resource_version).await {
                Ok(stream) => (
                    None,
                    State::Watching {
                        resource_version,
                        stream: stream.boxed(),
                    },
                ),
                Err(e) => {
                    let next = if matches!(&e, kube::Error::Api(s) if s.code == 410) {
                        State::Unlisted(ListFrom::NotOlderThan(resource_version))
                    } else {
                        State::Listed { resource_version }
                    };
                    (Some(Err(watcher::Error::WatchStartFailed(e))), next)
                }
            }
        }
        State::Watching {
            resource_version,
            mut stream,
        } => match tokio::time::timeout(WATCH_IDLE, stream.next()).await {
            Ok(Some(event)) => watched(event, resource_version, stream),
            // Ended by the apiserver's timeout, or silent too long: resume where it was.
            Ok(None) | Err(_) => (None, State::Listed { resource_version }),
        },
    }
}

/// The end of a list from `from`: its items are all out, its decoding says how it went.
async fn listed(done: Decoding, from: ListFrom) -> Step {
    let failed = |e| Some(Err(watcher::Error::InitialListFailed(e)));
    match done.await {
        Ok(Ok(Some(resource_version))) => (
            Some(Ok(Event::InitDone)),
            State::Listed { resource_version },
        ),
        Ok(Ok(None)) => (
            Some(Err(watcher::Error::NoResourceVersion)),
            State::Unlisted(from),
        ),
        Ok(Err(e)) => (failed(e), State::Unlisted(from)),
        Err(join) => (
            failed(kube::Error::Service(Box::new(join))),
            State::Unlisted(from),
        ),
    }
}

fn watched(
    event: kube::Result<WatchEvent<ImageJob>>,
    resource_version: String,
    stream: BoxStream<'static, kube::Result<WatchEvent<ImageJob>>>,
) -> Step {
    let at = |resource_version, stream| State::Watching {
        resource_version,
        stream,
    };
    match event {
        Ok(WatchEvent::Added(job) | WatchEvent::Modified(job)) => {
            let version = job.resource_version().unwrap_or_default();
            (Some(Ok(Event::Apply(job))), at(version, stream))
        }
        Ok(WatchEvent::Deleted(job)) => {
            let version = job.resource_version().unwrap_or_default();
            (Some(Ok(Event::Delete(job))), at(version, stream))
        }
        Ok(WatchEvent::Bookmark(mark)) => (None, at(mark.metadata.resource_version, stream)),
        // 410 Gone: the watch fell too far behind; only a new list catches up.
        Ok(WatchEvent::Error(status)) if status.code == 410 => (
            Some(Err(watcher::Error::WatchError(status))),
            State::Unlisted(ListFrom::NotOlderThan(resource_version)),
        ),
        Ok(WatchEvent::Error(status)) => (
            Some(Err(watcher::Error::WatchError(status))),
            at(resource_version, stream),
        ),
        Err(e) => (
            Some(Err(watcher::Error::WatchFailed(e))),
            at(resource_version, stream),
        ),
    }
}

/// Starts the list: its jobs arrive on the receiver as they are decoded.
async fn list(
    api: &Api<ImageJob>,
    from: &ListFrom,
) -> kube::Result<(mpsc::Receiver<ImageJob>, Decoding)> {
    let request = kube::core::Request::new(api.resource_url())
        .list(&from.params())
        .map_err(kube::Error::BuildRequest)?;
    let body = api.clone().into_client().request_stream(request).await?;
    let reader = std::io::BufReader::new(SyncIoBridge::new(Box::pin(body).compat()));
    let (tx, rx) = mpsc::channel(DECODED_AHEAD);
    let done = tokio::task::spawn_blocking(move || decode(reader, &tx));
    Ok((rx, done))
}

/// Decodes a list from `reader`, sending each item on `items` as it is read; the list's
/// resourceVersion.
fn decode(reader: impl Read, items: &mpsc::Sender<ImageJob>) -> kube::Result<Option<String>> {
    let mut de = serde_json::Deserializer::from_reader(reader);
    let resource_version = List { items }
        .deserialize(&mut de)
        .map_err(kube::Error::SerdeError)?;
    de.end().map_err(kube::Error::SerdeError)?;
    Ok(resource_version)
}

/// A Kubernetes list: its `items` go out one by one, its resourceVersion is the value.
struct List<'a> {
    items: &'a mpsc::Sender<ImageJob>,
}

impl<'de> DeserializeSeed<'de> for List<'_> {
    type Value = Option<String>;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for List<'_> {
    type Value = Option<String>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a Kubernetes list")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut resource_version = None;
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            match key.as_ref() {
                "metadata" => resource_version = map.next_value::<ListMeta>()?.resource_version,
                "items" => map.next_value_seed(Items(self.items))?,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(resource_version)
    }
}

/// A list's `items` (or `null`), each sent on as soon as it is decoded.
struct Items<'a>(&'a mpsc::Sender<ImageJob>);

impl<'de> DeserializeSeed<'de> for Items<'_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Items<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a list of ImageJobs")
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while let Some(job) = seq.next_element::<ImageJob>()? {
            self.0
                .blocking_send(job)
                .map_err(|_| de::Error::custom("the list's reader has gone"))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decoded(json: &str) -> (kube::Result<Option<String>>, Vec<String>) {
        let (tx, mut rx) = mpsc::channel(16);
        let result = decode(json.as_bytes(), &tx);
        drop(tx);
        let mut names = Vec::new();
        while let Ok(job) = rx.try_recv() {
            names.push(job.name_any());
        }
        (result, names)
    }

    fn item(name: &str) -> String {
        format!(
            r#"{{"apiVersion":"imagejob.dev/v1alpha1","kind":"ImageJob","metadata":{{"name":"{name}"}},"spec":{{"url":"https://example.com/{name}.jpg"}}}}"#
        )
    }

    #[test]
    fn a_list_is_decoded_item_by_item_wherever_its_metadata_is() {
        let (a, b) = (item("a"), item("b"));
        let before = format!(
            r#"{{"apiVersion":"imagejob.dev/v1alpha1","kind":"ImageJobList","metadata":{{"resourceVersion":"42"}},"items":[{a},{b}]}}"#
        );
        let after = format!(
            r#"{{"apiVersion":"imagejob.dev/v1alpha1","items":[{a},{b}],"kind":"ImageJobList","metadata":{{"resourceVersion":"42"}}}}"#
        );
        for json in [before, after] {
            let (rv, names) = decoded(&json);
            assert_eq!(rv.expect("decoded"), Some("42".to_owned()));
            assert_eq!(names, ["a", "b"]);
        }
    }

    #[test]
    fn an_empty_or_null_list_has_no_items_and_a_list_without_version_says_so() {
        let (rv, names) = decoded(r#"{"items":null,"metadata":{"resourceVersion":"7"}}"#);
        assert_eq!((rv.expect("decoded"), names.len()), (Some("7".into()), 0));
        let (rv, _) = decoded(r#"{"items":[],"metadata":{}}"#);
        assert_eq!(rv.expect("decoded"), None);
    }

    #[test]
    fn a_cut_or_malformed_list_is_an_error() {
        let a = item("a");
        assert!(decoded(&format!(r#"{{"items":[{a},"#)).0.is_err());
        assert!(decoded(r#"{"items":[{"metadata":7}]}"#).0.is_err());
        assert!(decoded(r#"{"items":[]} trailing"#).0.is_err());
    }

    #[test]
    fn a_watch_that_fell_behind_lists_again_and_other_watch_errors_keep_watching() {
        let status = |code| {
            let mut status = kube::core::Status::failure("watch error", "Expired");
            status.code = code;
            Box::new(status)
        };
        let watching = |code| {
            let (event, next) = watched(
                Ok(WatchEvent::Error(status(code))),
                "5".into(),
                futures::stream::empty().boxed(),
            );
            assert!(matches!(event, Some(Err(watcher::Error::WatchError(_)))));
            next
        };
        assert!(matches!(
            watching(410),
            State::Unlisted(ListFrom::NotOlderThan(version)) if version == "5"
        ));
        assert!(matches!(
            watching(500),
            State::Watching { resource_version, .. } if resource_version == "5"
        ));
    }

    fn query(from: &ListFrom) -> String {
        let request = kube::core::Request::new("/apis/imagejob.dev/v1alpha1/imagejobs")
            .list(&from.params())
            .expect("list request");
        request.uri().query().unwrap_or_default().to_owned()
    }

    #[test]
    fn the_first_list_reads_the_cache_a_relist_no_older_than_seen_and_the_fallback_etcd() {
        assert_eq!(
            query(&ListFrom::Cache),
            "&resourceVersion=0&resourceVersionMatch=NotOlderThan"
        );
        assert_eq!(
            query(&ListFrom::NotOlderThan("42".into())),
            "&resourceVersion=42&resourceVersionMatch=NotOlderThan"
        );
        assert_eq!(query(&ListFrom::Latest), "");
    }

    #[test]
    fn a_relist_the_apiserver_cannot_serve_at_the_version_seen_reads_the_latest() {
        let refused = |code| {
            let mut status = kube::core::Status::failure("list refused", "Expired");
            status.code = code;
            kube::Error::Api(Box::new(status))
        };
        let seen = || ListFrom::NotOlderThan("42".into());
        assert_eq!(seen().after_failure(&refused(410)), ListFrom::Latest);
        assert_eq!(seen().after_failure(&refused(504)), ListFrom::Latest);
        // Anything else is retried as it was: the version seen is still the one to reach.
        assert_eq!(seen().after_failure(&refused(500)), seen());
        assert_eq!(
            ListFrom::Cache.after_failure(&refused(410)),
            ListFrom::Cache
        );
    }

    #[test]
    fn decoding_stops_when_the_reader_has_gone() {
        let (tx, rx) = mpsc::channel(1);
        drop(rx);
        let json = format!(r#"{{"items":[{}]}}"#, item("a"));
        assert!(decode(json.as_bytes(), &tx).is_err());
    }
}
