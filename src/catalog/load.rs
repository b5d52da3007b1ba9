//! Reading a directory source: every manifest below it, never leaving it, within size caps, and
//! without ever quoting a file it could not parse.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use semver::Version;

use super::compose::{COMPOSE_FILES, ComposeFiles, OVERRIDE_FILES, parse_compose};
use super::manifest::StackEntry;
use super::{
    Loaded, Manifest, ManifestError, ManifestProblem, Metadata, ProductVersion, Service,
    StackDefinition, Stacks, Variable, check_manifest_name, parse_version,
};
use crate::{Error, Result};

/// Largest manifest file rsgo reads.
pub const MAX_MANIFEST_BYTES: u64 = 1024 * 1024;
/// Largest total size of the manifests of one source.
pub const MAX_SOURCE_BYTES: u64 = 64 * 1024 * 1024;
/// Most manifest files one source may hold.
pub const MAX_SOURCE_FILES: usize = 10_000;
/// Deepest directory nesting read in a source.
pub(super) const MAX_DEPTH: usize = 32;

/// Parses one manifest that includes no fragment files. `Ok(None)` is a fragment (no
/// `productVersion`), not an error. Errors name the line and column or the field, and the kind
/// of problem, never the file's contents.
pub fn parse_manifest(path: &Path, text: &str) -> Result<Option<ProductVersion>, ManifestError> {
    parse_manifest_with(path, text, &mut |_| {
        Err("includes are only read from a catalog source".into())
    })
}

/// Like [`parse_manifest`], reading each `include:` of a multi-stack product through `include`,
/// which is given the path as the manifest wrote it and answers the fragment's text or why it
/// cannot be read.
fn parse_manifest_with(
    path: &Path,
    text: &str,
    include: &mut dyn FnMut(&str) -> Result<String, String>,
) -> Result<Option<ProductVersion>, ManifestError> {
    parse(text, include)
        .map_err(|problem| ManifestError {
            file: path.to_owned(),
            problem,
        })
        .map(|parsed| {
            parsed.map(|(product, version, metadata, stacks)| ProductVersion {
                product,
                version,
                metadata,
                stacks,
                path: path.to_owned(),
            })
        })
}

/// What a manifest defines: product id, version, metadata and stacks.
type Parsed = (String, Version, Metadata, Stacks);

fn parse(
    text: &str,
    include: &mut dyn FnMut(&str) -> Result<String, String>,
) -> Result<Option<Parsed>, ManifestProblem> {
    let manifest: Manifest = serde_yaml_ng::from_str(text).map_err(|e| describe_yaml_error(&e))?;
    if let Some(format) = &manifest.version
        && !(format.0 == "1" || format.0.starts_with("1."))
    {
        return Err(ManifestProblem::field(
            "version",
            format!(
                "manifest format '{}' is not supported; rsgo reads 1.x",
                format.0
            ),
        ));
    }
    let Some(metadata) = manifest.metadata.clone() else {
        return Ok(None);
    };
    let Some(raw_version) = &metadata.product_version else {
        return Ok(None);
    };
    let version = parse_version(&raw_version.0)
        .map_err(|e| ManifestProblem::field("metadata.productVersion", e))?;
    check_patterns("sharedVariables", &manifest.shared_variables)?;
    let Manifest {
        shared_variables,
        variables,
        services,
        volumes,
        networks,
        stacks,
        ..
    } = manifest;
    let top = Part {
        variables,
        services,
        volumes,
        networks,
    };
    let stacks = match stacks {
        None if !shared_variables.is_empty() => {
            return Err(ManifestProblem::field(
                "sharedVariables",
                "only a multi-stack product shares variables; declare them under variables",
            ));
        }
        None => Stacks::Single(definition("", &BTreeMap::new(), top)?),
        Some(_) if !top.is_empty() => {
            return Err(ManifestProblem::field(
                "stacks",
                "a multi-stack product defines variables, services, volumes and networks in \
                 each stack, not at the top level",
            ));
        }
        Some(entries) if entries.is_empty() => {
            return Err(ManifestProblem::field("stacks", "declares no stacks"));
        }
        Some(entries) => {
            let mut stacks = BTreeMap::new();
            for (name, entry) in entries {
                check_manifest_name("stack", &name)
                    .map_err(|e| ManifestProblem::field("stacks", e))?;
                let prefix = format!("stacks.{name}.");
                let part = stack_part(&prefix, entry, include)?;
                stacks.insert(name, definition(&prefix, &shared_variables, part)?);
            }
            Stacks::Multi(stacks)
        }
    };
    let product = metadata
        .product_id
        .clone()
        .unwrap_or_else(|| metadata.name.clone());
    Ok(Some((product, version, metadata, stacks)))
}

