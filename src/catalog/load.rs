//! Reading a directory source: every manifest below it, never leaving it, within size caps, and
//! without ever quoting a file it could not parse.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use semver::Version;

use super::{
    Loaded, Manifest, ManifestError, ManifestProblem, ProductVersion, check_manifest_name,
    parse_version,
};
use crate::{Error, Result};

/// Largest manifest file rsgo reads.
pub const MAX_MANIFEST_BYTES: u64 = 1024 * 1024;
/// Largest total size of the manifests of one source.
pub const MAX_SOURCE_BYTES: u64 = 64 * 1024 * 1024;
/// Most manifest files one source may hold.
pub const MAX_SOURCE_FILES: usize = 10_000;
/// Deepest directory nesting read in a source.
const MAX_DEPTH: usize = 32;

/// Parses one manifest. `Ok(None)` is a fragment (no `productVersion`), not an error. Errors
/// name the line and column or the field, and the kind of problem, never the file's contents.
pub fn parse_manifest(path: &Path, text: &str) -> Result<Option<ProductVersion>, ManifestError> {
    parse(path, text).map_err(|problem| ManifestError {
        file: path.to_owned(),
        problem,
    })
}

fn parse(path: &Path, text: &str) -> Result<Option<ProductVersion>, ManifestProblem> {
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
    let Some(raw_version) = &manifest.metadata.product_version else {
        return Ok(None);
    };
    let version = parse_version(&raw_version.0)
        .map_err(|e| ManifestProblem::field("metadata.productVersion", e))?;
    if manifest.stacks.is_some() {
        return Err(ManifestProblem::field(
            "stacks",
            "multi-stack products are not supported yet; use top-level `services`",
        ));
    }
    if manifest.services.is_empty() {
        return Err(ManifestProblem::field(
            "services",
            "the manifest defines no services",
        ));
    }
    let names = [
        (
            "services",
            "service",
            manifest.services.keys().collect::<Vec<_>>(),
        ),
        ("volumes", "volume", manifest.volumes.keys().collect()),
        ("networks", "network", manifest.networks.keys().collect()),
    ];
    for (field, what, keys) in names {
        for name in keys {
            check_manifest_name(what, name).map_err(|e| ManifestProblem::field(field, e))?;
        }
    }
    for (name, variable) in &manifest.variables {
        if let Some(pattern) = &variable.pattern {
            regex::Regex::new(pattern).map_err(|e| {
                ManifestProblem::field(
                    format!("variables.{name}.pattern"),
                    format!("not a valid pattern: {e}"),
                )
            })?;
        }
    }
    let product = manifest
        .metadata
        .product_id
        .clone()
        .unwrap_or_else(|| manifest.metadata.name.clone());
    Ok(Some(ProductVersion {
        product,
        version,
        manifest,
        path: path.to_owned(),
    }))
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
    let root = std::fs::canonicalize(dir)
        .map_err(|e| Error::io(format!("reading catalog directory {}", dir.display()), e))?;
    let mut walk = Walk {
        root: root.clone(),
        files: Vec::new(),
        errors: Vec::new(),
        visited: vec![root.clone()],
    };
    walk.directory(&root, Path::new(""), 0)?;
    let Walk {
        mut files,
        mut errors,
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
    let mut total = 0u64;
    let mut seen: BTreeMap<(String, Version), PathBuf> = BTreeMap::new();
    for (relative, path) in files {
        let outcome = read_capped(&path)
            .map_err(|reason| ManifestError {
                file: relative.clone(),
                problem: ManifestProblem::NotRead(reason),
            })
            .and_then(|text| {
                total += text.len() as u64;
                parse_manifest(&relative, &text)
            });
        if total > MAX_SOURCE_BYTES {
            return Err(Error::Invalid(format!(
                "the source's manifests add up to more than {} MiB, the most rsgo reads from one source",
                MAX_SOURCE_BYTES / (1024 * 1024)
            )));
        }
        match outcome {
            Ok(Some(pv)) => {
                let key = (pv.product.clone(), pv.version.clone());
                if let Some(first) = seen.get(&key) {
                    errors.push(ManifestError {
                        file: relative.clone(),
                        problem: ManifestProblem::Duplicate {
                            product: pv.product,
                            version: pv.version,
                            first: first.clone(),
                        },
                    });
                } else {
                    seen.insert(key, relative.clone());
                    loaded.versions.push(pv);
                }
            }
            Ok(None) => {}
            Err(error) => errors.push(error),
        }
    }
    errors.sort_by(|a, b| a.file.cmp(&b.file));
    loaded.errors = errors;
    Ok(loaded)
}

/// Why a file over [`MAX_MANIFEST_BYTES`] is not read.
fn too_large() -> String {
    format!(
        "is larger than {} KiB, the most rsgo reads from one manifest",
        MAX_MANIFEST_BYTES / 1024
    )
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

/// A walk through a source directory that never leaves it.
struct Walk {
    root: PathBuf,
    /// (path relative to the root, path to read).
    files: Vec<(PathBuf, PathBuf)>,
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
        for entry in entries {
            let path = entry.path();
            let relative = relative.join(entry.file_name());
            let is_manifest = matches!(
                path.extension().and_then(|e| e.to_str()),
                Some("yaml" | "yml")
            );
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
                } else {
                    self.files.push((relative, real));
                }
            }
            if self.files.len() > MAX_SOURCE_FILES {
                return Ok(());
            }
        }
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
