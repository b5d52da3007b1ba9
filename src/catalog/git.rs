//! Git catalog sources. Each source keeps a bare clone under the cache directory, which every
//! sync fetches into with gitoxide, so a sync without new commits transfers no objects. The
//! files of the synced commit are written out once per commit, within the source caps, and read
//! like a directory source.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use gix::bstr::ByteSlice;
use gix::object::tree::EntryKind;
use gix::remote::Direction;

use super::load::{MAX_DEPTH, MAX_MANIFEST_BYTES, MAX_SOURCE_BYTES, MAX_SOURCE_FILES};
use crate::model::GitSource;

/// How long one fetch may take before the sync gives up on it.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(120);

/// How rsgo proves itself to a remote, from the Secret a source names.
#[derive(Clone)]
pub enum Credentials {
    /// A user name and password (or access token), for an HTTPS remote.
    Token {
        /// The user name.
        username: String,
        /// The password or token; never printed.
        password: String,
    },
    /// A private key and the remote's host keys, for an SSH remote.
    Ssh {
        /// The private key (OpenSSH format); never printed.
        identity: String,
        /// `known_hosts` lines for the remote: host keys are always checked.
        known_hosts: String,
    },
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::Token { username, .. } => {
                write!(f, "Credentials({username}, password hidden)")
            }
            Credentials::Ssh { .. } => f.write_str("Credentials(SSH key hidden)"),
        }
    }
}

/// What a fetch brought.
#[derive(Debug)]
pub struct Fetched {
    /// The commit the source's ref points to.
    pub revision: String,
    /// Objects received by this fetch: 0 when the clone already had everything.
    pub objects: u64,
}

/// The clone kept for one source: fetched into, and read commit by commit.
pub struct KeptClone {
    dir: PathBuf,
    repo: gix::Repository,
    /// Held while the clone is in use, so one process at a time fetches into it.
    _lock: std::fs::File,
}

impl KeptClone {
    /// Opens (or makes) the clone kept for source `name` of `url` below `cache`. SSH
    /// `credentials` are written next to it (readable by rsgo only) for `ssh` to use. Fails when
    /// another fetch of the source still runs.
    pub fn open(
        cache: &Path,
        name: &str,
        url: &str,
        credentials: Option<&Credentials>,
    ) -> Result<KeptClone, String> {
        let dir = cache.join(name);
        std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        let lock = lock_clone(&dir)?;
        let mut repo = open_clone(&dir, url)?;
        if let Some(Credentials::Ssh {
            identity,
            known_hosts,
        }) = credentials
        {
            use_ssh_keys(&mut repo, &dir, identity, known_hosts)?;
        }
        Ok(KeptClone {
            dir,
            repo,
            _lock: lock,
        })
    }

    /// Opens the clone an earlier fetch of source `name` made from `url`, to read commits it
    /// already has. Fails, and changes nothing, when there is none for that URL.
    pub fn open_existing(cache: &Path, name: &str, url: &str) -> Result<KeptClone, String> {
        let dir = cache.join(name);
        if !dir.join("repo.git").is_dir() {
            return Err("no clone of it is kept yet".to_owned());
        }
        let lock = lock_clone(&dir)?;
        if std::fs::read_to_string(dir.join("url")).ok().as_deref() != Some(url) {
            return Err("the clone kept for it was made from another URL".to_owned());
        }
        let repo =
            gix::open(dir.join("repo.git")).map_err(|e| format!("opening the clone: {e}"))?;
        Ok(KeptClone {
            dir,
            repo,
            _lock: lock,
        })
    }

    /// Fetches `spec`, answering the remote's request for credentials with `credentials` (and
    /// never with the machine's own git credential helpers), and returns the commit its ref
    /// names.
    pub fn fetch(
        &self,
        spec: &GitSource,
        credentials: Option<Credentials>,
    ) -> Result<Fetched, String> {
        let (commit, objects) = fetch_ref(&self.repo, spec, credentials)?;
        Ok(Fetched {
            revision: commit.to_string(),
            objects,
        })
    }

