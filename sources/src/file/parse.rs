//! Reading a tree of config files into validated objects, with file:line errors.

use std::fmt;

use keelson_hub::object::{Limits, ValidObject, parse_object_within};

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

/// Parses one file's text. `display` is how errors and locations name it.
pub fn parse_file(display: &str, text: &str, limits: &Limits) -> FileResult {
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
                    // serde_yaml counts lines from the document's start.
                    let line = e.location().map_or(start, |l| start + l.line() - 1);
                    errors.push(err(line, shift_line_numbers(&e.to_string(), start - 1)));
                    continue;
                }
            }
        };
        if value.is_null() {
            continue; // an empty document: comments only
        }
        match parse_object_within(&value, limits) {
            Ok(object) => {
                objects.push(FileObject { object, location: format!("{display}:{}", start + leading_blank(&doc)) })
            }
            Err(message) => errors.push(err(start + leading_blank(&doc), message)),
        }
    }
    if errors.is_empty() { Ok(objects) } else { Err(errors) }
}

/// Rewrites every `line N` in a message to `line N+offset`, so positions
/// inside a document's message (`at line 3 column 5, while parsing a flow
/// sequence at line 3 column 1`) are file lines too.
fn shift_line_numbers(message: &str, offset: usize) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(at) = rest.find("line ") {
        let (before, after) = rest.split_at(at + "line ".len());
        out.push_str(before);
        let digits = after.len() - after.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        match after[..digits].parse::<usize>() {
            Ok(n) => out.push_str(&(n + offset).to_string()),
            Err(_) => out.push_str(&after[..digits]),
        }
        rest = &after[digits..];
    }
    out.push_str(rest);
    out
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

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "# services\napiVersion: v1\nkind: Service\nmetadata: { name: a }\nspec: { ports: [{ port: 80 }] }\n---\n\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: { name: a }\nspec: { hosts: [a] }\n";

    #[test]
    fn multi_document_yaml_gives_objects_with_their_lines() {
        let objs = parse_file("dir/a.yaml", GOOD, &Limits::default()).unwrap();
        assert_eq!(objs.len(), 2);
        assert_eq!(objs[0].location, "dir/a.yaml:2");
        assert_eq!(objs[1].location, "dir/a.yaml:9");
        assert_eq!(objs[1].object.key.to_string(), "networking.istio.io/VirtualService/default/a");
    }

    #[test]
    fn syntax_and_validation_errors_name_file_and_line() {
        let broken = GOOD.replace("spec: { hosts: [a] }", "spec: { hosts: [a }");
        let errs = parse_file("a.yaml", &broken, &Limits::default()).unwrap_err();
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].line, 12, "{}", errs[0]);
        let invalid = GOOD.replace("spec: { hosts: [a] }", "spec: { gateways: [g] }");
        let errs = parse_file("a.yaml", &invalid, &Limits::default()).unwrap_err();
        assert_eq!(errs[0].to_string(), "a.yaml:9: spec.hosts is required");
    }

    #[test]
    fn errors_in_later_documents_give_file_lines_in_position_and_message() {
        // Third document starts at file line 10; its broken flow sequence is on file line 13.
        let text = format!(
            "{GOOD}---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{ name: b }}\nspec: {{ hosts: [b }}\n"
        );
        let errs = parse_file("m.yaml", &text, &Limits::default()).unwrap_err();
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!(errs[0].line, 17, "{}", errs[0]);
        assert!(errs[0].message.contains("line 17"), "the message names file lines too: {}", errs[0]);
        assert!(!errs[0].message.contains("line 4 "), "no document-relative line: {}", errs[0]);
        // A validation error in the third document: the file line of its first key.
        let invalid = format!(
            "{GOOD}---\n# c\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{ name: b }}\nspec: {{}}\n"
        );
        let errs = parse_file("m.yaml", &invalid, &Limits::default()).unwrap_err();
        assert_eq!(errs[0].to_string(), "m.yaml:15: spec.hosts is required");
    }

    #[test]
    fn shifting_line_numbers_rewrites_each_one() {
        assert_eq!(
            shift_line_numbers("x at line 3 column 5, while parsing at line 1 column 2", 10),
            "x at line 13 column 5, while parsing at line 11 column 2"
        );
        assert_eq!(shift_line_numbers("no lines here; line x", 4), "no lines here; line x");
    }

    #[test]
    fn json_files_parse_too() {
        let objs = parse_file(
            "c.json",
            r#"{"apiVersion":"xds.keelson.dev/v1","kind":"Cluster","spec":{"name":"c"}}"#,
            &Limits::default(),
        )
        .unwrap();
        assert_eq!(objs[0].object.key.name, "c");
        let errs = parse_file("c.json", "{\n  \"kind\": \n}", &Limits::default()).unwrap_err();
        assert_eq!(errs[0].line, 3);
    }
}
