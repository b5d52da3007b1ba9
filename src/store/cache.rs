//! Decoded objects kept at the newest store revision this process knows of, so that the reads a
//! hook request makes (its Environment, Stack and waiting DeploymentRecord) cost neither a
//! database read nor a JSON decoding while nothing was written.
//!
//! The cache is emptied whenever the process learns of a newer revision: from its own commits
//! (known before they are answered, also when a write lost a race to another process's), from
//! every read of the store's revision, and from the regular look for other processes' writes.
//! An object read before such news is only kept when no news came while it was read. So a read
//! served from here is at least as new as the newest revision the process had seen when the
//! read began:
//! - a hook or API request starts with a key lookup, which reads the store's revision, so it
//!   sees every write committed before it arrived, from any process, as a database read would;
//! - a reconcile started by a change feed event sees at least that change (the feed read the
//!   revision before reporting it);
//! - any other read may miss another process's write for as long as the look for such writes
//!   takes to find it (about a second at most), the delay after which the change feed reports
//!   it anyway.
//!
//! The store only uses the cache while it follows other processes' writes (see
//! `SqliteStore`); a process that does not, such as a CLI command, always reads the database.

use std::any::Any;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use super::{Object, kind_of};

/// Most objects kept; a full cache starts over empty, so it never holds more.
const CAPACITY: usize = 512;

/// One kept read: the object, or that there was none.
type Entry = Option<Arc<dyn Any + Send + Sync>>;

/// Decoded objects valid at one store revision. See the module documentation.
#[derive(Default)]
pub struct ObjectCache {
    inner: Mutex<Entries>,
}

#[derive(Default)]
struct Entries {
    /// The newest revision known; every entry holds the object as of this revision or newer.
    revision: u64,
    /// Kind, namespace and name, joined by `/`, to the object.
    objects: HashMap<String, Entry>,
}

/// What a look into the cache found.
pub enum Lookup<K> {
    /// The object as the store holds it, or `None` when it holds none.
    Hit(Option<K>),
    /// Not kept: read the store, then hand the object to [`ObjectCache::keep`] with this
    /// revision.
    Miss(u64),
}

fn key<K: Object>(namespace: &str, name: &str) -> String {
    format!("{}/{namespace}/{name}", kind_of::<K>())
}

impl ObjectCache {
    fn entries(&self) -> MutexGuard<'_, Entries> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records that the store has reached `revision`; everything kept from before is dropped.
    pub fn observe(&self, revision: u64) {
        let mut entries = self.entries();
        if revision > entries.revision {
            entries.revision = revision;
            entries.objects.clear();
        }
    }

    /// The object of type `K` named `name` in `namespace`, when kept.
    pub fn lookup<K: Object>(&self, namespace: &str, name: &str) -> Lookup<K> {
        let entries = self.entries();
        match entries.objects.get(&key::<K>(namespace, name)) {
            Some(None) => Lookup::Hit(None),
            Some(Some(object)) => match object.downcast_ref::<K>() {
                Some(object) => Lookup::Hit(Some(object.clone())),
                None => Lookup::Miss(entries.revision),
            },
            None => Lookup::Miss(entries.revision),
        }
    }

    /// Keeps what a read of the store found, when the read began at `revision` (from
    /// [`Lookup::Miss`]) and no newer revision became known meanwhile.
    pub fn keep<K: Object>(&self, revision: u64, namespace: &str, name: &str, object: Option<&K>) {
        let mut entries = self.entries();
        if entries.revision != revision {
            return;
        }
        if entries.objects.len() >= CAPACITY {
            entries.objects.clear();
        }
        let entry: Entry = object.map(|o| Arc::new(o.clone()) as Arc<dyn Any + Send + Sync>);
        entries.objects.insert(key::<K>(namespace, name), entry);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Environment, EnvironmentSpec};

    fn environment(name: &str) -> Environment {
        Environment::new(name, EnvironmentSpec::default())
    }

    fn found(cache: &ObjectCache, name: &str) -> Option<Option<Environment>> {
        match cache.lookup::<Environment>("", name) {
            Lookup::Hit(object) => Some(object),
            Lookup::Miss(_) => None,
        }
    }

    #[test]
    fn a_kept_read_is_served_until_a_newer_revision_is_known() {
        let cache = ObjectCache::default();
        cache.observe(7);
        let Lookup::Miss(at) = cache.lookup::<Environment>("", "prod") else {
            panic!("an empty cache holds nothing");
        };
        assert_eq!(at, 7);
        cache.keep(at, "", "prod", Some(&environment("prod")));
        cache.keep::<Environment>(at, "", "absent", None);
        let kept = found(&cache, "prod").flatten();
        assert_eq!(kept.and_then(|e| e.metadata.name).as_deref(), Some("prod"));
        assert!(matches!(found(&cache, "absent"), Some(None)));
        // The same revision again changes nothing; an older one neither.
        cache.observe(7);
        cache.observe(3);
        assert!(found(&cache, "prod").is_some());
        cache.observe(8);
        assert!(found(&cache, "prod").is_none());
        assert!(found(&cache, "absent").is_none());
    }

    #[test]
    fn a_read_overtaken_by_news_is_not_kept() {
        let cache = ObjectCache::default();
        let Lookup::Miss(at) = cache.lookup::<Environment>("", "prod") else {
            panic!("an empty cache holds nothing");
        };
        // A commit became known while the read was under way: what it read may be older.
        cache.observe(at + 1);
        cache.keep(at, "", "prod", Some(&environment("prod")));
        assert!(found(&cache, "prod").is_none());
    }

    #[test]
    fn a_full_cache_starts_over() {
        let cache = ObjectCache::default();
        for n in 0..=CAPACITY {
            cache.keep(0, "", &format!("e{n}"), Some(&environment("e")));
        }
        assert_eq!(cache.entries().objects.len(), 1);
        assert!(found(&cache, &format!("e{CAPACITY}")).is_some());
    }
}
