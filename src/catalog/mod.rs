//! Products and their versions, loaded from catalog sources and held in memory.

mod compose;
mod error;
mod git;
mod health;
mod load;
pub mod manifest;
pub mod plan;
pub mod policy;
pub mod render;
pub mod sync;
pub mod variables;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;

use semver::Version;

pub use error::{ManifestError, ManifestProblem, RenderError};
pub use load::{
    MAX_MANIFEST_BYTES, MAX_SOURCE_BYTES, MAX_SOURCE_FILES, load_directory, load_source,
    parse_manifest,
};
pub use manifest::{Manifest, Metadata, Service, Variable};
pub use plan::{ContainerPlan, StackPlan};
pub use render::{render, render_with_secrets};

use crate::Result;

/// Parses a SemVer version, allowing one leading `v` (`v1.2.0`).
pub fn parse_version(text: &str) -> Result<Version, String> {
    Version::parse(text.strip_prefix('v').unwrap_or(text))
        .map_err(|e| format!("'{text}' is not a SemVer version such as 1.2.0: {e}"))
}

/// Names of services, volumes and networks in a manifest become parts of container, volume and
/// workload names, so they are limited to what every runtime accepts.
pub fn check_manifest_name(what: &str, name: &str) -> Result<(), String> {
    let ok = name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok {
        return Ok(());
    }
    let shown: String = name.chars().take(64).flat_map(char::escape_debug).collect();
    Err(format!(
        "{what} name '{shown}' is not allowed: use up to 63 letters, digits, '_', '.' and '-', \
         starting with a letter or digit"
    ))
}

/// One manifest file: one version of one product.
#[derive(Debug, Clone)]
pub struct ProductVersion {
    /// Product id (`metadata.productId`, or the name).
    pub product: String,
    /// Parsed SemVer version.
    pub version: Version,
    /// Name, description, category, tags and links.
    pub metadata: Metadata,
    /// What the product deploys.
    pub stacks: Stacks,
    /// File it came from.
    pub path: PathBuf,
}

/// What a product version deploys: one stack, or several named ones.
#[derive(Debug, Clone)]
pub enum Stacks {
    /// A product with top-level `services`.
    Single(StackDefinition),
    /// A multi-stack product, by stack name; a Stack picks one with `spec.stack`.
    Multi(BTreeMap<String, StackDefinition>),
}

/// Everything one stack of a product is made of, with includes resolved and the product's shared
/// variables merged in.
#[derive(Debug, Clone, Default)]
pub struct StackDefinition {
    /// Declared variables: the shared ones, then the stack's own (which win on a name clash).
    pub variables: BTreeMap<String, Variable>,
    /// Services, keyed by name.
    pub services: BTreeMap<String, Service>,
    /// Named volumes the manifest declares.
    pub volumes: BTreeSet<String>,
    /// Networks the manifest declares.
    pub networks: BTreeSet<String>,
}

impl ProductVersion {
    /// The stack `part` of this version: `None` for a single-stack product, a stack's name for a
    /// multi-stack one. The error says which names exist.
    pub fn stack(&self, part: Option<&str>) -> Result<&StackDefinition, String> {
        let product = &self.product;
        let version = &self.version;
        match (&self.stacks, part) {
            (Stacks::Single(definition), None) => Ok(definition),
            (Stacks::Single(_), Some(part)) => Err(format!(
                "{product} {version} is a single-stack product; it has no stack '{part}' \
                 (leave spec.stack unset)"
            )),
            (Stacks::Multi(stacks), part) => {
                let names = stacks.keys().cloned().collect::<Vec<_>>().join(", ");
                match part {
                    Some(part) => stacks.get(part).ok_or_else(|| {
                        format!("{product} {version} has no stack '{part}'; its stacks are {names}")
                    }),
                    None => Err(format!(
                        "{product} {version} holds several stacks ({names}); spec.stack must \
                         name one"
                    )),
                }
            }
        }
    }
}

