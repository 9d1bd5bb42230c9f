//! The file source's cost when idle, and how it copes with entries it cannot
//! read: a real hub and log, a real tree, a real watcher.

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use keelson_hub::metrics::Metrics;
use keelson_hub::{EventStore, Hub, HubConfig, HubHandle, SourceHealth};
use keelson_sources::Source;
use keelson_sources::file::{FileSource, FileSourceConfig, validate_paths};
use keelson_storage::OpenOptions;

fn vs(name: &str, gateway: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{ name: {name} }}\nspec:\n  hosts: [{name}]\n  gateways: [{gateway}]\n"
    )
}

/// Writes a file and dates it an hour back, outside the window in which the
/// source distrusts a fresh mtime (so reads are exactly countable).
fn write_dated(path: &Path, text: &str) {
    use std::io::Write;
    let mut f = std::fs::File::create(path).unwrap();
    f.write_all(text.as_bytes()).unwrap();
    f.set_modified(SystemTime::now() - Duration::from_secs(3600)).unwrap();
}

struct Running {
    _dir: tempfile::TempDir,
    root: PathBuf,
    hub: Hub,
    id: String,
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    fn handle(&self) -> HubHandle {
        self.hub.handle()
    }

    fn reads(&self) -> u64 {
        self.handle().metrics().file_reads.get_or_create(&Metrics::source(&self.id)).get()
    }

    fn validation_errors(&self) -> u64 {
        self.handle().metrics().validation_errors.get_or_create(&Metrics::source(&self.id)).get()
    }

    fn health(&self) -> SourceHealth {
        self.handle().health().get(&self.id).cloned().unwrap_or_default()
    }

    async fn stop(self) {
        let _ = self.stop.send(true);
        self.task.await.unwrap();
        self.hub.stop().await.unwrap();
    }
}

/// Starts a hub and a file source on a tree `fill` writes first.
async fn start(rescan: Duration, max_file_bytes: Option<u64>, fill: impl FnOnce(&Path)) -> Running {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("conf");
    std::fs::create_dir(&root).unwrap();
    fill(&root);
    let store = EventStore::open(&dir.path().join("data"), OpenOptions { create: true, repair: false }).unwrap();
    let mut cfg = FileSourceConfig::new(root.clone());
    cfg.rescan = rescan;
    cfg.full_check = Duration::from_secs(3600);
    if let Some(max) = max_file_bytes {
        cfg.max_file_bytes = max;
    }
    let source = FileSource::new(cfg);
    let id = source.id().to_string();
    let hub_cfg = HubConfig { sources: vec![source.id().clone()], ..Default::default() };
    let hub = Hub::start(store, hub_cfg, Metrics::default()).await.unwrap();
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(Box::new(source).run(hub.handle(), stop_rx));
    Running { _dir: dir, root, hub, id, stop, task }
}

