//! What the measurements run on: API keys, stacks, environments and catalogs, as YAML for
//! `rsgo apply` and as manifest files.

use std::fmt::Write as _;
use std::path::Path;

use sha2::{Digest, Sha256};

/// The permission every benchmark key holds.
const PERMISSION: &str = "Hooks.*";

/// The plaintext of benchmark key `n`: well-formed, and not secret.
pub fn key(n: usize) -> String {
    format!("rsgo_{n:032}")
}

/// A well-formed key no server knows.
pub fn unknown_key() -> String {
    format!("rsgo_{}", "z".repeat(32))
}

/// `count` ApiKey documents for keys `0..count`.
pub fn keys(count: usize) -> String {
    let mut yaml = String::new();
    for n in 0..count {
        let hash = hex::encode(Sha256::digest(key(n).as_bytes()));
        let _ = write!(
            yaml,
            "---\napiVersion: rsgo.io/v1alpha1\nkind: ApiKey\nmetadata: {{name: bench-{n}}}\n\
             spec: {{displayName: bench {n}, keyHash: {hash}, prefix: rsgo_0000, permissions: [\"{PERMISSION}\"]}}\n"
        );
    }
    yaml
}

/// An Environment on the Docker engine at `host`.
pub fn environment(name: &str, host: &str) -> String {
    format!(
        "---\napiVersion: rsgo.io/v1alpha1\nkind: Environment\nmetadata: {{name: {name}}}\n\
         spec: {{docker: {{host: \"{host}\"}}}}\n"
    )
}

/// Stacks `{prefix}-0` to `{prefix}-{count-1}` of `product` 1.0.0 in `environment`.
pub fn stacks(environment: &str, product: &str, prefix: &str, count: usize) -> String {
    let mut yaml = String::new();
    for n in 0..count {
        let _ = write!(
            yaml,
            "---\napiVersion: rsgo.io/v1alpha1\nkind: Stack\nmetadata: {{name: {prefix}-{n}}}\n\
             spec: {{environment: {environment}, product: {product}, version: \"1.0.0\"}}\n"
        );
    }
    yaml
}

/// Writes the manifest of `product` 1.0.0 with `services` services running `images` (one per
/// service, cycling) into `dir`.
pub fn write_manifest(dir: &Path, product: &str, images: &[String], services: usize) {
    let mut yaml = format!("metadata: {{name: {product}, productVersion: '1.0.0'}}\nservices:\n");
    for n in 0..services {
        let image = &images[n % images.len()];
        let _ = writeln!(yaml, "  svc{n}: {{image: \"{image}\"}}");
    }
    std::fs::write(dir.join(format!("{product}.yaml")), yaml).expect("writing a manifest");
}