/// What one stack declares before shared variables are merged in.
struct Part {
    variables: BTreeMap<String, Variable>,
    services: BTreeMap<String, Service>,
    volumes: BTreeMap<String, serde_yaml_ng::Value>,
    networks: BTreeMap<String, serde_yaml_ng::Value>,
}

impl Part {
    fn is_empty(&self) -> bool {
        self.variables.is_empty()
            && self.services.is_empty()
            && self.volumes.is_empty()
            && self.networks.is_empty()
    }
}

/// A stack of a multi-stack product as written inline, or as its fragment file defines it.
fn stack_part(
    prefix: &str,
    entry: StackEntry,
    include: &mut dyn FnMut(&str) -> Result<String, String>,
) -> Result<Part, ManifestProblem> {
    let inline = Part {
        variables: entry.variables,
        services: entry.services,
        volumes: entry.volumes,
        networks: entry.networks,
    };
    let Some(file) = entry.include else {
        return Ok(inline);
    };
    let field = format!("{prefix}include");
    if !inline.is_empty() {
        return Err(ManifestProblem::field(
            field,
            "a stack either includes a fragment or defines its services inline, not both",
        ));
    }
    let shown: String = file
        .chars()
        .take(200)
        .flat_map(char::escape_debug)
        .collect();
    let text =
        include(&file).map_err(|e| ManifestProblem::field(&field, format!("'{shown}' {e}")))?;
    let fragment: Manifest = serde_yaml_ng::from_str(&text).map_err(|e| {
        ManifestProblem::field(&field, format!("'{shown}': {}", describe_yaml_error(&e)))
    })?;
    let refuse = |reason: &str| {
        Err(ManifestProblem::field(
            &field,
            format!("'{shown}' {reason}"),
        ))
    };
    if fragment
        .metadata
        .as_ref()
        .is_some_and(|m| m.product_version.is_some())
    {
        return refuse("is a product (it has metadata.productVersion), not a fragment");
    }
    if fragment.stacks.is_some() || !fragment.shared_variables.is_empty() {
        return refuse("is a fragment and cannot declare stacks or sharedVariables");
    }
    Ok(Part {
        variables: fragment.variables,
        services: fragment.services,
        volumes: fragment.volumes,
        networks: fragment.networks,
    })
}

/// Checks one stack's declarations and merges the shared variables under its own. `prefix` is
/// where the stack sits in the manifest (`""` or `stacks.NAME.`), for messages.
fn definition(
    prefix: &str,
    shared: &BTreeMap<String, Variable>,
    part: Part,
) -> Result<StackDefinition, ManifestProblem> {
    let field = |name: &str| format!("{prefix}{name}");
    if part.services.is_empty() {
        return Err(ManifestProblem::field(
            field("services"),
            "the manifest defines no services",
        ));
    }
    let names = [
        (
            "services",
            "service",
            part.services.keys().collect::<Vec<_>>(),
        ),
        ("volumes", "volume", part.volumes.keys().collect()),
        ("networks", "network", part.networks.keys().collect()),
    ];
    for (key, what, keys) in names {
        for name in keys {
            check_manifest_name(what, name).map_err(|e| ManifestProblem::field(field(key), e))?;
        }
    }
    for (name, service) in &part.services {
        if service.container_name.is_some() {
            return Err(ManifestProblem::field(
                field(&format!("services.{name}.containerName")),
                "is not supported: rsgo names every container after its environment, stack and \
                 service, so that two stacks of one product never collide; remove it",
            ));
        }
    }
    for (key, declared) in [("volumes", &part.volumes), ("networks", &part.networks)] {
        for (name, options) in declared {
            let empty = match options {
                serde_yaml_ng::Value::Null => true,
                serde_yaml_ng::Value::Mapping(map) => map.is_empty(),
                _ => false,
            };
            if !empty {
                return Err(ManifestProblem::field(
                    field(&format!("{key}.{name}")),
                    format!(
                        "options are not supported; rsgo creates {key} with the runtime's \
                         defaults, so declare it as `{name}: {{}}`"
                    ),
                ));
            }
        }
    }
    check_patterns(&field("variables"), &part.variables)?;
    let mut variables = shared.clone();
    variables.extend(part.variables);
    Ok(StackDefinition {
        variables,
        services: part.services,
        volumes: part.volumes.into_keys().collect(),
        networks: part.networks.into_keys().collect(),
    })
}