/// Polls `ok` until it holds or 20 s pass.
async fn until(what: &str, ok: impl Fn() -> bool) {
    let end = Instant::now() + Duration::from_secs(20);
    while !ok() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn gateway_of(hub: &HubHandle, name: &str) -> Option<String> {
    let snapshot = hub.current()?;
    let (_, entry) = snapshot.of_kind("networking.istio.io", "VirtualService").find(|(k, _)| k.name == name)?;
    Some(entry.body.to_value()["spec"]["gateways"][0].as_str()?.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_source_reads_nothing_and_an_edit_reads_only_that_file() {
    const FILES: [&str; 4] = ["a", "b", "c", "d"];
    let rescan = Duration::from_millis(250);
    let src = start(rescan, None, |root| {
        for name in FILES {
            write_dated(&root.join(format!("{name}.yaml")), &vs(name, "gw-one"));
        }
    })
    .await;
    until("the first sync", || FILES.iter().all(|n| gateway_of(&src.handle(), n).is_some())).await;
    assert_eq!(src.reads(), 4, "the first scan reads every file once");

    // Idle for a dozen rescans: stats are unchanged, so nothing is read; and
    // the scans' own opens (inotify IN_OPEN) do not wake further scans.
    tokio::time::sleep(rescan * 12).await;
    assert_eq!(src.reads(), 4, "an idle source reads no files");

    write_dated(&src.root.join("b.yaml"), &vs("b", "gw-two"));
    until("the edit", || gateway_of(&src.handle(), "b").as_deref() == Some("gw-two")).await;
    tokio::time::sleep(rescan * 8).await;
    let after_edit = src.reads() - 4;
    // One read of b.yaml; a second only if the watcher's scan came between
    // the write and the mtime being set. Reading the tree would be 4 or more.
    assert!((1..=2).contains(&after_edit), "only the edited file is read again: {after_edit} reads");
    assert_eq!(gateway_of(&src.handle(), "a").as_deref(), Some("gw-one"));
    src.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scans_own_reads_do_not_wake_another_scan() {
    // A file dated in the future is never trusted by its stat, so every scan
    // reads it: here the read counter counts scans. With no periodic rescan
    // in the window, any further scan could only be woken by the watcher,
    // and the only events are the scans' own opens of the file.
    let src = start(Duration::from_secs(3600), None, |root| {
        use std::io::Write;
        let mut f = std::fs::File::create(root.join("a.yaml")).unwrap();
        f.write_all(vs("a", "gw").as_bytes()).unwrap();
        f.set_modified(SystemTime::now() + Duration::from_secs(3600)).unwrap();
    })
    .await;
    until("the first sync", || gateway_of(&src.handle(), "a").is_some()).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(src.reads(), 1, "one scan: its opens of a.yaml (IN_OPEN) did not wake another");
    src.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_that_cannot_be_read_are_errors_for_their_paths_and_the_rest_keeps_working() {
    let rescan = Duration::from_millis(200);
    // `sub` is a directory reached through a symlink (as a ConfigMap's are).
    // Root can read any directory, so "a directory the source cannot read"
    // is made by taking the link's target away: that fails for root too.
    let src = start(rescan, None, |root| {
        std::fs::write(root.join("a.yaml"), vs("a", "gw-one")).unwrap();
        std::fs::create_dir(root.join(".store")).unwrap();
        std::fs::write(root.join(".store/s.yaml"), vs("s", "gw-s")).unwrap();
        symlink(".store", root.join("sub")).unwrap();
    })
    .await;
    let hub = src.handle();
    until("the first sync", || gateway_of(&hub, "a").is_some() && gateway_of(&hub, "s").is_some()).await;

    std::fs::rename(src.root.join(".store"), src.root.join(".moved")).unwrap();
    symlink("nothing.yaml", src.root.join("gone.yaml")).unwrap();
    symlink(".", src.root.join("loop")).unwrap();
    let expected = [
        "gone.yaml:0: dangling symlink to nothing.yaml",
        "loop:0: symlink loop: points back to .",
        "sub:0: dangling symlink to .store",
    ];
    until("per-path errors", || src.health().errors == expected).await;
    assert!(src.health().up, "a bad entry does not take the source down: {:?}", src.health());
    assert_eq!(gateway_of(&hub, "s").as_deref(), Some("gw-s"), "objects below an unreadable directory are kept");

    // Another file's edit is applied while the bad entries exist.
    std::fs::write(src.root.join("a.yaml"), vs("a", "gw-two")).unwrap();
    until("the edit", || gateway_of(&hub, "a").as_deref() == Some("gw-two")).await;

    // The same errors over many rescans are reported (and counted) once.
    let counted = src.validation_errors();
    assert_eq!(counted, 3);
    tokio::time::sleep(rescan * 8).await;
    assert_eq!(src.validation_errors(), counted, "an unchanged error is not reported again");
    assert_eq!(src.health().errors, expected);

    // A restarted source lists everything; the hub keeps what lies below the
    // unreadable directory (it cannot know the file names any more).
    let Running { _dir, root, hub: hub_server, id, stop, task } = src;
    let _ = stop.send(true);
    task.await.unwrap();
    std::fs::write(root.join("a.yaml"), vs("a", "gw-three")).unwrap();
    let mut cfg = FileSourceConfig::new(root.clone());
    cfg.rescan = rescan;
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(Box::new(FileSource::new(cfg)).run(hub_server.handle(), stop_rx));
    let src = Running { _dir, root, hub: hub_server, id, stop, task };
    until("the relist", || gateway_of(&hub, "a").as_deref() == Some("gw-three")).await;
    assert_eq!(gateway_of(&hub, "s").as_deref(), Some("gw-s"), "the relist kept the unreadable directory's objects");

    // Fixed: the errors clear; then the directory really goes and so do its objects.
    std::fs::rename(src.root.join(".moved"), src.root.join(".store")).unwrap();
    std::fs::remove_file(src.root.join("gone.yaml")).unwrap();
    std::fs::remove_file(src.root.join("loop")).unwrap();
    until("the errors to clear", || src.health().errors.is_empty()).await;
    assert_eq!(gateway_of(&hub, "s").as_deref(), Some("gw-s"));
    std::fs::remove_file(src.root.join("sub")).unwrap();
    until("the directory's objects to go", || gateway_of(&hub, "s").is_none()).await;
    src.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_above_max_file_bytes_is_an_error_and_keeps_its_objects() {
    let src = start(Duration::from_millis(200), Some(300), |root| {
        std::fs::write(root.join("a.yaml"), vs("a", "gw-one")).unwrap();
    })
    .await;
    let hub = src.handle();
    until("the first sync", || gateway_of(&hub, "a").is_some()).await;
    let big = format!("# {}\n{}", "x".repeat(400), vs("a", "gw-two"));
    std::fs::write(src.root.join("a.yaml"), &big).unwrap();
    let expected = format!("a.yaml:0: file is {} bytes, above [file] max_file_bytes = 300", big.len());
    until("the size error", || src.health().errors == [expected.clone()]).await;
    assert_eq!(gateway_of(&hub, "a").as_deref(), Some("gw-one"), "the last good objects are kept");
    src.stop().await;
}

#[test]
fn validate_reports_unreadable_entries_per_path_and_checks_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::write(root.join("a.yaml"), vs("a", "gw")).unwrap();
    std::fs::write(
        root.join("b.yaml"),
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: { name: b }\nspec: {}\n",
    )
    .unwrap();
    symlink("nothing.yaml", root.join("gone.yaml")).unwrap();
    let (checked, errors, _) = validate_paths(&[root.to_path_buf()]);
    let r = root.display();
    assert_eq!(checked, 3);
    assert_eq!(
        errors,
        [format!("{r}/b.yaml:1: spec.hosts is required"), format!("{r}/gone.yaml:0: dangling symlink to nothing.yaml")]
    );
}
