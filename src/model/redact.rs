//! Documents of stacks and deployment records as rsgo shows them (the command line, the admin
//! API, the console): Password values and the variables a rollback would restore are hidden.

use serde_json::Value;

use super::{DeploymentRecord, Stack};
use crate::Result;
use crate::store::encode;

/// What is shown instead of a hidden value.
pub const HIDDEN: &str = "(hidden)";

/// Replaces the values of the variables `which` picks in a map of variables.
pub fn hide(variables: Option<&mut Value>, which: impl Fn(&str) -> bool) {
    if let Some(Value::Object(variables)) = variables {
        for (name, value) in variables.iter_mut() {
            if which(name) {
                *value = Value::String(HIDDEN.into());
            }
        }
    }
}

/// Hides a stack document's Password variables. Until the reconciler has looked at the current
/// spec (and so knows which of its variables are Passwords), every value is hidden.
pub fn hide_stack_secrets(doc: &mut Value) {
    let generation = doc.pointer("/metadata/generation").cloned();
    let status = doc.get("status").cloned().unwrap_or_default();
    let current = status.get("observedGeneration").cloned() == generation;
    let hidden: Vec<String> = status
        .get("hiddenVariables")
        .and_then(|h| serde_json::from_value(h.clone()).ok())
        .unwrap_or_default();
    hide(doc.pointer_mut("/spec/variables"), |name| {
        !current || hidden.iter().any(|h| h == name)
    });
}

/// A stack as shown: its document with Password values hidden.
pub fn stack_document(stack: &Stack) -> Result<Value> {
    let mut doc = encode(stack)?;
    hide_stack_secrets(&mut doc);
    Ok(doc)
}

/// A deployment record as shown: the variables kept for a rollback are hidden, since some may
/// be Passwords.
pub fn record_document(record: &DeploymentRecord) -> Result<Value> {
    let mut doc = encode(record)?;
    hide(doc.pointer_mut("/spec/previousVariables"), |_| true);
    Ok(doc)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn passwords_are_hidden_and_everything_is_until_reconciled() {
        let mut reconciled = json!({
            "metadata": {"generation": 2},
            "spec": {"variables": {"PASSWORD": "s3cr3t", "PORT": "8080"}},
            "status": {"observedGeneration": 2, "hiddenVariables": ["PASSWORD"]},
        });
        hide_stack_secrets(&mut reconciled);
        assert_eq!(
            reconciled["spec"]["variables"],
            json!({"PASSWORD": HIDDEN, "PORT": "8080"})
        );
        let mut changed = json!({
            "metadata": {"generation": 3},
            "spec": {"variables": {"PASSWORD": "s3cr3t", "TOKEN": "t0k3n"}},
            "status": {"observedGeneration": 2, "hiddenVariables": ["PASSWORD"]},
        });
        hide_stack_secrets(&mut changed);
        assert_eq!(
            changed["spec"]["variables"],
            json!({"PASSWORD": HIDDEN, "TOKEN": HIDDEN}),
            "a new spec may declare new passwords"
        );
    }
}
