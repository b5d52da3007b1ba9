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

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use super::Object;

/// Most objects kept; a full cache starts over empty, so it never holds more.
const CAPACITY: usize = 512;

/// One kept read: the object, or that there was none.
type Entry = Option<Box<dyn Any + Send + Sync>>;

/// Decoded objects valid at one store revision. See the module documentation.
#[derive(Default)]
pub struct ObjectCache {
    inner: Mutex<Entries>,
}

#[derive(Default)]
struct Entries {
    /// The newest revision known; every entry holds the object as of this revision or newer.
    revision: u64,
    /// By type, namespace and name (nested, so a lookup needs no key of its own).
    objects: HashMap<TypeId, HashMap<String, HashMap<String, Entry>>>,
    /// How many entries `objects` holds.
    len: usize,
}

impl Entries {
    fn clear(&mut self) {
        self.objects.clear();
        self.len = 0;
    }
}

/// What a look into the cache found.
pub enum Lookup<K> {
    /// The object as the store holds it, or `None` when it holds none.
    Hit(Option<K>),
    /// Not kept: read the store, then hand the object to [`ObjectCache::keep`] with this
    /// revision.
    Miss(u64),
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
            entries.clear();
        }
    }

    /// The object of type `K` named `name` in `namespace`, when kept.
    pub fn lookup<K: Object>(&self, namespace: &str, name: &str) -> Lookup<K> {
        let entries = self.entries();
        let kept = entries
            .objects
            .get(&TypeId::of::<K>())
            .and_then(|by_namespace| by_namespace.get(namespace))
            .and_then(|by_name| by_name.get(name));
        match kept {
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
        if entries.len >= CAPACITY {
            entries.clear();
        }
        let entry: Entry = object.map(|o| Box::new(o.clone()) as Box<dyn Any + Send + Sync>);
        let replaced = entries
            .objects
            .entry(TypeId::of::<K>())
            .or_default()
            .entry(namespace.to_owned())
            .or_default()
            .insert(name.to_owned(), entry);
        if replaced.is_none() {
            entries.len += 1;
        }
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
        // Another namespace or another kind is another object.
        assert!(matches!(
            cache.lookup::<Environment>("elsewhere", "prod"),
            Lookup::Miss(7)
        ));
        assert!(matches!(
            cache.lookup::<crate::model::Stack>("", "prod"),
            Lookup::Miss(7)
        ));
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
        assert_eq!(cache.entries().len, 1);
        assert!(found(&cache, &format!("e{CAPACITY}")).is_some());
    }
}
