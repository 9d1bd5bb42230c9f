//! Reading a tree of config files into validated objects, with file:line errors.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use keelson_hub::object::{ValidObject, parse_object};

/// An object read from a file, with where it came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileObject {
    pub object: ValidObject,
    /// `path/relative/to/root.yaml:LINE`
    pub location: String,
}

/// Why a file was rejected. `line` is 1-based; 0 when the whole file is at fault.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileError {
    pub path: String,
    pub line: usize,
    pub message: String,
}

impl fmt::Display for FileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.path, self.line, self.message)
    }
}

/// The outcome of reading one file: all its objects, or every error in it.
/// A file with any error counts as broken as a whole, so a half-saved file
/// never deletes the objects it no longer parses to.
pub type FileResult = Result<Vec<FileObject>, Vec<FileError>>;

fn is_config_file(path: &Path) -> bool {
    matches!(path.extension().and_then(|e| e.to_str()), Some("yaml" | "yml" | "json"))
}

/// Lists config files below `root`, following symlinks (Kubernetes ConfigMap
/// mounts are symlinks into `..data`) and skipping hidden entries (so the
/// `..data` and `..<timestamp>` copies are not read twice).
pub fn list_files(root: &Path) -> std::io::Result<Vec<(String, PathBuf)>> {
    let meta = std::fs::metadata(root)?;
    if !meta.is_dir() {
        return Err(std::io::Error::new(std::io::ErrorKind::NotADirectory, "not a directory"));
    }
    let mut files = Vec::new();
    let walk = walkdir::WalkDir::new(root).follow_links(true).sort_by_file_name().into_iter();
    for entry in walk.filter_entry(|e| e.depth() == 0 || !e.file_name().to_string_lossy().starts_with('.')) {
        let entry = entry.map_err(std::io::Error::other)?;
        if entry.file_type().is_file() && is_config_file(entry.path()) {
            let rel = entry.path().strip_prefix(root).unwrap_or(entry.path()).to_string_lossy().into_owned();
            files.push((rel, entry.path().to_path_buf()));
        }
    }
    Ok(files)
}

/// Parses one file's text. `display` is how errors and locations name it.
pub fn parse_file(display: &str, text: &str) -> FileResult {
    let is_json = display.ends_with(".json");
    let docs = if is_json { vec![(1, text.to_string())] } else { split_yaml(text) };
    let mut objects = Vec::new();
    let mut errors = Vec::new();
    for (start, doc) in docs {
        let err = |line: usize, message: String| FileError { path: display.to_string(), line, message };
        let value: serde_json::Value = if is_json {
            match serde_json::from_str(&doc) {
                Ok(v) => v,
                Err(e) => {
                    errors.push(err(e.line(), e.to_string()));
                    continue;
                }
            }
        } else {
            match serde_yaml::from_str(&doc) {
                Ok(v) => v,
                Err(e) => {
                    let line = e.location().map_or(start, |l| start + l.line() - 1);
                    errors.push(err(line, e.to_string()));
                    continue;
                }
            }
        };
        if value.is_null() {
            continue; // an empty document: comments only
        }
        match parse_object(&value) {
            Ok(object) => {
                objects.push(FileObject { object, location: format!("{display}:{}", start + leading_blank(&doc)) })
            }
            Err(message) => errors.push(err(start + leading_blank(&doc), message)),
        }
    }
    if errors.is_empty() { Ok(objects) } else { Err(errors) }
}

/// Lines before the first line with content, so a location points at the object.
fn leading_blank(doc: &str) -> usize {
    doc.lines().take_while(|l| l.trim().is_empty() || l.trim_start().starts_with('#')).count()
}

/// Splits multi-document YAML at `---` lines, keeping each document's first
/// line number so errors point into the file, not into the document.
fn split_yaml(text: &str) -> Vec<(usize, String)> {
    let mut docs = Vec::new();
    let mut start = 1;
    let mut current = String::new();
    for (i, line) in text.lines().enumerate() {
        let is_separator = line == "---" || line.starts_with("--- ") || line == "...";
        if is_separator {
            docs.push((start, std::mem::take(&mut current)));
            start = i + 2;
        } else {
            current.push_str(line);
            current.push('\n');
        }
    }
    docs.push((start, current));
    docs
}

