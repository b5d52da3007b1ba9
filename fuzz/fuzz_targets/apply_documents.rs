//! Apply documents: any YAML given to `rsgo apply` is refused with a message naming the document,
//! or decodes into objects that pass the store's own checks; never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rsgo::cli::{check_document, parse_documents};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(documents) = parse_documents(text, "fuzz.yaml") else {
        return;
    };
    for (position, doc) in documents {
        if let Err(error) = check_document(position, &doc) {
            assert!(
                error.to_string().starts_with(&format!("document {position}: ")),
                "{error}"
            );
        }
    }
});
