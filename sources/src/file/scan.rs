//! Listing a tree of config files and reading only the files that changed.
//!
//! A rescan stats every file and reads only those whose (device, inode,
//! size, mtime, ctime) differ from the last read, so an idle tree costs a
//! directory walk and no file reads. A *full check* reads everything
//! regardless, for edits a stat cannot see (same size, same mtime tick).

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::parse::{FileError, FileResult, parse_file};
use keelson_hub::object::Limits;

/// Default `[file] max_file_bytes`: far above any sane config file, low
/// enough that a stray log or dump in the tree cannot exhaust memory.
pub const DEFAULT_MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;

/// A file modified this recently before it was read may change again within
/// the same mtime tick (1 s or 2 s on some filesystems) without its stat
/// changing, so it is read again at the next scan rather than trusted.
const RACY_WINDOW: Duration = Duration::from_secs(2);

/// What identifies one version of a file without reading it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FileStat {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl FileStat {
    fn of(meta: &std::fs::Metadata) -> Self {
        FileStat {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        }
    }
}

struct Cached {
    stat: FileStat,
    /// False while the file was read inside the racy window.
    trusted: bool,
    /// Hash of the bytes read; `None` when the file was not read (too big).
    hash: Option<u128>,
    result: FileResult,
}

/// Per-file stat and parse results of the last scan.
#[derive(Default)]
pub struct TreeCache {
    files: BTreeMap<String, Cached>,
}

#[derive(Clone, Copy, Debug)]
pub struct ScanOptions {
    pub max_file_bytes: u64,
    /// Read every file, trusting no stat.
    pub full_check: bool,
    /// What every object is validated against (the hub's `[limits]`).
    pub limits: Limits,
}

impl Default for ScanOptions {
    fn default() -> Self {
        ScanOptions { max_file_bytes: DEFAULT_MAX_FILE_BYTES, full_check: true, limits: Limits::default() }
    }
}

/// One scan of a tree.
#[derive(Debug, Default, PartialEq)]
pub struct Tree {
    /// Per config file, and per entry that could not be listed (a dangling
    /// symlink, a symlink loop, an unreadable directory: `path:0: reason`),
    /// in path order, relative to the root.
    pub files: BTreeMap<String, FileResult>,
    /// Files whose bytes this scan read (opened), in path order.
    pub read: Vec<String>,
}

fn is_config_file(path: &Path) -> bool {
    matches!(path.extension().and_then(|e| e.to_str()), Some("yaml" | "yml" | "json"))
}

fn is_hidden(path: &Path) -> bool {
    path.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.'))
}

fn relative(root: &Path, path: &Path) -> String {
    path.strip_prefix(root).unwrap_or(path).to_string_lossy().into_owned()
}

fn path_error(path: String, message: String) -> FileResult {
    Err(vec![FileError { path, line: 0, message }])
}

/// Why a walk could not go through an entry, in words that name the fault.
fn walk_error_message(err: &walkdir::Error, root: &Path) -> String {
    if let Some(ancestor) = err.loop_ancestor() {
        let ancestor = if ancestor == root { ".".to_string() } else { relative(root, ancestor) };
        return format!("symlink loop: points back to {ancestor}");
    }
    let io = err.io_error().map_or_else(|| err.to_string(), ToString::to_string);
    match err.path().map(std::fs::read_link) {
        Some(Ok(target)) if err.io_error().is_some_and(|e| e.kind() == std::io::ErrorKind::NotFound) => {
            format!("dangling symlink to {}", target.display())
        }
        _ => format!("cannot read: {io}"),
    }
}

