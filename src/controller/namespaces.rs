//! One watch stream out of several namespaces' watches, for a single reflector store.
//!
//! A reflector treats each `Init .. InitDone` as the complete list of what it stores: it fills a
//! fresh map and swaps it in at `InitDone`. Several namespace watchers merged as they come would
//! each swap in their own list, so the store would end up holding one namespace (whichever listed
//! last) and the controller would drop every other namespace's reconciles as "not found in
//! store". Here the first lists of all namespaces are held back and given as one list; a later
//! relist of one namespace (after a watch desync) becomes `Apply` for what it found and `Delete`
//! for what the store holds of that namespace and the list no longer has.

use futures::{Stream, StreamExt, stream};
use kube::{
    Resource, ResourceExt,
    runtime::{
        reflector::{ObjectRef, Store},
        watcher::{self, Event},
    },
};
use std::collections::HashSet;

/// The events of `streams` (one per entry of `namespaces`, in the same order) as one coherent
/// stream for a reflector writing into `store`.
pub fn merge<K, S>(
    namespaces: Vec<String>,
    streams: Vec<S>,
    store: Store<K>,
) -> impl Stream<Item = watcher::Result<Event<K>>> + Send
where
    K: Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
    S: Stream<Item = watcher::Result<Event<K>>> + Send + Unpin + 'static,
{
    let tagged = stream::select_all(
        streams
            .into_iter()
            .enumerate()
            .map(|(source, s)| s.map(move |item| (source, item))),
    );
    let mut merger = Merger::new(namespaces, store);
    tagged.flat_map(move |(source, item)| {
        let out: Vec<_> = match item {
            Ok(event) => merger.on(source, event).into_iter().map(Ok).collect(),
            Err(e) => vec![Err(e)],
        };
        stream::iter(out)
    })
}

/// What the merge knows between events.
struct Merger<K: Resource<DynamicType = ()> + Clone + 'static> {
    namespaces: Vec<String>,
    store: Store<K>,
    /// A namespace's list being received (between its `Init` and `InitDone`).
    listing: Vec<Option<Vec<K>>>,
    /// Each namespace's first complete list, kept (and kept current) until all have one.
    first: Vec<Option<Vec<K>>>,
    synced: bool,
}

