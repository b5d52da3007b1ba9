//! API keys: generation, hashing, permission checks and verification.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use futures::StreamExt;
use jiff::Timestamp;
use kube::ResourceExt;
use kube::runtime::watcher;
use rand::RngExt;
use rand::distr::Alphanumeric;
use rand::rand_core::UnwrapErr;
use rand::rngs::SysRng;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::model::{ApiKey, Permission};
use crate::store::Store;

/// Every key starts with this.
pub const KEY_PREFIX: &str = "rsgo_";
/// Characters after the prefix.
pub const KEY_RANDOM_LEN: usize = 32;
/// Characters of a key kept for display: the prefix and four random ones.
pub const DISPLAY_PREFIX_LEN: usize = KEY_PREFIX.len() + 4;

/// A newly generated key: the plaintext (shown once) and what is stored.
pub struct NewKey {
    /// The whole key. Never stored, never logged.
    pub plaintext: String,
    /// Hex SHA-256 of the key.
    pub hash: String,
    /// Display prefix.
    pub prefix: String,
}

impl std::fmt::Debug for NewKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewKey")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// Draws a new key from the operating system's CSPRNG.
pub fn generate() -> NewKey {
    let random: String = UnwrapErr(SysRng)
        .sample_iter(Alphanumeric)
        .take(KEY_RANDOM_LEN)
        .map(char::from)
        .collect();
    let plaintext = format!("{KEY_PREFIX}{random}");
    NewKey {
        hash: hash(&plaintext),
        prefix: plaintext[..DISPLAY_PREFIX_LEN].to_owned(),
        plaintext,
    }
}

/// Lower-case hex SHA-256 of a key.
pub fn hash(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// Whether `key` has the shape of an rsgo key.
pub fn is_well_formed(key: &str) -> bool {
    key.len() == KEY_PREFIX.len() + KEY_RANDOM_LEN
        && key.starts_with(KEY_PREFIX)
        && key[KEY_PREFIX.len()..]
            .bytes()
            .all(|b| b.is_ascii_alphanumeric())
}

/// Refuses a key without permissions. Unknown permission names never get this far: they do not
/// parse as a [`Permission`].
pub fn validate_permissions(permissions: &[Permission]) -> Result<(), String> {
    if permissions.is_empty() {
        return Err(format!(
            "a key needs at least one permission; known permissions: {}",
            Permission::names(&Permission::ALL)
        ));
    }
    Ok(())
}

/// Whether the granted permissions include `wanted`, honouring `Hooks.*` and `*`.
pub fn grants(granted: &[Permission], wanted: Permission) -> bool {
    granted.iter().any(|p| p.covers(wanted))
}

/// A Kubernetes-style object name from a key's display name: each run of other characters
/// becomes one dash.
pub fn object_name(display: &str) -> String {
    let words: Vec<&str> = display
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty())
        .collect();
    crate::model::dns_label(&words.join("-"))
}

/// The ApiKey to store for `key`: only its hash and display prefix. Refuses a key without
/// permissions or whose display name has no letter or digit to name it by.
pub fn key_record(
    key: &NewKey,
    display_name: &str,
    permissions: Vec<Permission>,
    environment: Option<String>,
    expires_at: Option<Timestamp>,
) -> Result<ApiKey, String> {
    validate_permissions(&permissions)?;
    if environment.is_some() && permissions.contains(&Permission::Admin) {
        return Err(
            "an Admin key acts on every environment and cannot be limited to one; make a separate key for the hooks".into(),
        );
    }
    let name = object_name(display_name);
    if name.is_empty() {
        return Err("a key's name needs at least one letter or digit".into());
    }
    Ok(ApiKey {
        metadata: kube::api::ObjectMeta {
            name: Some(name),
            ..Default::default()
        },
        spec: crate::model::ApiKeySpec {
            display_name: display_name.to_owned(),
            key_hash: key.hash.clone(),
            prefix: key.prefix.clone(),
            permissions,
            environment,
            expires_at,
            ..Default::default()
        },
        status: None,
    })
}

/// Whether a key is `active`, `revoked` or `expired` at `now`.
pub fn state(key: &ApiKey, now: Timestamp) -> &'static str {
    if key.spec.revoked {
        "revoked"
    } else if key.spec.expires_at.is_some_and(|at| at <= now) {
        "expired"
    } else {
        "active"
    }
}