    /// Writes out the files of `revision` below `path` (once per commit) and returns their
    /// folder. Trees of commits other than `revision` and those in `keep` are removed.
    pub fn checkout(
        &self,
        revision: &str,
        path: Option<&str>,
        keep: &[&str],
    ) -> Result<PathBuf, String> {
        let commit = gix::ObjectId::from_hex(revision.as_bytes())
            .map_err(|_| format!("'{revision}' is not a commit id"))?;
        let tree = write_tree(&self.repo, &self.dir, commit, path)?;
        let trees = self.dir.join("trees");
        for entry in std::fs::read_dir(&trees)
            .map_err(|e| format!("reading {}: {e}", trees.display()))?
            .flatten()
        {
            let name = entry.file_name().to_string_lossy().into_owned();
            let kept = std::iter::once(revision)
                .chain(keep.iter().copied())
                .any(|commit| tree_name(commit, path) == name);
            if !kept {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
        Ok(tree)
    }
}

/// Writes the SSH key and host keys to `<dir>/ssh/` and makes the clone's `ssh` use them and
/// nothing else: no agent, no user configuration, no unknown host.
fn use_ssh_keys(
    repo: &mut gix::Repository,
    dir: &Path,
    identity: &str,
    known_hosts: &str,
) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let ssh = dir.join("ssh");
    std::fs::create_dir_all(&ssh).map_err(|e| format!("creating {}: {e}", ssh.display()))?;
    let write = |name: &str, text: &str| -> Result<PathBuf, String> {
        let path = ssh.join(name);
        let _ = std::fs::remove_file(&path);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| format!("writing {}: {e}", path.display()))?;
        let text = if text.ends_with('\n') {
            text.to_owned()
        } else {
            format!("{text}\n")
        };
        file.write_all(text.as_bytes())
            .map_err(|e| format!("writing {}: {e}", path.display()))?;
        Ok(path)
    };
    let identity = write("identity", identity)?;
    let known_hosts = write("known_hosts", known_hosts)?;
    let quote = |path: &Path| {
        shlex::try_quote(&path.to_string_lossy())
            .map(|q| q.into_owned())
            .map_err(|_| format!("{} cannot be passed to ssh", path.display()))
    };
    let command = format!(
        "ssh -F /dev/null -i {} -o IdentitiesOnly=yes -o IdentityAgent=none -o UserKnownHostsFile={} \
         -o StrictHostKeyChecking=yes -o BatchMode=yes",
        quote(&identity)?,
        quote(&known_hosts)?
    );
    let mut config = repo.config_snapshot_mut();
    config
        .set_value(&gix::config::tree::Core::SSH_COMMAND, command.as_str())
        .map_err(|e| format!("configuring ssh: {e}"))?;
    config
        .commit()
        .map_err(|e| format!("configuring ssh: {e}"))?;
    Ok(())
}

/// Takes the lock of the clone kept in `dir`. A fetch that outlived its timeout still holds it,
/// and the next sync says so instead of racing it.
fn lock_clone(dir: &Path) -> Result<std::fs::File, String> {
    let path = dir.join("lock");
    let lock =
        std::fs::File::create(&path).map_err(|e| format!("creating {}: {e}", path.display()))?;
    lock.try_lock()
        .map_err(|_| "an earlier fetch of this source is still running".to_owned())?;
    Ok(lock)
}

/// The bare clone of `url` in `dir`, made when missing or when the source now names another URL.
fn open_clone(dir: &Path, url: &str) -> Result<gix::Repository, String> {
    let path = dir.join("repo.git");
    let url_file = dir.join("url");
    let same_url = std::fs::read_to_string(&url_file).is_ok_and(|kept| kept == url);
    if same_url && let Ok(repo) = gix::open(&path) {
        return Ok(repo);
    }
    if path.exists() {
        std::fs::remove_dir_all(&path)
            .map_err(|e| format!("removing the old clone {}: {e}", path.display()))?;
    }
    let repo = gix::init_bare(&path).map_err(|e| format!("creating a clone: {e}"))?;
    std::fs::write(&url_file, url).map_err(|e| format!("writing {}: {e}", url_file.display()))?;
    Ok(repo)
}

