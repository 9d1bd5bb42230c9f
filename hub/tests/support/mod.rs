//! What the hub's integration tests share.

use keelson_hub::Op;

/// The upsert a source would submit for a static Envoy Cluster `name`,
/// validated through the one validation path.
pub fn cluster(name: &str, connect_timeout: &str, location: &str) -> Op {
    let obj = serde_json::json!({"apiVersion": "xds.keelson.dev/v1", "kind": "Cluster", "metadata": {"name": name},
        "spec": {"name": name, "type": "STATIC", "connect_timeout": connect_timeout}});
    let v = keelson_hub::object::parse_object(&obj).unwrap();
    Op::Upsert {
        key: v.key,
        source_version: String::new(),
        body: v.body,
        location: location.into(),
        author: String::new(),
    }
}
