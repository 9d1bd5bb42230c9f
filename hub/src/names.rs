//! The rules for names and namespaces, and how untrusted text is shown.
//!
//! Every source and `keelson validate` reach these through
//! [`crate::object::parse_object`], so a name the log holds always passed
//! them. Kubernetes and Istio kinds follow apimachinery's rules (the ones
//! kube-apiserver enforces, `k8s.io/apimachinery/pkg/util/validation`):
//! a namespace is a DNS-1123 label, a Service name a DNS-1035 label, any
//! other name a DNS-1123 subdomain. Raw Envoy resources are cluster-scoped
//! and their names legitimately hold `|`, `:`, `.` and `/`
//! (`outbound|9080||reviews.default.svc.cluster.local`), so they get a
//! printable rule instead: visible ASCII, at most [`MAX_ENVOY_NAME_BYTES`].
//!
//! Because no namespace can contain `/`, a key's text
//! `group/kind/namespace/name` splits one way only.

use std::borrow::Cow;
use std::fmt::Write;

/// DNS-1123 label length (RFC 1123 §2.1), the namespace limit.
pub const MAX_LABEL_BYTES: usize = 63;
/// DNS-1123 subdomain length (RFC 1123 §2.1), the object name limit.
pub const MAX_SUBDOMAIN_BYTES: usize = 253;
/// Longest raw Envoy resource name. Istio's generated names are a direction,
/// a port, a subset and a host name (≤ 253), well inside it.
pub const MAX_ENVOY_NAME_BYTES: usize = 1024;

/// Which rule an object's name follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NameRule {
    /// `[a-z]([-a-z0-9]*[a-z0-9])?`, ≤ 63: Kubernetes Services (their name becomes a DNS label).
    Dns1035Label,
    /// Dot-separated DNS-1123 labels, ≤ 253: every other Kubernetes object.
    Dns1123Subdomain,
    /// Visible ASCII (`!`..=`~`), 1..=1024 bytes: raw Envoy resources.
    EnvoyPrintable,
}

/// Checks a namespace: a DNS-1123 label.
pub fn check_namespace(ns: &str) -> Result<(), String> {
    dns1123_label(ns).map_err(|why| format!("metadata.namespace {} is not a valid namespace: {why}", shown_name(ns)))
}

/// Keelson cluster names (`[[kubernetes]] name`) are DNS-1123 labels: they
/// appear in keys after `@`, in metrics labels and in localities.
pub fn check_cluster(cluster: &str) -> Result<(), String> {
    dns1123_label(cluster).map_err(|why| format!("cluster name {} is invalid: {why}", shown_name(cluster)))
}

/// Checks a name under `rule`; the error says which rule and why.
pub fn check_name(rule: NameRule, name: &str) -> Result<(), String> {
    let outcome = match rule {
        NameRule::Dns1035Label => dns1035_label(name),
        NameRule::Dns1123Subdomain => dns1123_subdomain(name),
        NameRule::EnvoyPrintable => envoy_printable(name),
    };
    outcome.map_err(|why| format!("name {} is invalid: {why}", shown_name(name)))
}

fn too_long(len: usize, max: usize) -> String {
    format!("it is {len} bytes, longer than {max}")
}

fn label_chars(s: &str, first_alpha: bool) -> Result<(), String> {
    let ok_inner = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-';
    let bytes = s.as_bytes();
    let (first, last) = (bytes[0], bytes[bytes.len() - 1]);
    let first_ok = first.is_ascii_lowercase() || (!first_alpha && first.is_ascii_digit());
    if !first_ok {
        let want = if first_alpha { "a lowercase letter" } else { "a lowercase letter or digit" };
        return Err(format!("it must start with {want}"));
    }
    if !(last.is_ascii_lowercase() || last.is_ascii_digit()) {
        return Err("it must end with a lowercase letter or digit".into());
    }
    if !bytes.iter().all(|&b| ok_inner(b)) {
        return Err("only lowercase letters, digits and '-' are allowed".into());
    }
    Ok(())
}

fn dns1123_label(s: &str) -> Result<(), String> {
    label(s, false, "a DNS-1123 label")
}

fn dns1035_label(s: &str) -> Result<(), String> {
    label(s, true, "a DNS-1035 label, as Kubernetes requires of a Service")
}

fn label(s: &str, first_alpha: bool, rule: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("it is empty".into());
    }
    if s.len() > MAX_LABEL_BYTES {
        return Err(too_long(s.len(), MAX_LABEL_BYTES));
    }
    label_chars(s, first_alpha).map_err(|why| format!("{why} ({rule})"))
}

