//! Products and their versions, loaded from catalog sources and held in memory.

pub mod manifest;
pub mod render;
pub mod sync;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use semver::Version;

pub use manifest::Manifest;
pub use render::{ContainerPlan, HealthPlan, Mount, PortBinding, Probe, StackPlan, render};

use crate::{Error, Result};

/// One manifest file: one version of one product.
#[derive(Debug, Clone)]
pub struct ProductVersion {
    /// Product id (`metadata.productId`, or the name).
    pub product: String,
    /// Parsed SemVer version.
    pub version: Version,
    /// The manifest itself.
    pub manifest: Manifest,
    /// File it came from.
    pub path: PathBuf,
}

/// What reading one source produced: the good versions and a message per broken file.
#[derive(Debug, Default)]
pub struct Loaded {
    /// Product versions that parsed.
    pub versions: Vec<ProductVersion>,
    /// One line per file that did not, naming the file and the reason.
    pub errors: Vec<String>,
}

/// Parses one manifest. `Ok(None)` is a fragment (no `productVersion`), not an error.
pub fn parse_manifest(path: &Path, text: &str) -> Result<Option<ProductVersion>, String> {
    let manifest: Manifest = serde_yaml_ng::from_str(text).map_err(|e| e.to_string())?;
    if let Some(format) = &manifest.version
        && !(format.0 == "1" || format.0.starts_with("1."))
    {
        return Err(format!(
            "unsupported manifest format version '{}'; rsgo reads 1.x",
            format.0
        ));
    }
    let Some(raw_version) = &manifest.metadata.product_version else {
        return Ok(None);
    };
    let version = Version::parse(raw_version.0.trim_start_matches('v'))
        .map_err(|e| format!("productVersion '{}' is not SemVer: {e}", raw_version.0))?;
    if manifest.stacks.is_some() {
        return Err(
            "multi-stack products (`stacks:`) are not supported yet; use top-level `services`"
                .into(),
        );
    }
    if manifest.services.is_empty() {
        return Err("the manifest defines no services".into());
    }
    for (name, variable) in &manifest.variables {
        if let Some(pattern) = &variable.pattern {
            regex::Regex::new(pattern)
                .map_err(|e| format!("variable '{name}' has an invalid pattern: {e}"))?;
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

/// Reads every `*.yaml`/`*.yml` file below `dir`. Fails only when the directory itself cannot
/// be read; a broken file is reported in [`Loaded::errors`] and the others still load.
pub fn load_directory(dir: &Path) -> Result<Loaded> {
    let mut files = Vec::new();
    collect_manifest_files(dir, &mut files)?;
    files.sort();
    let mut loaded = Loaded::default();
    let mut seen: BTreeMap<(String, Version), PathBuf> = BTreeMap::new();
    for path in files {
        let outcome = std::fs::read_to_string(&path)
            .map_err(|e| e.to_string())
            .and_then(|text| parse_manifest(&path, &text));
        match outcome {
            Ok(Some(pv)) => {
                let key = (pv.product.clone(), pv.version.clone());
                if let Some(first) = seen.get(&key) {
                    loaded.errors.push(format!(
                        "{}: {} {} is already defined in {}",
                        path.display(),
                        pv.product,
                        pv.version,
                        first.display()
                    ));
                } else {
                    seen.insert(key, path.clone());
                    loaded.versions.push(pv);
                }
            }
            Ok(None) => {}
            Err(reason) => loaded.errors.push(format!("{}: {reason}", path.display())),
        }
    }
    Ok(loaded)
}

fn collect_manifest_files(dir: &Path, files: &mut Vec<PathBuf>) -> Result<()> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| Error::io(format!("reading catalog directory {}", dir.display()), e))?;
    for entry in entries {
        let entry = entry
            .map_err(|e| Error::io(format!("reading catalog directory {}", dir.display()), e))?;
        let path = entry.path();
        if path.is_dir() {
            collect_manifest_files(&path, files)?;
        } else if matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml")
        ) {
            files.push(path);
        }
    }
    Ok(())
}

/// The products of every source, by source name. A failed sync leaves a source's last good set.
#[derive(Debug, Default)]
pub struct Catalog {
    sources: BTreeMap<String, Vec<Arc<ProductVersion>>>,
}

impl Catalog {
    /// Replaces the versions a source provides.
    pub fn replace_source(&mut self, source: &str, versions: Vec<ProductVersion>) {
        self.sources.insert(
            source.to_owned(),
            versions.into_iter().map(Arc::new).collect(),
        );
    }