/// Parse results by file and content hash, so a rescan re-parses (and
/// re-transcodes) only the files whose bytes changed: per-change work
/// follows the change, not the size of the tree.
#[derive(Default)]
pub struct ParseCache {
    files: BTreeMap<String, (u128, FileResult)>,
}

/// Reads every file below `root`. Returns per-file results in path order;
/// an unreadable root is an error (the caller marks the source down).
pub fn read_tree(root: &Path, cache: &mut ParseCache) -> std::io::Result<BTreeMap<String, FileResult>> {
    let mut out = BTreeMap::new();
    let mut fresh = BTreeMap::new();
    for (rel, path) in list_files(root)? {
        let result = match std::fs::read_to_string(&path) {
            Ok(text) => {
                let hash = xxhash_rust::xxh3::xxh3_128(text.as_bytes());
                let result = match cache.files.remove(&rel) {
                    Some((cached, result)) if cached == hash => result,
                    _ => parse_file(&rel, &text),
                };
                fresh.insert(rel.clone(), (hash, result.clone()));
                result
            }
            Err(e) => Err(vec![FileError { path: rel.clone(), line: 0, message: format!("cannot read: {e}") }]),
        };
        out.insert(rel, result);
    }
    cache.files = fresh;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "# services\napiVersion: v1\nkind: Service\nmetadata: { name: a }\nspec: { ports: [{ port: 80 }] }\n---\n\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: { name: a }\nspec: { hosts: [a] }\n";

    #[test]
    fn multi_document_yaml_gives_objects_with_their_lines() {
        let objs = parse_file("dir/a.yaml", GOOD).unwrap();
        assert_eq!(objs.len(), 2);
        assert_eq!(objs[0].location, "dir/a.yaml:2");
        assert_eq!(objs[1].location, "dir/a.yaml:9");
        assert_eq!(objs[1].object.key.to_string(), "networking.istio.io/VirtualService/default/a");
    }

    #[test]
    fn syntax_and_validation_errors_name_file_and_line() {
        let broken = GOOD.replace("spec: { hosts: [a] }", "spec: { hosts: [a }");
        let errs = parse_file("a.yaml", &broken).unwrap_err();
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].line, 12, "{}", errs[0]);
        let invalid = GOOD.replace("spec: { hosts: [a] }", "spec: { gateways: [g] }");
        let errs = parse_file("a.yaml", &invalid).unwrap_err();
        assert_eq!(errs[0].to_string(), "a.yaml:9: spec.hosts is required");
    }

    #[test]
    fn a_rescan_reuses_results_of_unchanged_files_only() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.yaml"), GOOD).unwrap();
        let mut cache = ParseCache::default();
        let first = read_tree(dir.path(), &mut cache).unwrap();
        let again = read_tree(dir.path(), &mut cache).unwrap();
        assert_eq!(first, again);
        std::fs::write(dir.path().join("a.yaml"), GOOD.replace("hosts: [a]", "hosts: [b]")).unwrap();
        let changed = read_tree(dir.path(), &mut cache).unwrap();
        assert_ne!(changed, first, "a changed file is parsed again");
        std::fs::remove_file(dir.path().join("a.yaml")).unwrap();
        assert!(read_tree(dir.path(), &mut cache).unwrap().is_empty());
        assert!(cache.files.is_empty(), "entries of deleted files are dropped");
    }

    #[test]
    fn json_files_parse_too() {
        let objs = parse_file("c.json", r#"{"apiVersion":"xds.keelson.dev/v1","kind":"Cluster","spec":{"name":"c"}}"#)
            .unwrap();
        assert_eq!(objs[0].object.key.name, "c");
        let errs = parse_file("c.json", "{\n  \"kind\": \n}").unwrap_err();
        assert_eq!(errs[0].line, 3);
    }
}