/// Every `pattern` under `field` must be a valid regular expression.
fn check_patterns(
    field: &str,
    variables: &BTreeMap<String, Variable>,
) -> Result<(), ManifestProblem> {
    for (name, variable) in variables {
        if let Some(pattern) = &variable.pattern {
            regex::Regex::new(pattern).map_err(|e| {
                ManifestProblem::field(
                    format!("{field}.{name}.pattern"),
                    format!("not a valid pattern: {e}"),
                )
            })?;
        }
    }
    Ok(())
}

/// A YAML error as `line L, column C: reason`, with every value the parser quoted left out, so a
/// file that is not a manifest (a secret, say) is never echoed into logs, statuses or responses.
fn describe_yaml_error(error: &serde_yaml_ng::Error) -> ManifestProblem {
    let text = error.to_string();
    let text = match (error.location(), text.rfind(" at line ")) {
        (Some(_), Some(at)) => &text[..at],
        _ => text.as_str(),
    };
    let quoted = regex::Regex::new(r#" ?"(?:[^"\\]|\\.)*"| ?`([^`]*)`"#).expect("a valid pattern");
    let identifier =
        regex::Regex::new(r"^[A-Za-z_][A-Za-z0-9_.-]{0,39}$").expect("a valid pattern");
    let reason = quoted.replace_all(text, |c: &regex::Captures| match c.get(1) {
        Some(name) if identifier.is_match(name.as_str()) => format!(" '{}'", name.as_str()),
        _ => String::new(),
    });
    ManifestProblem::Syntax {
        at: error.location().map(|at| (at.line(), at.column())),
        reason: reason.chars().take(400).collect(),
    }
}

/// Reads every `*.yaml`/`*.yml` file below `dir`. Fails only when the source as a whole cannot be
/// read (the directory is missing, or it holds more than the caps allow); a broken file is
/// reported in [`Loaded::errors`], named relative to `dir`, and the others still load.
/// Symbolic links are followed only while they stay inside `dir`.
pub fn load_directory(dir: &Path) -> Result<Loaded> {
    load_source(dir, None)
}

/// Like [`load_directory`], where the source's top folder is called `root_name` (a compose
/// project there is named after it) instead of by its own name on disk, such as the folder a
/// git source reads.
pub fn load_source(dir: &Path, root_name: Option<&str>) -> Result<Loaded> {
    let root = std::fs::canonicalize(dir)
        .map_err(|e| Error::io(format!("reading catalog directory {}", dir.display()), e))?;
    let root_name = root_name.map(str::to_owned).unwrap_or_else(|| {
        root.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    });
    let mut walk = Walk {
        root_name,
        root: root.clone(),
        files: Vec::new(),
        compose: Vec::new(),
        errors: Vec::new(),
        visited: vec![root.clone()],
    };
    walk.directory(&root, Path::new(""), 0)?;
    let Walk {
        mut files,
        mut errors,
        compose,
        ..
    } = walk;
    if files.len() > MAX_SOURCE_FILES {
        return Err(Error::Invalid(format!(
            "the source holds {} manifest files, more than the {MAX_SOURCE_FILES} rsgo reads",
            files.len()
        )));
    }
    files.sort();
    let mut loaded = Loaded::default();
    let total = std::cell::Cell::new(0u64);
    let mut seen: BTreeMap<(String, Version), PathBuf> = BTreeMap::new();
    for (relative, path) in files {
        let mut include = |file: &str| {
            let text = read_include(&root, &path, file)?;
            total.set(total.get() + text.len() as u64);
            Ok(text)
        };
        let outcome = read_capped(&path)
            .map_err(|reason| ManifestError {
                file: relative.clone(),
                problem: ManifestProblem::NotRead(reason),
            })
            .and_then(|text| {
                total.set(total.get() + text.len() as u64);
                parse_manifest_with(&relative, &text, &mut include)
            });
        if total.get() > MAX_SOURCE_BYTES {
            return Err(too_much());
        }
        match outcome {
            Ok(Some(pv)) => add(pv, &mut loaded, &mut errors, &mut seen),
            Ok(None) => {}
            Err(error) => errors.push(error),
        }
    }
    for folder in compose {
        let file = folder
            .main
            .as_ref()
            .map(|(r, _)| r.clone())
            .unwrap_or_default();
        match read_compose(&folder, &total) {
            Ok(pv) => add(pv, &mut loaded, &mut errors, &mut seen),
            Err(problem) => errors.push(ManifestError { file, problem }),
        }
        if total.get() > MAX_SOURCE_BYTES {
            return Err(too_much());
        }
    }
    errors.sort_by(|a, b| a.file.cmp(&b.file));
    loaded.errors = errors;
    Ok(loaded)
}

/// Keeps a product version unless an earlier file of the source defines the same one.
fn add(
    pv: ProductVersion,
    loaded: &mut Loaded,
    errors: &mut Vec<ManifestError>,
    seen: &mut BTreeMap<(String, Version), PathBuf>,
) {
    let key = (pv.product.clone(), pv.version.clone());
    if let Some(first) = seen.get(&key) {
        errors.push(ManifestError {
            file: pv.path.clone(),
            problem: ManifestProblem::Duplicate {
                product: pv.product,
                version: pv.version,
                first: first.clone(),
            },
        });
    } else {
        seen.insert(key, pv.path.clone());
        loaded.versions.push(pv);
    }
}

/// Reads a compose folder's files and checks its stack like a manifest's.
fn read_compose(
    folder: &ComposeFolder,
    total: &std::cell::Cell<u64>,
) -> Result<ProductVersion, ManifestProblem> {
    let read = |file: &Option<(PathBuf, PathBuf)>| -> Result<Option<String>, ManifestProblem> {
        let Some((relative, real)) = file else {
            return Ok(None);
        };
        let text = read_capped(real).map_err(|reason| {
            ManifestProblem::NotRead(format!("{}: {reason}", relative.display()))
        })?;
        total.set(total.get() + text.len() as u64);
        Ok(Some(text))
    };
    let (main, overrides, env, version) = (
        read(&folder.main)?.unwrap_or_default(),
        read(&folder.overrides)?,
        read(&folder.env)?,
        read(&folder.version)?,
    );
    let product = parse_compose(&ComposeFiles {
        folder: &folder.name,
        main: &main,
        overrides: overrides.as_deref(),
        env: env.as_deref(),
        version: version.as_deref(),
    })?;
    let part = Part {
        variables: product.variables,
        services: product.services,
        volumes: product.volumes,
        networks: product.networks,
    };
    Ok(ProductVersion {
        product: product.product,
        version: product.version,
        metadata: product.metadata,
        stacks: Stacks::Single(definition("", &BTreeMap::new(), part)?),
        path: folder
            .main
            .as_ref()
            .map(|(r, _)| r.clone())
            .unwrap_or_default(),
    })
}

/// Why a source whose files add up to more than [`MAX_SOURCE_BYTES`] is not read.
fn too_much() -> Error {
    Error::Invalid(format!(
        "the source's manifests add up to more than {} MiB, the most rsgo reads from one source",
        MAX_SOURCE_BYTES / (1024 * 1024)
    ))
}

/// Why a file over [`MAX_MANIFEST_BYTES`] is not read.
fn too_large() -> String {
    format!(
        "is larger than {} KiB, the most rsgo reads from one manifest",
        MAX_MANIFEST_BYTES / 1024
    )
}

/// Whether a file of this name is one the loader reads: a `.yaml` or `.yml` manifest.
pub(super) fn is_catalog_file(name: &str) -> bool {
    matches!(
        Path::new(name).extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml")
    )
}

/// Whether git sources write out a file of this name: manifests, and the `.env` and `VERSION`
/// files of compose products.
pub(super) fn is_source_file(name: &str) -> bool {
    is_catalog_file(name) || name == ".env" || name == "VERSION"
}

/// Reads the fragment `file` that the manifest at `manifest` includes: a relative path from the
/// manifest's folder to a regular file that stays inside the source `root`.
fn read_include(root: &Path, manifest: &Path, file: &str) -> Result<String, String> {
    let relative = Path::new(file);
    if file.is_empty() || relative.is_absolute() {
        return Err("is not a path relative to the manifest".into());
    }
    let folder = manifest.parent().unwrap_or(root);
    let real = std::fs::canonicalize(folder.join(relative))
        .map_err(|_| "does not exist in the source".to_owned())?;
    if !real.starts_with(root) {
        return Err("leads out of the source; not read".into());
    }
    let meta = std::fs::metadata(&real).map_err(|e| format!("cannot be read: {e}"))?;
    if !meta.is_file() {
        return Err("is not a regular file; not read".into());
    }
    read_capped(&real)
}

/// Reads a file of at most [`MAX_MANIFEST_BYTES`].
fn read_capped(path: &Path) -> Result<String, String> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|e| format!("cannot be read: {e}"))?;
    let mut text = String::new();
    file.take(MAX_MANIFEST_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::InvalidData => "is not UTF-8 text".to_owned(),
            _ => format!("cannot be read: {e}"),
        })?;
    if text.len() as u64 > MAX_MANIFEST_BYTES {
        return Err(too_large());
    }
    Ok(text)
}

