//! Hook bodies: any bytes a client sends to redeploy or upgrade are refused or parsed, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rsgo::api::{RedeployRequest, UpgradeRequest, parse_body};

fuzz_target!(|data: &[u8]| {
    if let Ok(request) = parse_body::<RedeployRequest>(data) {
        // Whatever parsed was a JSON object holding a stackName.
        assert!(serde_json::from_slice::<serde_json::Value>(data).is_ok_and(|v| v.is_object()));
        let _ = request.stack_name.len();
    }
    if let Ok(request) = parse_body::<UpgradeRequest>(data) {
        let _ = rsgo::catalog::parse_version(&request.target_version);
    }
});