/// Marks a key revoked now; it is refused from the next request on.
pub fn revoke(key: &mut ApiKey, reason: Option<String>) {
    key.spec.revoked = true;
    key.spec.revoked_at = Some(Timestamp::now());
    key.spec.revoked_reason = reason;
}

/// Why a presented key was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyRejection {
    /// No `X-Api-Key` header.
    Missing,
    /// Not of the form `rsgo_` + 32 letters and digits.
    Malformed,
    /// No key with that hash exists.
    Unknown,
    /// The key was revoked.
    Revoked,
    /// The key's expiry has passed.
    Expired,
}

impl KeyRejection {
    /// A short name for logs.
    pub fn label(self) -> &'static str {
        match self {
            KeyRejection::Missing => "missing key",
            KeyRejection::Malformed => "malformed key",
            KeyRejection::Unknown => "unknown key",
            KeyRejection::Revoked => "revoked key",
            KeyRejection::Expired => "expired key",
        }
    }

    /// A sentence for the 401 response.
    pub fn message(self) -> &'static str {
        match self {
            KeyRejection::Missing => "Missing API key: send it in the X-Api-Key header.",
            KeyRejection::Malformed => {
                "Malformed API key: expected 'rsgo_' followed by 32 letters and digits."
            }
            KeyRejection::Unknown => "Invalid API key: no such key exists.",
            KeyRejection::Revoked => "API key has been revoked.",
            KeyRejection::Expired => "API key has expired.",
        }
    }
}

/// Checks the shape of a presented key and returns its hash.
pub fn presented_hash(presented: Option<&str>) -> Result<String, KeyRejection> {
    let presented = presented.ok_or(KeyRejection::Missing)?;
    if !is_well_formed(presented) {
        return Err(KeyRejection::Malformed);
    }
    Ok(hash(presented))
}

/// Finds the key whose hash is `wanted` among `candidates` and checks that it may be used at
/// `now`. Every candidate is compared in constant time, so timing reveals nothing about which matched.
pub fn verify<K: Borrow<ApiKey>>(
    wanted: &str,
    candidates: impl IntoIterator<Item = K>,
    now: Timestamp,
) -> Result<K, KeyRejection> {
    let mut found = None;
    for key in candidates {
        let hash = key.borrow().spec.key_hash.as_bytes();
        if bool::from(hash.ct_eq(wanted.as_bytes())) {
            found = Some(key);
        }
    }
    let key = found.ok_or(KeyRejection::Unknown)?;
    let spec = &key.borrow().spec;
    if spec.revoked {
        return Err(KeyRejection::Revoked);
    }
    if spec.expires_at.is_some_and(|at| at <= now) {
        return Err(KeyRejection::Expired);
    }
    Ok(key)
}

/// ApiKey objects held in memory and indexed by hash (and by name, for updates), so checking a
/// key costs one hash lookup however many keys exist.
///
/// On a store with a change log (SQLite) every lookup first reads the changes since the last
/// one, a single indexed query, so a key created, changed or revoked by another process counts
/// from the very next request. On Kubernetes the index follows a watch, as a kube-runtime
/// reflector would.
#[derive(Clone, Default)]
pub struct KeyIndex {
    keys: Arc<RwLock<Keys>>,
    /// The store whose change log is read before each lookup; `None` when a watch feeds the index.
    log: Option<Arc<dyn Store>>,
    ready: Arc<AtomicBool>,
}

#[derive(Default)]
struct Keys {
    /// Shared with the requests that present them, so a lookup copies no key.
    by_hash: HashMap<String, Arc<ApiKey>>,
    /// Object name to key hash.
    hash_of: HashMap<String, String>,
    /// The store revision the index reflects (change-log mode).
    revision: u64,
    /// A watch's initial listing, until it is complete.
    listing: Option<Vec<ApiKey>>,
}

impl Keys {
    fn insert(&mut self, key: ApiKey) {
        self.remove(&key.name_any());
        self.hash_of
            .insert(key.name_any(), key.spec.key_hash.clone());
        self.by_hash
            .insert(key.spec.key_hash.clone(), Arc::new(key));
    }

    fn remove(&mut self, name: &str) {
        if let Some(hash) = self.hash_of.remove(name) {
            self.by_hash.remove(&hash);
        }
    }
}