fn dns1123_subdomain(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("it is empty".into());
    }
    if s.len() > MAX_SUBDOMAIN_BYTES {
        return Err(too_long(s.len(), MAX_SUBDOMAIN_BYTES));
    }
    for label in s.split('.') {
        if label.is_empty() {
            return Err("it has an empty part between dots (a DNS-1123 subdomain)".into());
        }
        label_chars(label, false).map_err(|why| format!("{why} in each dot-separated part (a DNS-1123 subdomain)"))?;
    }
    Ok(())
}

fn envoy_printable(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("it is empty".into());
    }
    if s.len() > MAX_ENVOY_NAME_BYTES {
        return Err(too_long(s.len(), MAX_ENVOY_NAME_BYTES));
    }
    match s.char_indices().find(|(_, c)| !c.is_ascii_graphic()) {
        Some((at, c)) => Err(format!(
            "character {} at byte {at} is not visible ASCII (Envoy resource names allow '!' to '~')",
            escaped(c.encode_utf8(&mut [0; 4]))
        )),
        None => Ok(()),
    }
}

/// How an error quotes a rejected name: escaped, and cut short when long,
/// so neither a newline nor 70,000 bytes reach a log line whole.
pub fn shown_name(name: &str) -> String {
    const SHOWN: usize = 80;
    if name.len() <= SHOWN {
        return format!("\"{}\"", escaped(name));
    }
    let cut = (0..=SHOWN).rev().find(|&i| name.is_char_boundary(i)).unwrap_or(0);
    format!("\"{}…\" ({} bytes)", escaped(&name[..cut]), name.len())
}

/// True for characters that must not reach a terminal raw: control
/// characters, and the invisible formatting ones that reorder or hide text
/// (bidi overrides like U+202E, zero-width joiners, the BOM).
fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2069}' | '\u{FEFF}')
}

/// `text` as it may be shown in human output: control and invisible
/// formatting characters become `\n`, `\t`, `\u{202e}`…, so text a user or
/// client supplied can neither forge lines nor hide what it says.
pub fn escaped(text: &str) -> Cow<'_, str> {
    if !text.chars().any(needs_escape) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if needs_escape(c) => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubernetes_names_follow_apimachinery() {
        for ok in ["a", "reviews", "reviews-v2", "0abc", "a.b.c", &"a".repeat(253)] {
            assert!(check_name(NameRule::Dns1123Subdomain, ok).is_ok(), "{ok}");
        }
        let hostile =
            ["", "../x", "a/b", "A", "a_b", "-a", "a-", "a..b", ".a", "a\0b", "a\nb", "a\tb", " ", "   ", "a\u{202E}b"];
        for bad in
            hostile.iter().map(|s| s.to_string()).chain([&"a".repeat(254), &"a".repeat(70_000)].map(String::clone))
        {
            assert!(check_name(NameRule::Dns1123Subdomain, &bad).is_err(), "{bad:?}");
        }
        assert!(check_name(NameRule::Dns1035Label, "reviews").is_ok());
        assert!(check_name(NameRule::Dns1035Label, "9reviews").unwrap_err().contains("DNS-1035"));
        assert!(check_name(NameRule::Dns1035Label, "a.b").is_err());
        assert!(check_namespace("istio-system").is_ok());
        for bad in ["a/b", "a.b", "", &"n".repeat(64)] {
            assert!(check_namespace(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn envoy_names_are_visible_ascii() {
        for ok in ["outbound|9080||reviews.default.svc.cluster.local", "a/b:c", "listener_0", "x"] {
            assert!(check_name(NameRule::EnvoyPrintable, ok).is_ok(), "{ok}");
        }
        for bad in ["", "a b", "a\nb", "a\0", "\u{202E}x", "é", &"x".repeat(1025)] {
            assert!(check_name(NameRule::EnvoyPrintable, bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn errors_never_carry_the_raw_name() {
        let err = check_name(NameRule::Dns1123Subdomain, "evil\n  12  2026-01-01 forged").unwrap_err();
        assert!(!err.contains('\n'), "{err:?}");
        assert!(err.contains("\\n"), "{err:?}");
        let err = check_name(NameRule::EnvoyPrintable, &"y".repeat(70_000)).unwrap_err();
        assert!(err.len() < 300, "{} bytes", err.len());
        assert!(err.contains("70000 bytes"), "{err}");
    }

    #[test]
    fn escaping_shows_invisible_characters() {
        assert_eq!(escaped("plain"), "plain");
        assert_eq!(escaped("a\nb\tc\u{202E}d\0"), "a\\nb\\tc\\u{202e}d\\u{0}");
    }
}