/// A folder of a source that holds a compose file: each file as (path relative to the root,
/// path to read).
#[derive(Default)]
struct ComposeFolder {
    name: String,
    main: Option<(PathBuf, PathBuf)>,
    overrides: Option<(PathBuf, PathBuf)>,
    env: Option<(PathBuf, PathBuf)>,
    version: Option<(PathBuf, PathBuf)>,
}

/// A walk through a source directory that never leaves it.
struct Walk {
    root: PathBuf,
    /// What the top folder is called: a compose project there is named after it.
    root_name: String,
    /// (path relative to the root, path to read).
    files: Vec<(PathBuf, PathBuf)>,
    /// Folders holding a compose file.
    compose: Vec<ComposeFolder>,
    errors: Vec<ManifestError>,
    /// Directories already read, by real path, so links cannot make loops.
    visited: Vec<PathBuf>,
}

impl Walk {
    /// Reports a file or directory that is not read.
    fn not_read(&mut self, relative: &Path, reason: impl Into<String>) {
        self.errors.push(ManifestError {
            file: relative.to_owned(),
            problem: ManifestProblem::NotRead(reason.into()),
        });
    }

    fn directory(&mut self, dir: &Path, relative: &Path, depth: usize) -> Result<()> {
        let reading = |e| Error::io(format!("reading catalog directory {}", dir.display()), e);
        let mut entries = std::fs::read_dir(dir)
            .map_err(reading)?
            .collect::<std::io::Result<Vec<_>>>()
            .map_err(reading)?;
        // Sorted, so which of two names reaching one directory is read is always the same.
        entries.sort_by_key(|e| e.file_name());
        let names: Vec<String> = entries
            .iter()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        // The first compose file (in compose's own order) makes the folder a compose product;
        // its override file, `.env` and `VERSION` belong to it.
        let main = COMPOSE_FILES.iter().find(|f| names.iter().any(|n| n == *f));
        let overrides = OVERRIDE_FILES
            .iter()
            .find(|f| names.iter().any(|n| n == *f));
        let mut compose = main.map(|_| ComposeFolder {
            name: match relative.file_name() {
                Some(name) => name.to_string_lossy().into_owned(),
                None => self.root_name.clone(),
            },
            ..Default::default()
        });
        for entry in entries {
            let path = entry.path();
            let file_name = entry.file_name().to_string_lossy().into_owned();
            let relative = relative.join(entry.file_name());
            let part_of_compose = compose.is_some()
                && (Some(&file_name.as_str()) == main
                    || Some(&file_name.as_str()) == overrides
                    || file_name == ".env"
                    || file_name == "VERSION");
            let is_manifest = is_catalog_file(&file_name) || part_of_compose;
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            let (real, meta) = if kind.is_symlink() {
                // Only links that stay inside the source are followed; where the others lead
                // is not said.
                match std::fs::canonicalize(&path) {
                    Ok(real) if real.starts_with(&self.root) => match std::fs::metadata(&real) {
                        Ok(meta) => (real, meta),
                        Err(_) => continue,
                    },
                    Ok(_) => {
                        if is_manifest || path.is_dir() {
                            self.not_read(
                                &relative,
                                "is a symbolic link that leads out of the source; not read",
                            );
                        }
                        continue;
                    }
                    Err(_) => {
                        if is_manifest {
                            self.not_read(&relative, "is a broken symbolic link");
                        }
                        continue;
                    }
                }
            } else {
                match entry.metadata() {
                    Ok(meta) => (path.clone(), meta),
                    Err(_) => continue,
                }
            };
            if meta.is_dir() {
                if self.visited.contains(&real) {
                    continue;
                }
                if depth + 1 > MAX_DEPTH {
                    self.not_read(
                        &relative,
                        format!("nested deeper than {MAX_DEPTH} directories; not read"),
                    );
                    continue;
                }
                self.visited.push(real.clone());
                self.directory(&real, &relative, depth + 1)?;
            } else if is_manifest {
                if !meta.is_file() {
                    self.not_read(&relative, "is not a regular file; not read");
                } else if meta.len() > MAX_MANIFEST_BYTES {
                    self.not_read(&relative, too_large());
                } else if let (true, Some(folder)) = (part_of_compose, compose.as_mut()) {
                    let slot = match file_name.as_str() {
                        ".env" => &mut folder.env,
                        "VERSION" => &mut folder.version,
                        name if Some(&name) == main => &mut folder.main,
                        _ => &mut folder.overrides,
                    };
                    *slot = Some((relative, real));
                } else {
                    self.files.push((relative, real));
                }
            }
            if self.files.len() > MAX_SOURCE_FILES {
                return Ok(());
            }
        }
        self.compose.extend(compose.filter(|c| c.main.is_some()));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_errors_never_echo_the_file() {
        let secret = "root:x:0:0:root:/root:/bin/bash\nadmin-token: s3cr3t-value-123\n";
        let err = parse_manifest(Path::new("passwd.yaml"), secret)
            .unwrap_err()
            .problem
            .to_string();
        assert!(!err.contains("root:x") && !err.contains("s3cr3t"), "{err}");
        let err = parse_manifest(Path::new("t.yaml"), "{\"token\": \"s3cr3t\"}")
            .unwrap_err()
            .problem
            .to_string();
        assert!(!err.contains("s3cr3t"), "{err}");
        assert!(
            err.starts_with("line 1, column 2: unknown field 'token'"),
            "{err}"
        );
        let err = parse_manifest(
            Path::new("s.yaml"),
            "metadata: {name: x}\nservices: {web: {image: x, ports: [[\"s3cr3t\"]]}}\n",
        )
        .unwrap_err()
        .problem
        .to_string();
        assert!(!err.contains("s3cr3t") && err.contains("line 2"), "{err}");
        let err = parse_manifest(Path::new("n.yaml"), "metadata: {name: x}\nvolumes: 12345\n")
            .unwrap_err()
            .problem
            .to_string();
        assert!(!err.contains("12345"), "{err}");
    }

    #[test]
    fn manifest_names_must_suit_every_runtime() {
        let bad = "metadata: {name: x, productVersion: '1.0.0'}\nservices:\n  'we b': {image: x}\n";
        let err = parse_manifest(Path::new("b.yaml"), bad)
            .unwrap_err()
            .problem
            .to_string();
        assert!(err.contains("service name 'we b'"), "{err}");
        let bad = "metadata: {name: x, productVersion: '1.0.0'}\nservices:\n  web: {image: x}\nvolumes:\n  '../up': {}\n";
        assert!(
            parse_manifest(Path::new("b.yaml"), bad)
                .unwrap_err()
                .to_string()
                .contains("volume name")
        );
    }

    fn lines(loaded: &Loaded) -> Vec<String> {
        loaded.errors.iter().map(ToString::to_string).collect()
    }

    fn write(path: &Path, text: &str) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    const GOOD: &str =
        "metadata: {name: app, productVersion: '1.0.0'}\nservices:\n  web: {image: x}\n";

    #[test]
    fn links_never_lead_out_of_the_source() {
        let outside = tempfile::TempDir::new().unwrap();
        write(&outside.path().join("secret.yaml"), "token: s3cr3t\n");
        write(&outside.path().join("dir/other.yaml"), GOOD);
        let source = tempfile::TempDir::new().unwrap();
        write(&source.path().join("good/app.yaml"), GOOD);
        let link = |target: &Path, name: &str| {
            std::os::unix::fs::symlink(target, source.path().join(name)).unwrap()
        };
        link(&outside.path().join("secret.yaml"), "secret.yaml");
        link(Path::new("/etc/passwd"), "passwd.yml");
        link(&outside.path().join("dir"), "escape");
        link(&source.path().join("good"), "inside");
        link(source.path(), "loop");
        let loaded = load_directory(source.path()).unwrap();
        assert_eq!(loaded.versions.len(), 1, "{:?}", loaded.errors);
        let lines = lines(&loaded);
        let errors = lines.join("\n");
        assert!(
            loaded
                .errors
                .iter()
                .all(|e| matches!(e.problem, ManifestProblem::NotRead(_)))
        );
        assert_eq!(
            lines,
            [
                "escape: is a symbolic link that leads out of the source; not read",
                "passwd.yml: is a symbolic link that leads out of the source; not read",
                "secret.yaml: is a symbolic link that leads out of the source; not read",
            ],
            "{errors}"
        );
        assert!(!errors.contains("s3cr3t") && !errors.contains("root:"));
        assert!(!errors.contains(&outside.path().display().to_string()));
    }

    #[test]
    fn sizes_are_capped_per_file_and_per_source() {
        let source = tempfile::TempDir::new().unwrap();
        write(&source.path().join("app.yaml"), GOOD);
        let big = format!("{GOOD}# {}\n", "x".repeat(MAX_MANIFEST_BYTES as usize));
        write(&source.path().join("big.yaml"), &big);
        let fifo = source.path().join("pipe.yaml");
        assert!(
            std::process::Command::new("mkfifo")
                .arg(&fifo)
                .status()
                .unwrap()
                .success()
        );
        let loaded = load_directory(source.path()).unwrap();
        assert_eq!(loaded.versions.len(), 1);
        assert_eq!(
            lines(&loaded),
            [
                "big.yaml: is larger than 1024 KiB, the most rsgo reads from one manifest",
                "pipe.yaml: is not a regular file; not read",
            ]
        );
        let many = tempfile::TempDir::new().unwrap();
        for i in 0..=MAX_SOURCE_FILES {
            std::fs::write(many.path().join(format!("{i}.yaml")), "").unwrap();
        }
        let err = load_directory(many.path()).unwrap_err().to_string();
        assert!(err.contains("more than the 10000"), "{err}");
    }

    #[test]
    fn the_example_multi_stack_product_loads_with_its_fragments() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/catalog");
        let loaded = load_directory(&dir).unwrap();
        assert!(loaded.errors.is_empty(), "{:?}", lines(&loaded));
        let platform: Vec<_> = loaded
            .versions
            .iter()
            .filter(|pv| pv.product == "platform")
            .collect();
        assert_eq!(
            platform.len(),
            2,
            "two versions; the fragments are not products"
        );
        let v1 = platform.iter().find(|pv| pv.version.minor == 0).unwrap();
        assert_eq!(v1.metadata.category.as_deref(), Some("examples"));
        assert_eq!(v1.metadata.tags, ["multi-stack", "example"]);
        let worker = v1.stack(Some("worker")).unwrap();
        assert_eq!(
            worker.variables.keys().collect::<Vec<_>>(),
            ["BATCH", "GREETING", "IMAGE"],
            "shared variables join the fragment's own"
        );
        assert!(worker.services.contains_key("worker"));
        let web = v1.stack(Some("web")).unwrap();
        assert!(web.services.contains_key("web") && !web.services.contains_key("worker"));
        let err = v1.stack(None).unwrap_err();
        assert!(err.contains("several stacks (web, worker)"), "{err}");
        let err = v1.stack(Some("db")).unwrap_err();
        assert!(
            err.contains("no stack 'db'; its stacks are web, worker"),
            "{err}"
        );
    }