/// What reading one source produced: the good versions and a message per broken file.
#[derive(Debug, Default)]
pub struct Loaded {
    /// Product versions that parsed.
    pub versions: Vec<ProductVersion>,
    /// The files that did not, each with what is wrong with it.
    pub errors: Vec<ManifestError>,
}

/// The products of every source, by source name. A failed sync leaves a source's last good set.
#[derive(Debug, Default)]
pub struct Catalog {
    sources: BTreeMap<String, Vec<Arc<ProductVersion>>>,
    /// Every product's versions across the sources, in [`Catalog::versions`] order; rebuilt
    /// when a source changes, so a lookup (every stack, every resync pass) sorts nothing.
    products: BTreeMap<String, Vec<Arc<ProductVersion>>>,
}

impl Catalog {
    /// Replaces the versions a source provides.
    pub fn replace_source(&mut self, source: &str, versions: Vec<ProductVersion>) {
        self.sources.insert(
            source.to_owned(),
            versions.into_iter().map(Arc::new).collect(),
        );
        self.reindex();
    }

    /// Forgets every source not named in `known`.
    pub fn retain_sources(&mut self, known: &[String]) {
        self.sources.retain(|name, _| known.contains(name));
        self.reindex();
    }

    fn reindex(&mut self) {
        let mut products: BTreeMap<String, Vec<Arc<ProductVersion>>> = BTreeMap::new();
        for pv in self.sources.values().flatten() {
            products
                .entry(pv.product.clone())
                .or_default()
                .push(pv.clone());
        }
        for versions in products.values_mut() {
            // A stable sort keeps the first source's version among equals.
            versions.sort_by(|a, b| a.version.cmp_precedence(&b.version));
            versions.dedup_by(|a, b| a.version.cmp_precedence(&b.version).is_eq());
        }
        self.products = products;
    }

    /// Every version of `product`, oldest first, in SemVer 2 precedence: pre-releases before
    /// their release, build metadata ignored (of two versions that differ only in it, the first
    /// source's wins).
    pub fn versions(&self, product: &str) -> &[Arc<ProductVersion>] {
        self.products.get(product).map_or(&[], Vec::as_slice)
    }

    /// One version of `product`; build metadata need not be given.
    pub fn find(&self, product: &str, version: &str) -> Option<Arc<ProductVersion>> {
        let wanted = parse_version(version).ok()?;
        self.versions(product)
            .iter()
            .find(|pv| {
                pv.version == wanted
                    || (wanted.build.is_empty() && pv.version.cmp_precedence(&wanted).is_eq())
            })
            .cloned()
    }

    /// `version` of `product`, or its newest stable version when `version` is `None`.
    pub fn resolve(&self, product: &str, version: Option<&str>) -> Option<Arc<ProductVersion>> {
        match version {
            Some(version) => self.find(product, version),
            None => self.latest(product),
        }
    }

    /// The newest stable version of `product`. Pre-releases are never picked for a stack that
    /// names no version: running one must be asked for by name.
    pub fn latest(&self, product: &str) -> Option<Arc<ProductVersion>> {
        self.versions(product)
            .iter()
            .rev()
            .find(|pv| pv.version.pre.is_empty())
            .cloned()
    }

    /// `"6.5.0, 6.4.0"` (newest first), or `"none"`, for error messages.
    pub fn available(&self, product: &str) -> String {
        let versions: Vec<String> = self
            .versions(product)
            .iter()
            .rev()
            .map(|pv| pv.version.to_string())
            .collect();
        if versions.is_empty() {
            "none".into()
        } else {
            versions.join(", ")
        }
    }