/// Most changes the index reads from the change log at once.
const LOG_PAGE: usize = 256;

fn kind() -> String {
    <ApiKey as kube::Resource>::kind(&()).into_owned()
}

impl KeyIndex {
    /// An index of the ApiKeys in `store`, kept current until the process ends: from the
    /// store's change log when it has one, else from a watch.
    pub async fn follow(store: Arc<dyn Store>) -> crate::Result<Self> {
        if store.changes_raw(kind(), 0, 1).await?.is_some() {
            let index = Self {
                log: Some(store),
                ..Self::default()
            };
            index.catch_up().await?;
            index.ready.store(true, Ordering::Release);
            return Ok(index);
        }
        let index = Self::default();
        let events = store.watch::<ApiKey>();
        let updated = index.clone();
        tokio::spawn(async move {
            futures::pin_mut!(events);
            while let Some(Ok(event)) = events.next().await {
                updated.apply(event);
            }
        });
        Ok(index)
    }

    /// Reads the change log since the revision the index reflects and applies it, a page at a
    /// time.
    async fn catch_up(&self) -> crate::Result<()> {
        let Some(store) = &self.log else {
            return Ok(());
        };
        loop {
            let since = self.read().revision;
            let Some(log) = store.changes_raw(kind(), since, LOG_PAGE).await? else {
                return Ok(());
            };
            let (more, target) = (log.changes.len() == LOG_PAGE, log.revision);
            self.apply_log(since, log);
            // Done once the index reflects at least what this reading saw; a concurrent lookup
            // may have applied an older reading meanwhile, and then this one reads again.
            if !more && self.read().revision >= target {
                return Ok(());
            }
        }
    }

