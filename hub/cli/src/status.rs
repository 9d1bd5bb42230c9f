//! `keelson status`: every connected proxy and its sync state per type, read
//! from a running hub's `/debug/syncz` (like `istioctl proxy-status`).

use std::process::ExitCode;

use anyhow::Result;
use serde_json::Value;

use crate::admin_client;

/// The type columns, in push order; other types show in the NACK lines only.
const COLUMNS: &[&str] = &["CDS", "LDS", "EDS", "RDS", "SDS"];

pub fn status(admin: &str, json: bool) -> Result<ExitCode> {
    let syncz = admin_client::get_json(admin, "/debug/syncz")?;
    if json {
        println!("{}", serde_json::to_string_pretty(&syncz)?);
    } else {
        print!("{}", render(&syncz));
    }
    Ok(ExitCode::SUCCESS)
}

/// The table, then one line per NACK.
pub fn render(syncz: &Value) -> String {
    let empty = Vec::new();
    let proxies = syncz["proxies"].as_array().unwrap_or(&empty);
    let mut rows = vec![
        ["NODE", "CLUSTER", "STREAM", "PROTOCOL"]
            .iter()
            .chain(COLUMNS)
            .chain(&["ISTIO", "VERSION"])
            .map(|s| s.to_string())
            .collect::<Vec<_>>(),
    ];
    let mut nacks = Vec::new();
    for p in proxies {
        let types = p["types"].as_array().unwrap_or(&empty);
        let mut row = vec![text(&p["node"]), text(&p["cluster"]), text(&p["stream"]), text(&p["protocol"])];
        for col in COLUMNS {
            let t = types.iter().find(|t| t["short"] == *col);
            row.push(t.map_or("-".to_string(), |t| text(&t["status"])));
        }
        row.push(istio_summary(types));
        // The newest version the proxy ACKed of any type: a log seq.
        let acked = types.iter().filter_map(|t| t["acked_version"].as_str()?.parse::<u64>().ok()).max();
        row.push(acked.map_or("-".to_string(), |v| v.to_string()));
        rows.push(row);
        // Only current rejections: a NACK the proxy has since moved past
        // stays visible in /debug/syncz (`nacked_version`, `error`).
        for t in types.iter().filter(|t| t["status"] == "NACKED") {
            nacks.push(format!(
                "NACK {} {} version {}: {}",
                text(&p["node"]),
                text(&t["short"]),
                text(&t["nacked_version"]),
                text(&t["error"])
            ));
        }
    }
    let widths: Vec<usize> = (0..rows[0].len()).map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for row in &rows {
        let cells: Vec<String> = row.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    for line in nacks {
        out.push_str(&line);
        out.push('\n');
    }
    out
}

/// One cell for an MCP client's Istio types (there are a dozen): the worst
/// status among them and how many are in it, e.g. `SYNCED 14/14`,
/// `STALE 2/14`; `-` for a client with none.
fn istio_summary(types: &[Value]) -> String {
    let istio: Vec<&Value> = types.iter().filter(|t| t["type_url"].as_str().is_some_and(is_istio_type)).collect();
    if istio.is_empty() {
        return "-".into();
    }
    let worst = ["NACKED", "STALE", "NOT_SENT", "SYNCED"]
        .into_iter()
        .find(|s| istio.iter().any(|t| t["status"] == *s))
        .unwrap_or("SYNCED");
    let n = istio.iter().filter(|t| t["status"] == worst).count();
    format!("{worst} {n}/{}", istio.len())
}

/// Istio kinds travel under `<group>/<version>/<Kind>` type URLs.
fn is_istio_type(type_url: &str) -> bool {
    type_url.split('/').next().is_some_and(|g| g.ends_with(".istio.io"))
}

/// `keelson source confirm NAME`: applies the deletions the hub's
/// mass-deletion guard holds for a source.
pub fn confirm_deletions(admin: &str, source: &str, token_file: &std::path::Path) -> Result<ExitCode> {
    use anyhow::Context;
    let token = std::fs::read_to_string(token_file)
        .with_context(|| format!("cannot read the API token file {}", token_file.display()))?;
    let path = format!("/v1/sources/confirm?source={}", admin_client::encode(source));
    let answer = admin_client::request_json("POST", admin, &path, Some(token.trim()))?;
    println!("deleted {} held object(s) of {}", answer["deleted"], keelson_hub::names::escaped(source));
    Ok(ExitCode::SUCCESS)
}

/// A cell of human output: node ids and NACK errors come from clients, so
/// control characters are escaped rather than allowed to forge lines.
fn text(v: &Value) -> String {
    match v {
        Value::String(s) => keelson_hub::names::escaped(s).into_owned(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_statuses_versions_and_nacks() {
        let syncz = serde_json::json!({"version": 9, "proxies": [{
            "node": "envoy-1", "cluster": "test", "stream": "sotw",
            "types": [
                {"short": "CDS", "status": "SYNCED", "acked_version": "7", "nacked_version": "6", "error": "fixed since"},
                {"short": "LDS", "status": "NACKED", "acked_version": "5", "nacked_version": "9", "error": "duplicate filter chain"}
            ]
        }]});
        let out = render(&syncz);
        let lines: Vec<&str> = out.lines().collect();
        assert!(lines[0].starts_with("NODE"), "{out}");
        assert!(lines[1].contains("envoy-1") && lines[1].contains("SYNCED") && lines[1].contains("NACKED"), "{out}");
        assert!(lines[1].ends_with('7'), "newest ACKed version: {out}");
        assert_eq!(lines[2], "NACK envoy-1 LDS version 9: duplicate filter chain");
    }

    #[test]
    fn an_mcp_client_gets_one_istio_cell_with_its_worst_status() {
        let syncz = serde_json::json!({"version": 9, "proxies": [{
            "node": "sidecar~10.0.0.1~istiod-0.istio-system~istio-system.svc.cluster.local", "cluster": "",
            "stream": "sotw", "protocol": "MCP",
            "types": [
                {"type_url": "networking.istio.io/v1/VirtualService", "short": "VirtualService", "status": "SYNCED", "acked_version": "8"},
                {"type_url": "networking.istio.io/v1/Gateway", "short": "Gateway", "status": "STALE", "acked_version": "3"},
                {"type_url": "security.istio.io/v1/PeerAuthentication", "short": "PeerAuthentication", "status": "SYNCED"}
            ]
        }]});
        let out = render(&syncz);
        let header: Vec<&str> = out.lines().next().unwrap().split_whitespace().collect();
        let row: Vec<&str> = out.lines().nth(1).unwrap().split_whitespace().collect();
        let cell = |name: &str| header.iter().position(|h| *h == name).unwrap();
        // The cluster is empty ("" shows as nothing), so find cells from the end.
        assert_eq!(row[row.len() - 1], "8", "{out}");
        assert_eq!(&row[row.len() - 3..row.len() - 1], ["STALE", "1/3"], "{out}");
        assert!(row.contains(&"MCP"), "{out}");
        assert!(cell("PROTOCOL") < cell("ISTIO"), "{out}");
    }

    #[test]
    fn client_supplied_text_cannot_forge_lines() {
        let syncz = serde_json::json!({"proxies": [{
            "node": "evil\nNACK other LDS version 1: forged", "cluster": "c", "stream": "sotw",
            "types": [{"short": "LDS", "status": "NACKED", "nacked_version": "2", "error": "bad\r\nthing\u{202e}"}]
        }]});
        let out = render(&syncz);
        assert_eq!(out.lines().count(), 3, "{out}");
        assert!(out.contains("evil\\nNACK other") && out.contains("bad\\r\\nthing\\u{202e}"), "{out}");
    }
}