/// Config files below `root` with their metadata (through symlinks: Kubernetes
/// ConfigMap mounts are symlinks into `..data`), skipping hidden entries (so
/// `..data` and `..<timestamp>` copies are not read twice). An entry the walk
/// cannot go through is an error for that path; only an unreadable root is
/// an error for the whole listing.
#[allow(clippy::type_complexity)]
fn list_files(root: &Path) -> std::io::Result<(Vec<(String, PathBuf, std::fs::Metadata)>, Vec<(String, String)>)> {
    let meta = std::fs::metadata(root)?;
    if !meta.is_dir() {
        return Err(std::io::Error::new(std::io::ErrorKind::NotADirectory, "not a directory"));
    }
    let (mut files, mut errors) = (Vec::new(), Vec::new());
    let walk = walkdir::WalkDir::new(root).follow_links(true).sort_by_file_name().into_iter();
    for entry in walk.filter_entry(|e| e.depth() == 0 || !is_hidden(e.path())) {
        let entry = match entry {
            Ok(entry) => entry,
            Err(err) if err.depth() == 0 => {
                return Err(err.into_io_error().unwrap_or_else(|| std::io::Error::other("cannot list")));
            }
            Err(err) => {
                if let Some(path) = err.path().filter(|p| !is_hidden(p)) {
                    errors.push((relative(root, path), walk_error_message(&err, root)));
                }
                continue;
            }
        };
        if entry.file_type().is_file() && is_config_file(entry.path()) {
            let rel = relative(root, entry.path());
            match std::fs::metadata(entry.path()) {
                Ok(meta) => files.push((rel, entry.path().to_path_buf(), meta)),
                Err(e) => errors.push((rel, format!("cannot read: {e}"))),
            }
        }
    }
    Ok((files, errors))
}

fn too_big(size: u64, max: u64) -> String {
    format!("file is {size} bytes, above [file] max_file_bytes = {max}")
}

/// Reads at most `max + 1` bytes, so a file growing after its stat is still bounded.
fn read_bounded(path: &Path, max: u64) -> Result<String, String> {
    let mut bytes = Vec::new();
    let file = std::fs::File::open(path).map_err(|e| format!("cannot read: {e}"))?;
    file.take(max.saturating_add(1)).read_to_end(&mut bytes).map_err(|e| format!("cannot read: {e}"))?;
    if bytes.len() as u64 > max {
        return Err(format!("file is more than {max} bytes, above [file] max_file_bytes = {max}"));
    }
    String::from_utf8(bytes).map_err(|e| format!("cannot read: not UTF-8: {e}"))
}

/// Reads one file outside a tree (`keelson validate FILE`), with the same limit.
pub fn read_file(path: &Path, display: &str, opts: &ScanOptions) -> FileResult {
    let max_file_bytes = opts.max_file_bytes;
    let size = std::fs::metadata(path)
        .map_err(|e| vec![FileError { path: display.to_string(), line: 0, message: format!("cannot read: {e}") }])?;
    if size.len() > max_file_bytes {
        return path_error(display.to_string(), too_big(size.len(), max_file_bytes));
    }
    match read_bounded(path, max_file_bytes) {
        Ok(text) => parse_file(display, &text, &opts.limits),
        Err(message) => path_error(display.to_string(), message),
    }
}

