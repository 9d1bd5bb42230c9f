//! Label selectors as the apiserver parses them (`k8s.io/apimachinery/pkg/labels/selector.go`):
//! comma-separated requirements, all of which must hold: `k=v`, `k==v`, `k!=v`,
//! `k in (a,b)`, `k notin (a,b)`, `k` (exists) and `!k` (does not exist).
//! `k!=v` and `notin` also match objects without the label, as upstream does.

use serde_json::Value;

#[derive(Clone, Debug, PartialEq, Eq)]
enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

/// A parsed selector; the empty selector matches everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LabelSelector(Vec<Requirement>);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unable to parse requirement: {0}")]
pub struct SelectorError(pub String);

/// Splits on commas outside parentheses (commas inside `in (a,b)` separate values).
fn split_requirements(s: &str) -> Vec<&str> {
    let (mut parts, mut depth, mut start) = (Vec::new(), 0i32, 0);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
}

fn value_set(rest: &str, raw: &str) -> Result<Vec<String>, SelectorError> {
    let inner =
        rest.trim().strip_prefix('(').and_then(|r| r.strip_suffix(')')).ok_or_else(|| SelectorError(raw.to_owned()))?;
    Ok(inner.split(',').map(|v| v.trim().to_owned()).collect())
}

impl LabelSelector {
    pub fn parse(s: &str) -> Result<Self, SelectorError> {
        let mut reqs = Vec::new();
        for raw in split_requirements(s) {
            let r = raw.trim();
            if r.is_empty() {
                continue;
            }
            let req = if let Some((k, v)) = r.split_once("!=") {
                Requirement::NotEquals(k.trim().to_owned(), v.trim().to_owned())
            } else if let Some((k, v)) = r.split_once("==") {
                Requirement::Equals(k.trim().to_owned(), v.trim().to_owned())
            } else if let Some((k, v)) = r.split_once('=') {
                Requirement::Equals(k.trim().to_owned(), v.trim().to_owned())
            } else if let Some((k, rest)) = r.split_once(" notin ") {
                Requirement::NotIn(k.trim().to_owned(), value_set(rest, r)?)
            } else if let Some((k, rest)) = r.split_once(" in ") {
                Requirement::In(k.trim().to_owned(), value_set(rest, r)?)
            } else if let Some(k) = r.strip_prefix('!') {
                Requirement::NotExists(k.trim().to_owned())
            } else if r.contains(char::is_whitespace) || r.contains('(') {
                return Err(SelectorError(r.to_owned()));
            } else {
                Requirement::Exists(r.to_owned())
            };
            reqs.push(req);
        }
        Ok(LabelSelector(reqs))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `object`'s `metadata.labels` satisfy every requirement.
    pub fn matches(&self, object: &Value) -> bool {
        let labels = object.pointer("/metadata/labels");
        let get = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
        self.0.iter().all(|req| match req {
            Requirement::Equals(k, v) => get(k) == Some(v.as_str()),
            Requirement::NotEquals(k, v) => get(k) != Some(v.as_str()),
            Requirement::In(k, vs) => get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
            Requirement::NotIn(k, vs) => !get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
            Requirement::Exists(k) => get(k).is_some(),
            Requirement::NotExists(k) => get(k).is_none(),
        })
    }
}

/// A field selector. Every kind supports `metadata.name` and `metadata.namespace`
/// (apiserver `registry/generic` `DefaultClusterScopedAttr`/`DefaultNamespaceScopedAttrs`);
/// other fields are kind-specific and refused here as the server refuses unknown ones.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FieldSelector(Vec<(String, bool, String)>);

impl FieldSelector {
    pub fn parse(s: &str) -> Result<Self, SelectorError> {
        let mut reqs = Vec::new();
        for raw in s.split(',').map(str::trim).filter(|r| !r.is_empty()) {
            let (field, equal, value) = if let Some((f, v)) = raw.split_once("!=") {
                (f, false, v)
            } else if let Some((f, v)) = raw.split_once("==").or_else(|| raw.split_once('=')) {
                (f, true, v)
            } else {
                return Err(SelectorError(raw.to_owned()));
            };
            let field = field.trim();
            if field != "metadata.name" && field != "metadata.namespace" {
                return Err(SelectorError(format!("field label not supported: {field}")));
            }
            reqs.push((field.to_owned(), equal, value.trim().to_owned()));
        }
        Ok(FieldSelector(reqs))
    }

    pub fn matches(&self, object: &Value) -> bool {
        self.0.iter().all(|(field, equal, value)| {
            let pointer = if field == "metadata.name" { "/metadata/name" } else { "/metadata/namespace" };
            let actual = object.pointer(pointer).and_then(Value::as_str).unwrap_or("");
            (actual == value) == *equal
        })
    }
}

/// Label and field selector together, as LIST and WATCH apply them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selector {
    pub labels: LabelSelector,
    pub fields: FieldSelector,
}

impl Selector {
    pub fn matches(&self, object: &Value) -> bool {
        self.labels.matches(object) && self.fields.matches(object)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn requirements_combine_as_upstream() {
        let obj = json!({"metadata": {"labels": {"app": "reviews", "tier": "web"}}});
        let m = |s: &str| LabelSelector::parse(s).unwrap().matches(&obj);
        assert!(m("app=reviews,tier!=db"));
        assert!(m("app==reviews"));
        assert!(!m("app=ratings"));
        assert!(m("tier in (web, api),app"));
        assert!(!m("tier notin (web)"));
        assert!(m("!missing"));
        assert!(!m("missing"));
        assert!(m("missing!=x"));
        assert!(m(""));
        assert!(LabelSelector::parse("a in b").is_err());
    }

    #[test]
    fn field_selectors_know_name_and_namespace_only() {
        let obj = json!({"metadata": {"name": "a", "namespace": "default"}});
        let m = |s: &str| FieldSelector::parse(s).unwrap().matches(&obj);
        assert!(m("metadata.name=a,metadata.namespace!=kube-system"));
        assert!(!m("metadata.name==b"));
        assert!(FieldSelector::parse("spec.nodeName=n1").is_err());
    }
}