    fn problem(text: &str) -> String {
        parse_manifest(Path::new("m.yaml"), text)
            .unwrap_err()
            .problem
            .to_string()
    }

    #[test]
    fn multi_stack_rules_are_enforced_with_the_field_named() {
        const HEAD: &str = "metadata: {name: p, productVersion: '1.0.0'}\n";
        let err = problem(&format!(
            "{HEAD}services: {{a: {{image: x}}}}\nstacks: {{s: {{services: {{b: {{image: y}}}}}}}}\n"
        ));
        assert!(
            err.starts_with("stacks: a multi-stack product defines"),
            "{err}"
        );
        let err = problem(&format!("{HEAD}stacks: {{}}\n"));
        assert_eq!(err, "stacks: declares no stacks");
        let err = problem(&format!("{HEAD}stacks: {{s: {{}}}}\n"));
        assert_eq!(err, "stacks.s.services: the manifest defines no services");
        let err = problem(&format!(
            "{HEAD}sharedVariables: {{A: {{}}}}\nservices: {{a: {{image: x}}}}\n"
        ));
        assert!(
            err.starts_with("sharedVariables: only a multi-stack"),
            "{err}"
        );
        let err = problem(&format!(
            "{HEAD}stacks: {{s: {{include: f.yaml, services: {{a: {{image: x}}}}}}}}\n"
        ));
        assert!(
            err.starts_with("stacks.s.include: a stack either includes"),
            "{err}"
        );
        let err = problem(&format!("{HEAD}stacks: {{s: {{include: f.yaml}}}}\n"));
        assert_eq!(
            err,
            "stacks.s.include: 'f.yaml' includes are only read from a catalog source"
        );
        let err = problem(&format!(
            "{HEAD}sharedVariables: {{A: {{pattern: '('}}}}\nstacks: {{s: {{services: {{a: {{image: x}}}}}}}}\n"
        ));
        assert!(
            err.starts_with("sharedVariables.A.pattern: not a valid pattern"),
            "{err}"
        );
        let err = problem(&format!(
            "{HEAD}stacks: {{'a b': {{services: {{a: {{image: x}}}}}}}}\n"
        ));
        assert!(err.contains("stack name 'a b' is not allowed"), "{err}");
    }

