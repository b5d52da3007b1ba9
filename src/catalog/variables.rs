//! Variables: which values a stack may set, how each type is checked, and `${VAR}` substitution.
//! Values come from hook requests and from whoever applied the Stack, so every one is checked
//! against its declaration before it is stored or rendered.

use std::collections::BTreeMap;
use std::path::{Component, Path};

use super::error::RenderError;
use super::manifest::{Variable, VariableType};

/// Longest value of any single-line variable.
const MAX_VALUE_LEN: usize = 8 * 1024;
/// Longest value of a MultiLine variable.
const MAX_MULTILINE_LEN: usize = 64 * 1024;

/// The names among `values` that `declared` does not declare, sorted.
pub fn undeclared<'a>(
    declared: &BTreeMap<String, Variable>,
    values: impl IntoIterator<Item = &'a String>,
) -> Vec<String> {
    let mut names: Vec<String> = values
        .into_iter()
        .filter(|name| !declared.contains_key(*name))
        .cloned()
        .collect();
    names.sort();
    names.dedup();
    names
}

/// Resolves every declared variable: the manifest default, overridden by the stack's value.
/// Refuses values for undeclared variables, missing required ones, and values their type does
/// not allow.
pub fn resolve_variables(
    declared: &BTreeMap<String, Variable>,
    values: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, String>, RenderError> {
    let unknown = undeclared(declared, values.keys());
    if !unknown.is_empty() {
        let known: Vec<&str> = declared.keys().map(String::as_str).collect();
        let reason = format!(
            "variable(s) {} are not declared by the manifest (declared: {})",
            unknown.join(", "),
            if known.is_empty() {
                "none".to_owned()
            } else {
                known.join(", ")
            }
        );
        return Err(RenderError::Variable {
            name: unknown.join(", "),
            reason,
        });
    }
    let mut resolved = BTreeMap::new();
    for (name, var) in declared {
        let value = values
            .get(name)
            .filter(|v| !v.is_empty())
            .cloned()
            .or_else(|| {
                var.default
                    .as_ref()
                    .map(|d| d.0.clone())
                    .filter(|d| !d.is_empty())
            });
        match value {
            Some(value) => {
                check_value(name, var, &value).map_err(|reason| RenderError::Variable {
                    name: name.clone(),
                    reason,
                })?;
                resolved.insert(name.clone(), value);
            }
            None if var.required => {
                return Err(RenderError::Variable {
                    name: name.clone(),
                    reason: format!("variable '{name}' is required but has no value"),
                });
            }
            None => {
                resolved.insert(name.clone(), String::new());
            }
        }
    }
    Ok(resolved)
}

/// Checks one value against its variable's type, pattern and limits.
pub fn check_value(name: &str, var: &Variable, value: &str) -> Result<(), String> {
    let multi_line = var.kind == VariableType::MultiLine;
    let limit = if multi_line {
        MAX_MULTILINE_LEN
    } else {
        MAX_VALUE_LEN
    };
    if value.len() > limit {
        return Err(format!(
            "variable '{name}' is longer than {limit} bytes ({} bytes)",
            value.len()
        ));
    }
    let allowed_control = |c: char| c == '\t' || (multi_line && matches!(c, '\n' | '\r'));
    if value.chars().any(|c| c.is_control() && !allowed_control(c)) {
        return Err(format!(
            "variable '{name}' contains control characters{}",
            if multi_line { "" } else { " or line breaks" }
        ));
    }
    // Secrets are never echoed back, whatever the reason they were refused.
    let shown = if var.kind == VariableType::Password {
        "(hidden)".to_owned()
    } else {
        format!("'{}'", value.chars().take(120).collect::<String>())
    };
    if let Some(pattern) = &var.pattern {
        // Patterns were checked when the manifest loaded; one that fails to compile matches nothing.
        let matches = regex::Regex::new(pattern).is_ok_and(|re| re.is_match(value));
        if !matches {
            let reason = var
                .pattern_error
                .clone()
                .unwrap_or_else(|| format!("must match {pattern}"));
            return Err(format!("variable '{name}': {reason} (got {shown})"));
        }
    }
    let in_range = |n: f64| {
        if var.min.is_some_and(|min| n < min) || var.max.is_some_and(|max| n > max) {
            Err(format!("variable '{name}' is out of range: {shown}"))
        } else {
            Ok(())
        }
    };
    let type_error =
        |expected: &str| Err(format!("variable '{name}' must be {expected}, got {shown}"));
    match var.kind {
        VariableType::Number => match value.trim().parse::<f64>() {
            Ok(n) if n.is_finite() => in_range(n),
            _ => type_error("a number"),
        },
        VariableType::Port => match value.parse::<u16>() {
            Ok(port) if port >= 1 => in_range(f64::from(port)),
            _ => type_error("a port from 1 to 65535"),
        },
        VariableType::Boolean if !matches!(value, "true" | "false") => type_error("true or false"),
        VariableType::Select
            if !var.options.is_empty() && !var.options.iter().any(|o| o.value.0 == value) =>
        {
            let choices: Vec<&str> = var.options.iter().map(|o| o.value.0.as_str()).collect();
            type_error(&format!("one of {}", choices.join(", ")))
        }
        VariableType::Url if !is_url(value) => {
            type_error("an absolute URL such as https://host/path")
        }
        VariableType::Email if !is_email(value) => type_error("an e-mail address"),
        VariableType::Path => check_path(name, value, &shown),
        _ => Ok(()),
    }
}

fn is_url(value: &str) -> bool {
    url::Url::parse(value).is_ok_and(|url| url.has_host() && !value.contains(char::is_whitespace))
}

fn is_email(value: &str) -> bool {
    let Some((local, domain)) = value.rsplit_once('@') else {
        return false;
    };
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    value.len() <= 254
        && !local.is_empty()
        && local.len() <= 64
        && !local.contains([
            '@', ' ', '"', '<', '>', '(', ')', ',', ';', ':', '\\', '[', ']',
        ])
        && domain.split('.').all(label_ok)
}

/// A Path may be relative or absolute, but never the root itself and never climbing with `..`,
/// so a value cannot widen what a manifest mounts or reads.
fn check_path(name: &str, value: &str, shown: &str) -> Result<(), String> {
    let path = Path::new(value);
    if value.is_empty() {
        return Err(format!(
            "variable '{name}' must be a path, got an empty value"
        ));
    }
    if path.components().any(|c| c == Component::ParentDir) {
        return Err(format!(
            "variable '{name}' must not climb with '..', got {shown}"
        ));
    }
    if path
        .components()
        .all(|c| matches!(c, Component::RootDir | Component::CurDir))
    {
        return Err(format!(
            "variable '{name}' must name something below /, got {shown}"
        ));
    }
    Ok(())
}

/// Substitutes `${VAR}` and `${VAR:-default}` (empty values fall back to the default); `$$` is a
/// literal `$`. An unknown variable without a default is an error.
pub fn substitute(text: &str, vars: &BTreeMap<String, String>) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(body) = after.strip_prefix('{') {
            let end = body
                .find('}')
                .ok_or_else(|| format!("unclosed '${{' in '{text}'"))?;
            let expr = &body[..end];
            let (name, default) = match expr.split_once(":-") {
                Some((name, default)) => (name, Some(default)),
                None => (expr, None),
            };
            match (vars.get(name).filter(|v| !v.is_empty()), default) {
                (Some(value), _) => out.push_str(value),
                (None, Some(default)) => out.push_str(default),
                (None, None) if vars.contains_key(name) => {}
                (None, None) => return Err(format!("'{text}' uses undefined variable '{name}'")),
            }
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::manifest::Scalar;

    fn var(kind: VariableType) -> Variable {
        Variable {
            kind,
            ..Default::default()
        }
    }

    fn vars(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn undeclared_values_are_refused_by_name() {
        let declared = BTreeMap::from([("TAG".to_owned(), var(VariableType::String))]);
        let err =
            resolve_variables(&declared, &vars(&[("IMAGE", "evil"), ("TAG", "1")])).unwrap_err();
        assert_eq!(
            err,
            RenderError::Variable {
                name: "IMAGE".into(),
                reason: "variable(s) IMAGE are not declared by the manifest (declared: TAG)".into()
            }
        );
        let ok = resolve_variables(&declared, &vars(&[("TAG", "1")])).unwrap();
        assert_eq!(ok, vars(&[("TAG", "1")]));
    }

    #[test]
    fn every_type_checks_its_values() {
        let cases: &[(VariableType, &[&str], &[&str])] = &[
            (
                VariableType::Number,
                &["1", "-2.5", "1e3"],
                &["x", "NaN", "inf"],
            ),
            (VariableType::Port, &["1", "65535"], &["0", "65536", "http"]),
            (VariableType::Boolean, &["true", "false"], &["yes", "1"]),
            (
                VariableType::Url,
                &["https://example.com/x", "postgres://db:5432/app"],
                &[
                    "example.com",
                    "https://",
                    "file:///etc/passwd",
                    "http://a b",
                ],
            ),
            (
                VariableType::Email,
                &["ops@example.com", "a.b+c@mail.example.org"],
                &["ops", "@example.com", "a@", "a b@c.d", "a@b_c.d"],
            ),
            (
                VariableType::Path,
                &["/srv/data", "data/sub", "/srv/./data"],
                &["/", "/.", "", "../etc", "/srv/../etc", "/srv/data/.."],
            ),
            (
                VariableType::String,
                &["hello world", "tab\there"],
                &["line\nbreak", "nul\0"],
            ),
            (VariableType::MultiLine, &["a\nb\r\nc"], &["nul\0"]),
        ];
        for (kind, good, bad) in cases {
            let v = var(*kind);
            for value in *good {
                assert!(check_value("V", &v, value).is_ok(), "{kind:?} {value:?}");
            }
            for value in *bad {
                let err = check_value("V", &v, value).unwrap_err();
                assert!(err.starts_with("variable 'V'"), "{kind:?} {value:?}: {err}");
            }
        }
        let long = "x".repeat(MAX_VALUE_LEN + 1);
        assert!(check_value("V", &var(VariableType::String), &long).is_err());
        assert!(check_value("V", &var(VariableType::MultiLine), &long).is_ok());
    }

    #[test]
    fn ranges_options_and_hidden_passwords() {
        let mut port = var(VariableType::Port);
        port.min = Some(1024.0);
        assert!(
            check_value("P", &port, "80")
                .unwrap_err()
                .contains("out of range")
        );
        let mut select = var(VariableType::Select);
        select.options = vec![crate::catalog::manifest::VariableOption {
            value: Scalar("a".into()),
            label: None,
            description: None,
        }];
        assert!(
            check_value("S", &select, "b")
                .unwrap_err()
                .contains("one of a")
        );
        let mut password = var(VariableType::Password);
        password.pattern = Some("^[a-z]+$".into());
        let err = check_value("PW", &password, "Secret1").unwrap_err();
        assert!(
            !err.contains("Secret1") && err.contains("(hidden)"),
            "{err}"
        );
    }

    #[test]
    fn substitution_rules() {
        let v = vars(&[("A", "1"), ("EMPTY", "")]);
        assert_eq!(substitute("x${A}y", &v).unwrap(), "x1y");
        assert_eq!(substitute("${EMPTY:-d}", &v).unwrap(), "d");
        assert_eq!(substitute("${EMPTY}", &v).unwrap(), "");
        assert_eq!(substitute("${B:-fallback}", &v).unwrap(), "fallback");
        assert_eq!(substitute("$$A $A", &v).unwrap(), "$A $A");
        assert!(
            substitute("${B}", &v)
                .unwrap_err()
                .contains("undefined variable 'B'")
        );
        assert!(substitute("${A", &v).is_err());
    }
}