/// Fetches the remote's HEAD and every branch and tag, and returns the commit `spec.ref` names (the remote's HEAD
/// when unset) and how many objects were received.
fn fetch_ref(
    repo: &gix::Repository,
    spec: &GitSource,
    credentials: Option<Credentials>,
) -> Result<(gix::ObjectId, u64), String> {
    let failed = |e: &dyn std::fmt::Display| format!("fetching {}: {e}", spec.url);
    let remote = repo
        .remote_at(spec.url.as_str())
        .map_err(|e| failed(&e))?
        .with_refspecs(
            [
                "+HEAD:refs/remotes/origin/HEAD",
                "+refs/heads/*:refs/remotes/origin/*",
                "+refs/tags/*:refs/tags/*",
            ],
            Direction::Fetch,
        )
        .map_err(|e| failed(&e))?;
    let outcome = remote
        .connect(Direction::Fetch)
        .map_err(|e| failed(&e))?
        .with_credentials(move |action| {
            use gix::credentials::helper::{Action, NextAction};
            Ok(match (action, &credentials) {
                (Action::Get(context), Some(Credentials::Token { username, password })) => {
                    Some(gix::credentials::protocol::Outcome {
                        identity: gix::sec::identity::Account {
                            username: username.clone(),
                            password: password.clone(),
                            oauth_refresh_token: None,
                        },
                        next: NextAction::from(context),
                    })
                }
                _ => None,
            })
        })
        .prepare_fetch(gix::progress::Discard, Default::default())
        .map_err(|e| failed(&e))?
        .receive(gix::progress::Discard, &AtomicBool::new(false))
        .map_err(|e| failed(&e))?;
    let objects = match &outcome.status {
        gix::remote::fetch::Status::Change {
            write_pack_bundle, ..
        } => write_pack_bundle.index.num_objects as u64,
        gix::remote::fetch::Status::NoPackReceived { .. } => 0,
    };
    let commit = resolve(&outcome.ref_map.remote_refs, spec.reference.as_deref())?;
    repo.find_commit(commit)
        .map_err(|_| match &spec.reference {
            Some(reference) => {
                format!("ref '{reference}' does not name a commit of the repository")
            }
            None => "the remote's HEAD does not name a commit".to_owned(),
        })?;
    Ok((commit, objects))
}

/// The commit a ref names among the remote's refs: a full commit id, a branch, a tag (peeled),
/// a full ref name, or the remote's HEAD when `reference` is `None`.
fn resolve(
    refs: &[gix::protocol::handshake::Ref],
    reference: Option<&str>,
) -> Result<gix::ObjectId, String> {
    use gix::protocol::handshake::Ref;
    let target = |r: &Ref| -> Option<(String, gix::ObjectId)> {
        match r {
            Ref::Peeled {
                full_ref_name,
                object,
                ..
            }
            | Ref::Direct {
                full_ref_name,
                object,
            }
            | Ref::Symbolic {
                full_ref_name,
                object,
                ..
            } => Some((full_ref_name.to_str_lossy().into_owned(), *object)),
            Ref::Unborn { .. } => None,
        }
    };
    let advertised: Vec<(String, gix::ObjectId)> = refs.iter().filter_map(target).collect();
    let Some(reference) = reference else {
        return advertised
            .iter()
            .find(|(name, _)| name == "HEAD")
            .map(|(_, id)| *id)
            .ok_or_else(|| {
                "the remote has no HEAD (an empty repository?); set spec.git.ref".to_owned()
            });
    };
    if reference.len() == 40
        && let Ok(id) = gix::ObjectId::from_hex(reference.as_bytes())
    {
        return Ok(id);
    }
    let candidates = [
        format!("refs/heads/{reference}"),
        format!("refs/tags/{reference}"),
        reference.to_owned(),
    ];
    candidates
        .iter()
        .find_map(|wanted| {
            advertised
                .iter()
                .find(|(name, _)| name == wanted)
                .map(|(_, id)| *id)
        })
        .ok_or_else(|| {
            let branches: Vec<&str> = advertised
                .iter()
                .filter_map(|(name, _)| name.strip_prefix("refs/heads/"))
                .take(20)
                .collect();
            format!(
                "ref '{reference}' is not a branch or tag of the remote (branches: {})",
                if branches.is_empty() {
                    "none".to_owned()
                } else {
                    branches.join(", ")
                }
            )
        })
}

/// The folder name of the files of `commit` below `path`: a source whose `path` changes gets a
/// fresh folder for the same commit.
fn tree_name(commit: &str, path: Option<&str>) -> String {
    use sha2::{Digest, Sha256};
    match path {
        None => commit.to_owned(),
        Some(path) => format!(
            "{commit}-{}",
            &hex::encode(Sha256::digest(path.as_bytes()))[..12]
        ),
    }
}