    #[test]
    fn keys_rsgo_cannot_honour_are_refused_by_name() {
        const HEAD: &str = "metadata: {name: p, productVersion: '1.0.0'}\n";
        let err = problem(&format!(
            "{HEAD}services: {{a: {{image: x, containerName: fixed}}}}\n"
        ));
        assert!(
            err.starts_with("services.a.containerName: is not supported"),
            "{err}"
        );
        let err = problem(&format!(
            "{HEAD}services: {{a: {{image: x}}}}\nvolumes: {{data: {{driver: nfs}}}}\n"
        ));
        assert!(
            err.starts_with("volumes.data: options are not supported"),
            "{err}"
        );
        let err = problem(&format!(
            "{HEAD}stacks: {{s: {{services: {{a: {{image: x}}}}, networks: {{n: {{external: true}}}}}}}}\n"
        ));
        assert!(
            err.starts_with("stacks.s.networks.n: options are not supported"),
            "{err}"
        );
        let ok = format!("{HEAD}services: {{a: {{image: x}}}}\nvolumes: {{data: {{}}, logs: }}\n");
        assert!(parse_manifest(Path::new("m.yaml"), &ok).is_ok());
    }

    #[test]
    fn includes_stay_inside_the_source_and_must_be_fragments() {
        let outside = tempfile::TempDir::new().unwrap();
        write(
            &outside.path().join("secret.yaml"),
            "services: {stolen: {image: s3cr3t}}\n",
        );
        let source = tempfile::TempDir::new().unwrap();
        let product = |version: &str, include: &str| {
            format!(
                "metadata: {{name: p, productVersion: '{version}'}}\nsharedVariables: {{TAG: {{default: '1'}}}}\nstacks:\n  s:\n    include: '{include}'\n"
            )
        };
        write(
            &source.path().join("parts/ok.yaml"),
            "services: {a: {image: 'x:${TAG}'}}\n",
        );
        write(&source.path().join("parts/product.yaml"), GOOD);
        write(
            &source.path().join("p/1.yaml"),
            &product("1.0.0", "../parts/ok.yaml"),
        );
        let escape = outside.path().join("secret.yaml");
        write(
            &source.path().join("p/2.yaml"),
            &product("2.0.0", &escape.display().to_string()),
        );
        write(
            &source.path().join("p/3.yaml"),
            &product("3.0.0", "../../../../../../../etc/passwd"),
        );
        std::os::unix::fs::symlink(&escape, source.path().join("parts/link.yaml")).unwrap();
        write(
            &source.path().join("p/4.yaml"),
            &product("4.0.0", "../parts/link.yaml"),
        );
        write(
            &source.path().join("p/5.yaml"),
            &product("5.0.0", "../parts/product.yaml"),
        );
        write(
            &source.path().join("p/6.yaml"),
            &product("6.0.0", "../parts/missing.yaml"),
        );
        write(
            &source.path().join("p/7.yaml"),
            &product("7.0.0", "../parts"),
        );
        let loaded = load_directory(source.path()).unwrap();
        let versions: Vec<_> = loaded
            .versions
            .iter()
            .filter(|pv| pv.product == "p")
            .collect();
        assert_eq!(versions.len(), 1, "{:?}", lines(&loaded));
        assert_eq!(versions[0].version.to_string(), "1.0.0");
        let ok = versions[0].stack(Some("s")).unwrap();
        assert!(ok.variables.contains_key("TAG") && ok.services.contains_key("a"));
        let errors = lines(&loaded).join("\n");
        for expected in [
            "p/2.yaml: stacks.s.include: '",
            "' is not a path relative to the manifest",
            "p/3.yaml: stacks.s.include: '../../../../../../../etc/passwd' leads out of the source; not read",
            "p/4.yaml: stacks.s.include: '../parts/link.yaml' leads out of the source; not read",
            "p/5.yaml: stacks.s.include: '../parts/product.yaml' is a product (it has metadata.productVersion), not a fragment",
            "p/6.yaml: stacks.s.include: '../parts/missing.yaml' does not exist in the source",
            "p/7.yaml: stacks.s.include: '../parts' is not a regular file; not read",
        ] {
            assert!(
                errors.contains(expected),
                "missing {expected:?} in:\n{errors}"
            );
        }
        assert!(
            !errors.contains("s3cr3t") && !errors.contains("root:"),
            "{errors}"
        );
    }

    #[test]
    fn alias_bombs_are_refused_not_expanded() {
        let mut text = String::from(
            "metadata: {name: x, productVersion: '1.0.0'}\nservices: {web: {image: x}}\nvolumes:\n  a: &a [x,x,x,x,x,x,x,x,x]\n",
        );
        let names: Vec<char> = "abcdefghi".chars().collect();
        for pair in names.windows(2) {
            let (prev, next) = (pair[0], pair[1]);
            let refs = vec![format!("*{prev}"); 9].join(",");
            text.push_str(&format!("  {next}: &{next} [{refs}]\n"));
        }
        let err = parse_manifest(Path::new("bomb.yaml"), &text)
            .unwrap_err()
            .problem
            .to_string();
        assert!(err.contains("repetition limit exceeded"), "{err}");
    }
}
