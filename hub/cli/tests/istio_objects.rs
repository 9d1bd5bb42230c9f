//! Istio objects are real protobuf (issue 10, item 1): istio.io's own
//! examples validate and transcode; a misspelled field, a wrong enum value
//! and a wrong type are each an error naming the field's path, in `keelson
//! validate` and in a running hub, which keeps serving the last good version.

mod support;

use std::path::Path;

use support::{Serve, keelson};

/// istio.io documentation examples, one per kind family (tests/istio/).
fn examples() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/istio")
}

const TYPO: &str = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: reviews, namespace: bookinfo}\nspec:\n  hosts: [reviews]\n  http:\n  - rout:\n    - destination: {host: reviews}\n";
const BAD_ENUM: &str = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: reviews, namespace: bookinfo}\nspec:\n  host: reviews\n  trafficPolicy:\n    loadBalancer: {simple: FASTEST}\n";
const WRONG_TYPE: &str = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: ratings, namespace: bookinfo}\nspec:\n  hosts: [ratings]\n  http:\n  - route:\n    - destination: {host: ratings}\n      weight: seventy\n";

#[test]
fn istio_io_examples_validate() {
    let out = keelson(&["validate", examples().to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("1 file(s) valid"), "{text}");
}

#[test]
fn validate_names_the_field_path_of_each_kind_of_mistake() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("typo.yaml"), TYPO).unwrap();
    std::fs::write(dir.path().join("enum.yaml"), BAD_ENUM).unwrap();
    std::fs::write(dir.path().join("type.yaml"), WRONG_TYPE).unwrap();
    let out = keelson(&["validate", dir.path().to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    for (file, message, path, what) in [
        ("typo.yaml", "VirtualService", "http[0]", "'rout'"),
        ("enum.yaml", "DestinationRule", "trafficPolicy.loadBalancer.simple", "'FASTEST'"),
        ("type.yaml", "VirtualService", "http[0].route[0].weight", "invalid digit"),
    ] {
        let line = text.lines().find(|l| l.contains(file)).unwrap_or_else(|| panic!("no error for {file}: {text}"));
        assert!(line.contains(&format!("istio.networking.v1alpha3.{message}")), "{line}");
        assert!(line.contains(&format!("at {path}:")), "{line}");
        assert!(line.contains(what), "{line}");
    }
}

#[test]
fn a_running_hub_rejects_the_bad_edit_and_keeps_the_last_good_version() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config");
    std::fs::create_dir(&config).unwrap();
    let good = TYPO.replace("rout:", "route:");
    std::fs::write(config.join("vs.yaml"), &good).unwrap();
    let toml = dir.path().join("keelson.toml");
    std::fs::write(&toml, "[snapshot]\nquiet = \"20ms\"\n[file]\nrescan = \"200ms\"\n").unwrap();
    let s = Serve::start(
        &dir.path().join("data"),
        &["--config", toml.to_str().unwrap(), "--source", &format!("file:{}", config.display())],
    );
    s.wait_for("/readyz", "readiness", |status, _| status == 200);
    let before = s.version();
    for bad in [TYPO, WRONG_TYPE.replace("ratings", "reviews").as_str()] {
        std::fs::write(config.join("vs.yaml"), bad).unwrap();
        let errors =
            s.wait_for("/debug/sources", "the transcoding error", |_, v| v.to_string().contains("is not a valid"));
        assert!(
            errors
                .to_string()
                .contains("vs.yaml:1: spec is not a valid istio.networking.v1alpha3.VirtualService: at http[0]"),
            "{errors}"
        );
        assert_eq!(s.version(), before, "the last good version stays");
    }
    let snap = s.get("/debug/snapshot?resources=1").1;
    assert!(snap.to_string().contains("networking.istio.io/VirtualService/bookinfo/reviews"), "{snap}");
    // Fixing the file clears the error and applies it.
    std::fs::write(config.join("vs.yaml"), good.replace("host: reviews", "host: reviews-v2")).unwrap();
    s.wait_for("/debug/sources", "the error to clear", |_, v| !v.to_string().contains("is not a valid"));
    s.wait_for("/debug/snapshot", "the fixed version", |_, v| v["version"].as_u64().is_some_and(|v| v > before));
    s.sigterm();
}