    /// Forgets every source not named in `known`.
    pub fn retain_sources(&mut self, known: &[String]) {
        self.sources.retain(|name, _| known.contains(name));
    }

    /// Every version of `product`, oldest first.
    pub fn versions(&self, product: &str) -> Vec<Arc<ProductVersion>> {
        let mut versions: Vec<_> = self
            .sources
            .values()
            .flatten()
            .filter(|pv| pv.product == product)
            .cloned()
            .collect();
        versions.sort_by(|a, b| a.version.cmp(&b.version));
        versions.dedup_by(|a, b| a.version == b.version);
        versions
    }

    /// One version of `product`.
    pub fn find(&self, product: &str, version: &str) -> Option<Arc<ProductVersion>> {
        let wanted = Version::parse(version.trim_start_matches('v')).ok()?;
        self.versions(product)
            .into_iter()
            .find(|pv| pv.version == wanted)
    }

    /// `version` of `product`, or its newest stable version when `version` is `None`.
    pub fn resolve(&self, product: &str, version: Option<&str>) -> Option<Arc<ProductVersion>> {
        match version {
            Some(version) => self.find(product, version),
            None => self.latest(product),
        }
    }

    /// The newest stable version of `product`, or the newest pre-release when it has no stable one.
    pub fn latest(&self, product: &str) -> Option<Arc<ProductVersion>> {
        let versions = self.versions(product);
        versions
            .iter()
            .rev()
            .find(|pv| pv.version.pre.is_empty())
            .or(versions.last())
            .cloned()
    }

    /// `"6.4.0, 6.5.0"`, or `"none"`, for error messages.
    pub fn available(&self, product: &str) -> String {
        let versions: Vec<String> = self
            .versions(product)
            .iter()
            .map(|pv| pv.version.to_string())
            .collect();
        if versions.is_empty() {
            "none".into()
        } else {
            versions.join(", ")
        }
    }

    /// Number of distinct products and of versions in all sources.
    pub fn counts(&self) -> (usize, usize) {
        let all: Vec<_> = self.sources.values().flatten().collect();
        let products: std::collections::BTreeSet<_> =
            all.iter().map(|pv| pv.product.as_str()).collect();
        (products.len(), all.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pv(product: &str, version: &str) -> ProductVersion {
        let text = format!(
            "metadata: {{name: {product}, productVersion: '{version}'}}\nservices:\n  app: {{image: 'img:1'}}\n"
        );
        parse_manifest(Path::new("x.yaml"), &text).unwrap().unwrap()
    }

    #[test]
    fn versions_are_ordered_by_semver_and_latest_prefers_stable() {
        let mut catalog = Catalog::default();
        catalog.replace_source(
            "a",
            vec![
                pv("app", "1.10.0"),
                pv("app", "1.9.0"),
                pv("app", "2.0.0-rc.1"),
            ],
        );
        let order: Vec<String> = catalog
            .versions("app")
            .iter()
            .map(|p| p.version.to_string())
            .collect();
        assert_eq!(order, ["1.9.0", "1.10.0", "2.0.0-rc.1"]);
        assert_eq!(catalog.latest("app").unwrap().version.to_string(), "1.10.0");
        assert_eq!(catalog.available("app"), "1.9.0, 1.10.0, 2.0.0-rc.1");
        assert_eq!(catalog.available("nope"), "none");
        assert!(catalog.find("app", "1.9.0").is_some());
        assert!(catalog.find("app", "1.9.1").is_none());
    }

    #[test]
    fn fragments_and_bad_files_are_told_apart() {
        let fragment = "metadata: {name: part}\nservices:\n  a: {image: x}\n";
        assert!(
            parse_manifest(Path::new("f.yaml"), fragment)
                .unwrap()
                .is_none()
        );
        let bad = parse_manifest(
            Path::new("b.yaml"),
            "metadata: {name: x, productVersion: banana}\n",
        )
        .unwrap_err();
        assert!(bad.contains("not SemVer"), "{bad}");
        let unknown =
            parse_manifest(Path::new("u.yaml"), "metadata: {name: x}\nservicez: {}\n").unwrap_err();
        assert!(unknown.contains("servicez"), "{unknown}");
        let format = parse_manifest(Path::new("v.yaml"), "version: '2.0'\nmetadata: {name: x}\n")
            .unwrap_err();
        assert!(format.contains("2.0"), "{format}");
    }
}
