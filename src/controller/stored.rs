//! The jobs a reconcile is woken for, each passed on only once the reflector's store holds it.
//!
//! kube-runtime's runner looks a woken job up in the store when it runs it, and drops the wake
//! (`ObjectNotFound`, nothing logged) when the store does not have it. A reflector keeps a
//! list's jobs apart until its `InitDone` and swaps them in only then, so a job woken by its
//! `InitApply` could run before it was stored. After a relist (an apiserver restart, a watch
//! that fell behind), a job created or changed while the watch was down was then never
//! reconciled: its wake was dropped, and the trigger filter had already taken its fingerprint.
//! Here a list's jobs are passed on at its `InitDone`, after the reflector stored them, read back
//! from the store one at a time (only their names are held meanwhile).

use futures::{Stream, StreamExt, stream};
use kube::{
    Resource,
    runtime::{
        reflector::{ObjectRef, Store},
        watcher::{self, Event},
    },
};

/// The objects of `events` (a reflector's output stream, writing into `store`) as
/// `applied_objects` gives them, except that a list's objects come after its `InitDone`.
pub fn applied_once_stored<K, S>(
    events: S,
    store: Store<K>,
) -> impl Stream<Item = watcher::Result<K>> + Send
where
    K: Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
    S: Stream<Item = watcher::Result<Event<K>>> + Send + 'static,
{
    let mut listed: Vec<ObjectRef<K>> = Vec::new();
    events.flat_map(move |item| {
        let out: Box<dyn Iterator<Item = watcher::Result<K>> + Send> = match item {
            Ok(Event::Apply(obj)) => Box::new(std::iter::once(Ok(obj))),
            Ok(Event::Init) => {
                listed.clear();
                Box::new(std::iter::empty())
            }
            Ok(Event::InitApply(obj)) => {
                listed.push(name_of(&obj));
                Box::new(std::iter::empty())
            }
            Ok(Event::InitDone) => {
                let store = store.clone();
                Box::new(
                    std::mem::take(&mut listed)
                        .into_iter()
                        .filter_map(move |r| store.get(&r).map(|obj| Ok(K::clone(&obj)))),
                )
            }
            Ok(Event::Delete(_)) => Box::new(std::iter::empty()),
            Err(e) => Box::new(std::iter::once(Err(e))),
        };
        stream::iter(out)
    })
}

/// The object's name and namespace, without the version and uid `ObjectRef::from_obj` copies
/// (the store's lookup ignores them).
fn name_of<K: Resource<DynamicType = ()>>(obj: &K) -> ObjectRef<K> {
    let name = ObjectRef::new(obj.meta().name.as_deref().unwrap_or_default());
    match obj.meta().namespace.as_deref() {
        Some(ns) => name.within(ns),
        None => name,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::ImageJob;
    use kube::runtime::{WatchStreamExt, reflector};

    fn job(name: &str) -> ImageJob {
        let mut job = ImageJob::new(name, Default::default());
        job.metadata.namespace = Some("default".into());
        job
    }

    /// Runs `events` through a reflector and the stage; for each object passed on, whether the
    /// store held it at that moment.
    async fn passed_on(events: Vec<Event<ImageJob>>) -> Vec<(String, bool)> {
        let (reader, writer) = reflector::store::<ImageJob>();
        let reflected = stream::iter(events.into_iter().map(Ok)).reflect(writer);
        let out = applied_once_stored(reflected, reader.clone());
        out.map(|item| {
            let obj = item.expect("no error was sent");
            let stored = reader.get(&ObjectRef::from_obj(&obj)).is_some();
            (obj.metadata.name.unwrap_or_default(), stored)
        })
        .collect()
        .await
    }

    #[tokio::test]
    async fn a_relisted_job_is_passed_on_only_once_it_is_stored() {
        let seen = passed_on(vec![
            Event::Init,
            Event::InitApply(job("before")),
            Event::InitDone,
            // The watch fell behind; "after" was created meanwhile and comes with the relist.
            Event::Init,
            Event::InitApply(job("before")),
            Event::InitApply(job("after")),
            Event::InitDone,
            Event::Apply(job("later")),
        ])
        .await;
        let expected = [
            ("before", true),
            ("before", true),
            ("after", true),
            ("later", true),
        ];
        assert_eq!(
            seen,
            expected.map(|(n, s)| (n.to_owned(), s)),
            "every job passed on must already be in the store"
        );
    }

    #[tokio::test]
    async fn a_list_cut_short_is_forgotten_and_deletes_wake_nothing() {
        let seen = passed_on(vec![
            Event::Init,
            Event::InitApply(job("half-listed")),
            // The list failed; the next one starts over without it.
            Event::Init,
            Event::InitApply(job("listed")),
            Event::InitDone,
            Event::Delete(job("listed")),
        ])
        .await;
        assert_eq!(seen, [("listed".to_owned(), true)]);
    }

    #[tokio::test]
    async fn errors_are_passed_on() {
        let (reader, _writer) = reflector::store::<ImageJob>();
        let events = stream::iter([Err(watcher::Error::NoResourceVersion)]);
        let out: Vec<_> = applied_once_stored(events, reader).collect().await;
        assert!(matches!(out[..], [Err(watcher::Error::NoResourceVersion)]));
    }
}