/// Scans the tree below `root`, reading only files whose stat changed since
/// `cache` saw them (every file when `opts.full_check`), and parsing only
/// files whose bytes changed. An unreadable root is an error (the caller
/// marks the source down).
pub fn read_tree(root: &Path, cache: &mut TreeCache, opts: ScanOptions) -> std::io::Result<Tree> {
    let (listed, errors) = list_files(root)?;
    let mut tree = Tree::default();
    let mut fresh = BTreeMap::new();
    for (rel, path, meta) in listed {
        let stat = FileStat::of(&meta);
        let previous = cache.files.remove(&rel);
        if let Some(c) = previous.as_ref().filter(|c| c.stat == stat && c.trusted && !opts.full_check) {
            tree.files.insert(rel.clone(), c.result.clone());
            fresh.insert(rel, previous.expect("just matched"));
            continue;
        }
        if stat.size > opts.max_file_bytes {
            let result = path_error(rel.clone(), too_big(stat.size, opts.max_file_bytes));
            tree.files.insert(rel.clone(), result.clone());
            fresh.insert(rel, Cached { stat, trusted: true, hash: None, result });
            continue;
        }
        let started = SystemTime::now();
        tree.read.push(rel.clone());
        let result = match read_bounded(&path, opts.max_file_bytes) {
            Ok(text) => {
                let hash = xxhash_rust::xxh3::xxh3_128(text.as_bytes());
                let result = match previous {
                    Some(c) if c.hash == Some(hash) => c.result,
                    _ => parse_file(&rel, &text, &opts.limits),
                };
                let trusted = meta.modified().is_ok_and(|m| m + RACY_WINDOW < started);
                fresh.insert(rel.clone(), Cached { stat, trusted, hash: Some(hash), result: result.clone() });
                result
            }
            // Not cached: an unreadable file is tried again at the next scan.
            Err(message) => path_error(rel.clone(), message),
        };
        tree.files.insert(rel, result);
    }
    for (rel, message) in errors {
        tree.files.insert(rel.clone(), path_error(rel, message));
    }
    cache.files = fresh;
    Ok(tree)
}

#[cfg(test)]
mod tests {
    use super::*;

    const VS: &str =
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: { name: NAME }\nspec: { hosts: [NAME] }\n";

    const RESCAN: ScanOptions = ScanOptions {
        max_file_bytes: DEFAULT_MAX_FILE_BYTES,
        full_check: false,
        limits: Limits { max_resource_bytes: Limits::DEFAULT_MAX_RESOURCE_BYTES },
    };

    /// Writes a file with an mtime well outside the racy window, so its stat is trusted.
    fn write_old(path: &Path, text: &str, age_secs: u64) {
        std::fs::write(path, text).unwrap();
        let f = std::fs::File::options().write(true).open(path).unwrap();
        f.set_modified(SystemTime::now() - Duration::from_secs(age_secs)).unwrap();
    }

    #[test]
    fn a_rescan_reads_only_files_whose_stat_changed() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["a", "b", "c"] {
            write_old(&dir.path().join(format!("{name}.yaml")), &VS.replace("NAME", name), 3600);
        }
        let mut cache = TreeCache::default();
        let first = read_tree(dir.path(), &mut cache, ScanOptions::default()).unwrap();
        assert_eq!(first.read, ["a.yaml", "b.yaml", "c.yaml"]);
        let idle = read_tree(dir.path(), &mut cache, RESCAN).unwrap();
        assert!(idle.read.is_empty(), "an unchanged tree is not read: {:?}", idle.read);
        assert_eq!(idle.files, first.files);

        write_old(&dir.path().join("b.yaml"), &VS.replace("NAME", "b2"), 3000);
        let edited = read_tree(dir.path(), &mut cache, RESCAN).unwrap();
        assert_eq!(edited.read, ["b.yaml"], "exactly the edited file is read");
        assert_eq!(edited.files["b.yaml"].as_ref().unwrap()[0].object.key.name, "b2");
        assert_eq!(edited.files["a.yaml"], first.files["a.yaml"]);

        let full = read_tree(dir.path(), &mut cache, ScanOptions::default()).unwrap();
        assert_eq!(full.read.len(), 3, "a full check reads everything");

