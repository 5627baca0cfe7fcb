//! The committed `config.schema.json` (what editors load through the
//! `# yaml-language-server: $schema=` line) is exactly what `wsgate config-schema` prints, and
//! the shipped `config.yaml` is valid under it for a standard JSON Schema validator.

use std::path::Path;
use std::process::Command;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn printed_schema() -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_wsgate"))
        .arg("config-schema")
        .output()
        .expect("run wsgate config-schema");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 schema")
}

#[test]
fn committed_schema_is_what_config_schema_prints() {
    let committed = std::fs::read_to_string(repo().join("config.schema.json")).unwrap_or_default();
    assert!(
        committed == printed_schema(),
        "config.schema.json is out of date with src/config/types.rs: regenerate it with\n    \
         cargo run -- config-schema > config.schema.json\nand commit it"
    );
}

#[test]
fn shipped_config_is_valid_under_the_committed_schema() {
    let schema: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("config.schema.json")).expect("config.schema.json"),
    )
    .expect("schema is JSON");
    let validator = jsonschema::validator_for(&schema).expect("a valid JSON Schema");
    let text = std::fs::read_to_string(repo().join("config.yaml")).expect("config.yaml");
    assert!(
        text.starts_with("# yaml-language-server: $schema=./config.schema.json\n"),
        "config.yaml should point editors at the schema on its first line"
    );
    let doc: serde_json::Value = serde_saphyr::from_str(&text).expect("config.yaml is YAML");
    let problems: Vec<String> = validator
        .iter_errors(&doc)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect();
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    // Sanity: the validator does refuse a mistake in the same document.
    let mut bad = doc.clone();
    bad["listeners"][0]["bnd"] = serde_json::json!("127.0.0.1:1");
    assert!(!validator.is_valid(&bad));
}

/// The README's configuration reference: `(schema location, default as written)` for each
/// line with a `# default X` comment, where the location names map entries `*` and picks
/// the authenticator branch by its `type`.
fn readme_defaults(schema: &serde_json::Value) -> Vec<(String, String)> {
    let readme = std::fs::read_to_string(repo().join("README.md")).expect("README.md");
    let reference = &readme[readme
        .find("## Configuration reference")
        .expect("reference")..];
    let block = reference
        .split("```yaml\n")
        .skip(1)
        .map(|b| &b[..b.find("```").unwrap_or(b.len())])
        .find(|b| b.starts_with("listeners:"))
        .expect("the reference yaml block");
    let mut stack: Vec<(usize, String)> = Vec::new();
    let mut out = Vec::new();
    for line in block.lines() {
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let mut indent = line.len() - trimmed.len();
        let mut rest = trimmed;
        if let Some(r) = rest.strip_prefix("- ") {
            while stack.last().is_some_and(|(i, _)| *i >= indent) {
                stack.pop();
            }
            stack.push((indent, "[]".into()));
            indent += 2;
            rest = r;
        }
        let Some((key, value)) = rest.split_once(':') else {
            continue;
        };
        if key.contains(' ') || key.contains('"') {
            continue;
        }
        while stack.last().is_some_and(|(i, _)| *i >= indent) {
            stack.pop();
        }
        stack.push((indent, key.to_string()));
        let Some(comment) = value.split_once("# default ").map(|(_, c)| c) else {
            continue;
        };
        let default: String = comment
            .split([' ', ';', ','])
            .next()
            .unwrap_or("")
            .trim_end_matches(':')
            .trim_matches('"')
            .to_string();
        let segs: Vec<&str> = stack.iter().map(|(_, s)| s.as_str()).collect();
        let location = locate(schema, &segs)
            .unwrap_or_else(|| panic!("README key {} is not in the schema", segs.join(".")));
        out.push((location, default));
    }
    out
}