    /// The products `source` provides, each with its versions newest first.
    pub fn source_products(&self, source: &str) -> Vec<crate::model::LoadedProduct> {
        let mut products: BTreeMap<&str, Vec<&Version>> = BTreeMap::new();
        for pv in self.sources.get(source).into_iter().flatten() {
            products.entry(&pv.product).or_default().push(&pv.version);
        }
        products
            .into_iter()
            .map(|(product, mut versions)| {
                versions.sort_by(|a, b| b.cmp_precedence(a));
                crate::model::LoadedProduct {
                    product: product.to_owned(),
                    versions: versions.iter().map(ToString::to_string).collect(),
                }
            })
            .collect()
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
    use std::path::Path;

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
        assert_eq!(catalog.available("app"), "2.0.0-rc.1, 1.10.0, 1.9.0");
        assert_eq!(catalog.available("nope"), "none");
        assert!(catalog.find("app", "1.9.0").is_some());
        assert!(catalog.find("app", "1.9.1").is_none());
    }

    #[test]
    fn semver_precedence_covers_pre_releases_and_ignores_build_metadata() {
        let mut catalog = Catalog::default();
        catalog.replace_source(
            "a",
            vec![
                pv("app", "1.0.0"),
                pv("app", "1.0.0-rc.1"),
                pv("app", "1.0.0-alpha.beta"),
                pv("app", "1.0.0-alpha.1"),
                pv("app", "1.0.0-rc.11"),
                pv("app", "1.0.0-alpha"),
                pv("app", "1.0.0-rc.2"),
                pv("app", "1.0.0-beta"),
                pv("app", "1.1.0-ci.7+sha.5114f85"),
            ],
        );
        catalog.replace_source("b", vec![pv("app", "1.0.0+build.9")]);
        let order: Vec<String> = catalog
            .versions("app")
            .iter()
            .map(|p| p.version.to_string())
            .collect();
        assert_eq!(
            order,
            [
                "1.0.0-alpha",
                "1.0.0-alpha.1",
                "1.0.0-alpha.beta",
                "1.0.0-beta",
                "1.0.0-rc.1",
                "1.0.0-rc.2",
                "1.0.0-rc.11",
                "1.0.0",
                "1.1.0-ci.7+sha.5114f85",
            ],
            "1.0.0+build.9 has the precedence of 1.0.0, which source a defines first"
        );
        assert_eq!(catalog.latest("app").unwrap().version.to_string(), "1.0.0");
        assert!(catalog.find("app", "1.1.0-ci.7").is_some());
        assert!(catalog.find("app", "1.0.0-rc.3").is_none());
        let mut previews = Catalog::default();
        previews.replace_source("a", vec![pv("next", "2.0.0-rc.1")]);
        assert!(
            previews.latest("next").is_none(),
            "a pre-release is never picked for a stack without a version"
        );
        assert!(previews.resolve("next", Some("2.0.0-rc.1")).is_some());
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
        assert_eq!(bad.file, Path::new("b.yaml"));
        assert!(
            matches!(&bad.problem, ManifestProblem::Field { field, reason } if field == "metadata.productVersion" && reason.contains("not a SemVer version")),
            "{bad}"
        );
        let unknown =
            parse_manifest(Path::new("u.yaml"), "metadata: {name: x}\nservicez: {}\n").unwrap_err();
        assert!(
            matches!(&unknown.problem, ManifestProblem::Syntax { at: Some((2, _)), reason } if reason.contains("servicez")),
            "{unknown}"
        );
        let format = parse_manifest(Path::new("v.yaml"), "version: '2.0'\nmetadata: {name: x}\n")
            .unwrap_err();
        assert!(
            matches!(&format.problem, ManifestProblem::Field { field, .. } if field == "version"),
            "{format}"
        );
        assert!(format.to_string().starts_with("v.yaml: version: "));
        assert!(format.to_string().contains("2.0"), "{format}");
    }

    #[test]
    fn versions_take_at_most_one_leading_v() {
        assert_eq!(parse_version("v1.2.0").unwrap(), Version::new(1, 2, 0));
        assert!(parse_version("vv1.2.0").is_err());
        assert!(parse_version("1.2").is_err());
    }
}