    /// Applies changes read from revision `since`, unless a concurrent lookup moved on meanwhile.
    fn apply_log(&self, since: u64, log: crate::store::Changes) {
        let mut keys = self.write();
        if keys.revision != since || log.revision <= since {
            return;
        }
        for change in log.changes {
            let name = change.object["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            match serde_json::from_value::<ApiKey>(change.object) {
                Ok(key) if !change.deleted => keys.insert(key),
                Ok(_) => keys.remove(&name),
                Err(error) => {
                    tracing::warn!(%error, key = %name, "skipping an undecodable stored ApiKey");
                    keys.remove(&name);
                }
            }
        }
        keys.revision = log.revision;
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Keys> {
        self.keys.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Keys> {
        self.keys.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Applies one watch event.
    pub fn apply(&self, event: watcher::Event<ApiKey>) {
        let mut keys = self.write();
        match event {
            watcher::Event::Init => keys.listing = Some(Vec::new()),
            watcher::Event::InitApply(key) => keys.listing.get_or_insert_default().push(key),
            watcher::Event::InitDone => {
                let listing = keys.listing.take().unwrap_or_default();
                keys.by_hash.clear();
                keys.hash_of.clear();
                for key in listing {
                    keys.insert(key);
                }
                self.ready.store(true, Ordering::Release);
            }
            watcher::Event::Apply(key) => keys.insert(key),
            watcher::Event::Delete(key) => keys.remove(&key.name_any()),
        }
    }

    /// The key with this hash, if any, as the store holds it now (change-log mode) or as the
    /// watch last reported it.
    pub async fn lookup(&self, hash: &str) -> crate::Result<Option<Arc<ApiKey>>> {
        self.catch_up().await?;
        Ok(self.read().by_hash.get(hash).cloned())
    }

    /// Whether the first full listing has arrived.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_have_the_documented_format() {
        let key = generate();
        assert!(is_well_formed(&key.plaintext), "{}", key.prefix);
        assert_eq!(key.hash, hash(&key.plaintext));
        assert_eq!(key.hash.len(), 64);
        assert!(key.plaintext.starts_with(&key.prefix));
        assert_ne!(generate().plaintext, key.plaintext);
        assert!(!format!("{key:?}").contains(&key.plaintext));
    }

    #[test]
    fn well_formedness() {
        assert!(is_well_formed("rsgo_a1b2c3d4e5f6g7h8i9j0k1l2m3n4o5p6"));
        assert!(!is_well_formed("rsgo_a1b2c3d4e5f6g7h8i9j0k1l2m3n4o5p"));
        assert!(!is_well_formed("rsgx_a1b2c3d4e5f6g7h8i9j0k1l2m3n4o5p6"));
        assert!(!is_well_formed("rsgo_a1b2c3d4e5f6g7h8i9j0k1l2m3n4o5p-"));
    }

    #[test]
    fn wildcards_grant_hook_permissions() {
        use Permission::*;
        assert!(grants(&[AllHooks], Upgrade));
        assert!(grants(&[All], SyncSources));
        assert!(grants(&[Redeploy], Redeploy));
        assert!(!grants(&[Redeploy], Upgrade));
        assert!(!grants(&[AllHooks], All), "Hooks.* is not everything");
        assert!(grants(&[Redeploy, All], All));
    }

    #[test]
    fn permissions_keep_their_documented_names() {
        for permission in Permission::ALL {
            let json = serde_json::to_value(permission).unwrap();
            assert_eq!(json, permission.name());
            assert_eq!(
                serde_json::from_value::<Permission>(json).unwrap(),
                permission
            );
            assert_eq!(permission.name().parse::<Permission>(), Ok(permission));
        }
        let err = "Hooks.Deploy".parse::<Permission>().unwrap_err();
        assert!(
            err.contains("'Hooks.Deploy'") && err.contains("Hooks.SyncSources"),
            "{err}"
        );
        assert!(serde_json::from_value::<Permission>("Hooks.Deploy".into()).is_err());
        assert!(validate_permissions(&[]).is_err());
        assert!(validate_permissions(&[Permission::Redeploy]).is_ok());
    }

    fn key(name: &str, hash: &str) -> ApiKey {
        let mut key = ApiKey::new(name, Default::default());
        key.spec.key_hash = hash.into();
        key
    }

    #[tokio::test]
    async fn the_index_follows_listings_changes_and_deletions() {
        let index = KeyIndex::default();
        assert!(!index.is_ready());
        index.apply(watcher::Event::Init);
        index.apply(watcher::Event::InitApply(key("a", "h1")));
        assert!(
            index.lookup("h1").await.unwrap().is_none(),
            "a listing counts only once complete"
        );
        index.apply(watcher::Event::InitDone);
        assert!(index.is_ready());
        assert_eq!(index.lookup("h1").await.unwrap().unwrap().name_any(), "a");
        let mut revoked = key("a", "h1");
        revoked.spec.revoked = true;
        index.apply(watcher::Event::Apply(revoked));
        assert!(
            index.lookup("h1").await.unwrap().unwrap().spec.revoked,
            "changes replace the old copy"
        );
        index.apply(watcher::Event::Apply(key("a", "h2")));
        assert!(
            index.lookup("h1").await.unwrap().is_none(),
            "a rehashed key loses its old hash"
        );
        index.apply(watcher::Event::Delete(key("a", "h2")));
        assert!(index.lookup("h2").await.unwrap().is_none());
        index.apply(watcher::Event::Init);
        index.apply(watcher::Event::InitApply(key("b", "h3")));
        index.apply(watcher::Event::InitDone);
        assert!(index.lookup("h3").await.unwrap().is_some());
    }

    #[test]
    fn verification_reports_why_a_key_is_refused() {
        let now = Timestamp::now();
        assert_eq!(presented_hash(None), Err(KeyRejection::Missing));
        assert_eq!(presented_hash(Some("nope")), Err(KeyRejection::Malformed));
        let wanted = presented_hash(Some("rsgo_a1b2c3d4e5f6g7h8i9j0k1l2m3n4o5p6")).unwrap();
        assert_eq!(
            verify(&wanted, vec![key("x", "other")], now).unwrap_err(),
            KeyRejection::Unknown
        );
        let mut revoked = key("r", &wanted);
        revoked.spec.revoked = true;
        assert_eq!(
            verify(&wanted, vec![revoked], now).unwrap_err(),
            KeyRejection::Revoked
        );
        let mut expired = key("e", &wanted);
        expired.spec.expires_at = Some(now);
        assert_eq!(
            verify(&wanted, vec![expired], now).unwrap_err(),
            KeyRejection::Expired
        );
        assert_eq!(
            verify(&wanted, vec![key("x", "other"), key("ok", &wanted)], now)
                .unwrap()
                .name_any(),
            "ok"
        );
    }
}