/// Follows README path segments through the schema; returns a canonical location.
fn locate(schema: &serde_json::Value, segs: &[&str]) -> Option<String> {
    let mut node = schema;
    let mut location = Vec::new();
    for (n, seg) in segs.iter().enumerate() {
        if *seg == "[]" {
            node = node.get("items")?;
            location.push("[]".to_string());
            continue;
        }
        if let Some(p) = node.get("properties").and_then(|p| p.get(*seg)) {
            node = p;
            location.push(seg.to_string());
        } else if let Some(extra) = node.get("additionalProperties").filter(|a| a.is_object()) {
            // A map entry (an authenticator name): pick the branch that has the next key,
            // the one whose type is the entry's name when several have it (`cache_ttl`).
            let next = segs.get(n + 1)?;
            let has_next =
                |b: &&serde_json::Value| b.get("properties").and_then(|p| p.get(*next)).is_some();
            let named = |b: &&serde_json::Value| {
                b.pointer("/properties/type/const").and_then(|t| t.as_str()) == Some(*seg)
            };
            node = extra
                .get("oneOf")
                .and_then(|b| b.as_array())
                .and_then(|branches| {
                    let mut with_key = branches.iter().filter(has_next);
                    branches
                        .iter()
                        .filter(has_next)
                        .find(named)
                        .or_else(|| with_key.next())
                })
                .unwrap_or(extra);
            let tag = node
                .pointer("/properties/type/const")
                .and_then(|t| t.as_str());
            location.push(format!("*{}", tag.unwrap_or("")));
        } else {
            return None;
        }
    }
    Some(location.join("."))
}

/// Every schema location that has a default.
fn schema_defaults(node: &serde_json::Value, at: &str, out: &mut Vec<(String, serde_json::Value)>) {
    if let Some(d) = node.get("default") {
        out.push((at.to_string(), d.clone()));
    }
    let join = |seg: &str| {
        if at.is_empty() {
            seg.to_string()
        } else {
            format!("{at}.{seg}")
        }
    };
    if let Some(props) = node.get("properties").and_then(|p| p.as_object()) {
        for (k, v) in props {
            schema_defaults(v, &join(k), out);
        }
    }
    if let Some(items) = node.get("items") {
        schema_defaults(items, &join("[]"), out);
    }
    if let Some(extra) = node.get("additionalProperties").filter(|a| a.is_object()) {
        match extra.get("oneOf").and_then(|b| b.as_array()) {
            Some(branches) => {
                for b in branches {
                    let tag = b.pointer("/properties/type/const").and_then(|t| t.as_str());
                    schema_defaults(b, &join(&format!("*{}", tag.unwrap_or(""))), out);
                }
            }
            None => schema_defaults(extra, &join("*"), out),
        }
    }
}

fn same_default(readme: &str, code: &serde_json::Value) -> bool {
    match code {
        serde_json::Value::String(s) => {
            s == readme
                || matches!(
                    (humantime::parse_duration(s), humantime::parse_duration(readme)),
                    (Ok(a), Ok(b)) if a == b
                )
        }
        other => {
            serde_json::from_str::<serde_json::Value>(readme)
                .ok()
                .as_ref()
                == Some(other)
        }
    }
}

#[test]
fn readme_reference_defaults_are_the_codes_and_complete() {
    let schema: serde_json::Value =
        serde_json::from_str(&printed_schema()).expect("schema is JSON");
    let documented = readme_defaults(&schema);
    let mut code = Vec::new();
    schema_defaults(&schema, "", &mut code);
    let mut problems = Vec::new();
    for (location, default) in &code {
        match documented.iter().find(|(l, _)| l == location) {
            None => problems.push(format!(
                "{location}: default {default} is not in README's reference (`# default ...`)"
            )),
            Some((_, written)) if !same_default(written, default) => problems.push(format!(
                "{location}: README says default {written}, the code says {default}"
            )),
            Some(_) => {}
        }
    }
    for (location, written) in &documented {
        if !code.iter().any(|(l, _)| l == location) {
            problems.push(format!(
                "{location}: README gives a default ({written}) the schema does not have"
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