impl<K: Resource<DynamicType = ()> + Clone + 'static> Merger<K> {
    fn new(namespaces: Vec<String>, store: Store<K>) -> Self {
        let n = namespaces.len();
        Self {
            namespaces,
            store,
            listing: vec![None; n],
            first: vec![None; n],
            synced: false,
        }
    }

    /// The events to pass on for `event` from namespace number `source`.
    fn on(&mut self, source: usize, event: Event<K>) -> Vec<Event<K>> {
        match event {
            Event::Init => {
                self.listing[source] = Some(Vec::new());
                Vec::new()
            }
            Event::InitApply(obj) => {
                self.listing[source].get_or_insert_default().push(obj);
                Vec::new()
            }
            Event::InitDone => {
                let list = self.listing[source].take().unwrap_or_default();
                if self.synced {
                    self.relisted(source, list)
                } else {
                    self.first[source] = Some(list);
                    self.all_listed()
                }
            }
            Event::Apply(obj) if !self.synced => {
                if let Some(list) = &mut self.first[source] {
                    let key = ObjectRef::from_obj(&obj);
                    list.retain(|o| ObjectRef::from_obj(o) != key);
                    list.push(obj);
                }
                Vec::new()
            }
            Event::Delete(obj) if !self.synced => {
                if let Some(list) = &mut self.first[source] {
                    let key = ObjectRef::from_obj(&obj);
                    list.retain(|o| ObjectRef::from_obj(o) != key);
                }
                Vec::new()
            }
            live => vec![live],
        }
    }

    /// Once every namespace has listed: one `Init .. InitDone` with all of them.
    fn all_listed(&mut self) -> Vec<Event<K>> {
        if self.first.iter().any(Option::is_none) {
            return Vec::new();
        }
        self.synced = true;
        let objects = self
            .first
            .iter_mut()
            .flat_map(|l| l.take().unwrap_or_default());
        std::iter::once(Event::Init)
            .chain(objects.map(Event::InitApply))
            .chain(std::iter::once(Event::InitDone))
            .collect()
    }

    /// A relist of one namespace after the first sync.
    fn relisted(&self, source: usize, list: Vec<K>) -> Vec<Event<K>> {
        let namespace = self.namespaces[source].as_str();
        let listed: HashSet<ObjectRef<K>> = list.iter().map(ObjectRef::from_obj).collect();
        let gone = self
            .store
            .state()
            .into_iter()
            .filter(|o| o.namespace().as_deref() == Some(namespace))
            .filter(|o| !listed.contains(&ObjectRef::from_obj(o.as_ref())))
            .map(|o| Event::Delete(o.as_ref().clone()));
        gone.chain(list.into_iter().map(Event::Apply)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::{api::ObjectMeta, runtime::reflector};

    fn object(namespace: &str, name: &str) -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some(namespace.into()),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn names(store: &Store<ConfigMap>) -> Vec<String> {
        let mut names: Vec<_> = store
            .state()
            .iter()
            .map(|o| format!("{}/{}", o.namespace().unwrap_or_default(), o.name_any()))
            .collect();
        names.sort();
        names
    }

    /// A merger of namespaces `a` and `b` in front of a real reflector writer.
    struct Harness {
        merger: Merger<ConfigMap>,
        writer: reflector::store::Writer<ConfigMap>,
        store: Store<ConfigMap>,
    }

    impl Harness {
        fn new() -> Self {
            let (store, writer) = reflector::store::<ConfigMap>();
            let merger = Merger::new(vec!["a".into(), "b".into()], store.clone());
            Self {
                merger,
                writer,
                store,
            }
        }

        /// Feeds `(source, event)` pairs; returns the store's `namespace/name`s after them.
        fn feed(&mut self, steps: Vec<(usize, Event<ConfigMap>)>) -> Vec<String> {
            for (source, event) in steps {
                for out in self.merger.on(source, event) {
                    self.writer.apply_watcher_event(&out);
                }
            }
            names(&self.store)
        }
    }

    #[test]
    fn interleaved_first_lists_and_early_changes_all_reach_the_store() {
        let mut h = Harness::new();
        let before = h.feed(vec![
            (0, Event::Init),
            (1, Event::Init),
            (0, Event::InitApply(object("a", "1"))),
            (1, Event::InitApply(object("b", "1"))),
            (0, Event::InitApply(object("a", "2"))),
            (0, Event::InitDone),
            // Namespace a changes while b is still listing.
            (0, Event::Apply(object("a", "3"))),
            (0, Event::Delete(object("a", "1"))),
            (1, Event::InitApply(object("b", "2"))),
        ]);
        assert!(before.is_empty(), "nothing before every list is in");
        let after = h.feed(vec![
            (1, Event::InitDone),
            (1, Event::Apply(object("b", "3"))),
        ]);
        assert_eq!(after, ["a/2", "a/3", "b/1", "b/2", "b/3"]);
    }

    #[test]
    fn a_relist_of_one_namespace_removes_only_its_vanished_objects() {
        let names = Harness::new().feed(vec![
            (0, Event::Init),
            (0, Event::InitApply(object("a", "1"))),
            (0, Event::InitApply(object("a", "2"))),
            (0, Event::InitDone),
            (1, Event::Init),
            (1, Event::InitApply(object("b", "1"))),
            (1, Event::InitDone),
            // a's watch desynced; its relist no longer has a/1 and has a new a/4.
            (0, Event::Init),
            (0, Event::InitApply(object("a", "2"))),
            (0, Event::InitApply(object("a", "4"))),
            (0, Event::InitDone),
        ]);
        assert_eq!(names, ["a/2", "a/4", "b/1"]);
    }
}