        std::fs::remove_file(dir.path().join("a.yaml")).unwrap();
        let removed = read_tree(dir.path(), &mut cache, RESCAN).unwrap();
        assert!(!removed.files.contains_key("a.yaml"));
        assert!(!cache.files.contains_key("a.yaml"), "entries of deleted files are dropped");
    }

    #[test]
    fn a_full_check_sees_an_edit_the_stat_hides() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.yaml");
        write_old(&path, &VS.replace("NAME", "x"), 3600);
        let mtime = std::fs::metadata(&path).unwrap().modified().unwrap();
        let mut cache = TreeCache::default();
        let before = read_tree(dir.path(), &mut cache, ScanOptions::default()).unwrap();
        let old_hash = cache.files["a.yaml"].hash;
        // Same size, mtime put back: only ctime differs, so the stat still changes.
        std::fs::write(&path, VS.replace("NAME", "y")).unwrap();
        std::fs::File::options().write(true).open(&path).unwrap().set_modified(mtime).unwrap();
        let seen = read_tree(dir.path(), &mut cache, RESCAN).unwrap();
        assert_eq!(seen.files["a.yaml"].as_ref().unwrap()[0].object.key.name, "y");
        // Simulate an edit the stat cannot tell (same tick, same size, no
        // ctime change): the cache holds the old bytes' result under the
        // current stat, and keeps it until a full check reads the bytes.
        let entry = cache.files.get_mut("a.yaml").unwrap();
        (entry.result, entry.hash) = (before.files["a.yaml"].clone(), old_hash);
        let stale = read_tree(dir.path(), &mut cache, RESCAN).unwrap();
        assert_eq!(stale.files["a.yaml"].as_ref().unwrap()[0].object.key.name, "x");
        let full = read_tree(dir.path(), &mut cache, ScanOptions::default()).unwrap();
        assert_eq!(full.files["a.yaml"].as_ref().unwrap()[0].object.key.name, "y");
    }

    #[test]
    fn a_recently_modified_file_is_read_again_at_the_next_scan() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.yaml"), VS.replace("NAME", "a")).unwrap();
        let mut cache = TreeCache::default();
        read_tree(dir.path(), &mut cache, ScanOptions::default()).unwrap();
        let again = read_tree(dir.path(), &mut cache, RESCAN).unwrap();
        assert_eq!(again.read, ["a.yaml"], "its mtime is inside the racy window");
    }

    #[test]
    fn a_file_above_the_size_limit_is_an_error_and_not_read() {
        let dir = tempfile::tempdir().unwrap();
        write_old(&dir.path().join("big.yaml"), &format!("# {}\n{}", "x".repeat(100), VS.replace("NAME", "a")), 3600);
        let opts = ScanOptions { max_file_bytes: 64, full_check: true, limits: Limits::default() };
        let tree = read_tree(dir.path(), &mut TreeCache::default(), opts).unwrap();
        let size = std::fs::metadata(dir.path().join("big.yaml")).unwrap().len();
        let errs = tree.files["big.yaml"].clone().unwrap_err();
        assert_eq!(errs[0].to_string(), format!("big.yaml:0: file is {size} bytes, above [file] max_file_bytes = 64"));
        assert!(tree.read.is_empty(), "the stat says it is too big: it is not opened");
        // The read itself is bounded too, for a file that grew after its stat.
        let err = read_bounded(&dir.path().join("big.yaml"), 64).unwrap_err();
        assert_eq!(err, "file is more than 64 bytes, above [file] max_file_bytes = 64");
        assert_eq!(
            read_file(&dir.path().join("big.yaml"), "big.yaml", &opts).unwrap_err()[0].message,
            format!("file is {size} bytes, above [file] max_file_bytes = 64")
        );
    }

    #[test]
    fn entries_the_walk_cannot_go_through_are_errors_for_their_paths() {
        use std::os::unix::fs::symlink;
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.yaml"), VS.replace("NAME", "a")).unwrap();
        symlink("nothing.yaml", dir.path().join("gone.yaml")).unwrap();
        symlink(".", dir.path().join("loop")).unwrap();
        let tree = read_tree(dir.path(), &mut TreeCache::default(), ScanOptions::default()).unwrap();
        assert!(tree.files["a.yaml"].is_ok(), "other files are read");
        let message = |p: &str| tree.files[p].clone().unwrap_err()[0].to_string();
        assert_eq!(message("gone.yaml"), "gone.yaml:0: dangling symlink to nothing.yaml");
        assert_eq!(message("loop"), "loop:0: symlink loop: points back to .");
        // Only the root failing fails the whole scan.
        assert!(read_tree(&dir.path().join("missing"), &mut TreeCache::default(), ScanOptions::default()).is_err());
    }
}
