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