/// Writes the files of `commit` below `path` to `<dir>/trees/`, unless already there, and
/// returns that folder.
fn write_tree(
    repo: &gix::Repository,
    dir: &Path,
    commit: gix::ObjectId,
    path: Option<&str>,
) -> Result<PathBuf, String> {
    let trees = dir.join("trees");
    let out = trees.join(tree_name(&commit.to_string(), path));
    if !out.exists() {
        repo.find_commit(commit)
            .map_err(|_| format!("commit {commit} is not in the clone"))?;
        let tree = repo
            .find_commit(commit)
            .and_then(|c| c.tree())
            .map_err(|e| format!("reading commit {commit}: {e}"))?;
        let tree = match path {
            None => tree,
            Some(path) => {
                let entry = tree
                    .lookup_entry_by_path(path)
                    .map_err(|e| format!("reading commit {commit}: {e}"))?
                    .filter(|e| e.mode().is_tree())
                    .ok_or_else(|| format!("spec.git.path '{path}' is not a folder at {commit}"))?;
                repo.find_tree(entry.object_id())
                    .map_err(|e| format!("reading commit {commit}: {e}"))?
            }
        };
        let partial = trees.join(format!(".{}.partial", tree_name(&commit.to_string(), path)));
        if partial.exists() {
            std::fs::remove_dir_all(&partial)
                .map_err(|e| format!("removing {}: {e}", partial.display()))?;
        }
        let mut budget = Budget::default();
        write_entries(repo, &tree, &partial, 0, &mut budget)?;
        std::fs::rename(&partial, &out).map_err(|e| format!("writing {}: {e}", out.display()))?;
    }
    Ok(out)
}

/// What writing out one commit may still use: the caps of a directory source.
#[derive(Default)]
struct Budget {
    files: usize,
    bytes: u64,
}

/// Writes the entries of `tree` that the loader may read into `out`. Files are cut one byte past the manifest cap, so the
/// loader reports them as too large; links are written as links, which the loader follows only
/// inside the source; submodules are skipped.
fn write_entries(
    repo: &gix::Repository,
    tree: &gix::Tree<'_>,
    out: &Path,
    depth: usize,
    budget: &mut Budget,
) -> Result<(), String> {
    let failed = |e: &dyn std::fmt::Display| format!("writing out the source: {e}");
    std::fs::create_dir_all(out).map_err(|e| failed(&e))?;
    for entry in tree.iter() {
        let entry = entry.map_err(|e| failed(&e))?;
        let name = entry.filename().to_str_lossy().into_owned();
        if name.is_empty() || name == "." || name == ".." || name.contains('/') {
            continue;
        }
        let path = out.join(&name);
        match entry.mode().kind() {
            EntryKind::Tree => {
                if depth < MAX_DEPTH {
                    let sub = repo.find_tree(entry.object_id()).map_err(|e| failed(&e))?;
                    write_entries(repo, &sub, &path, depth + 1, budget)?;
                }
            }
            EntryKind::Blob | EntryKind::BlobExecutable if !super::load::is_source_file(&name) => {}
            EntryKind::Blob | EntryKind::BlobExecutable | EntryKind::Link => {
                budget.files += 1;
                if budget.files > MAX_SOURCE_FILES {
                    return Err(format!(
                        "the repository holds more than the {MAX_SOURCE_FILES} files rsgo reads from one source"
                    ));
                }
                let blob = repo.find_blob(entry.object_id()).map_err(|e| failed(&e))?;
                let data = &blob.data[..blob.data.len().min(MAX_MANIFEST_BYTES as usize + 1)];
                budget.bytes += data.len() as u64;
                if budget.bytes > MAX_SOURCE_BYTES {
                    return Err(format!(
                        "the repository's files add up to more than {} MiB, the most rsgo reads from one source",
                        MAX_SOURCE_BYTES / (1024 * 1024)
                    ));
                }
                if entry.mode().kind() == EntryKind::Link {
                    let target = String::from_utf8_lossy(data).into_owned();
                    std::os::unix::fs::symlink(target, &path).map_err(|e| failed(&e))?;
                } else {
                    std::fs::write(&path, data).map_err(|e| failed(&e))?;
                }
            }
            EntryKind::Commit => {}
        }
    }
    Ok(())
}
