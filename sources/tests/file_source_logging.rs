//! A file source's errors are logged once, not once per rescan. In its own
//! test binary: it installs the process-wide log subscriber.

use std::io::Write;
use std::os::unix::fs::symlink;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keelson_hub::metrics::Metrics;
use keelson_hub::{EventStore, Hub, HubConfig};
use keelson_sources::Source;
use keelson_sources::file::{FileSource, FileSourceConfig};
use keelson_storage::OpenOptions;

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Captured {
        self.clone()
    }
}

impl Captured {
    fn lines_with(&self, level: &str, text: &str) -> usize {
        let log = String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned();
        log.lines().filter(|l| l.contains(level) && l.contains(text)).count()
    }
}

async fn until(what: &str, ok: impl Fn() -> bool) {
    let end = Instant::now() + Duration::from_secs(20);
    while !ok() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_and_down_reasons_are_logged_once_over_many_rescans() {
    let log = Captured::default();
    let subscriber = tracing_subscriber::fmt().with_writer(log.clone()).with_ansi(false).finish();
    tracing::subscriber::set_global_default(subscriber).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("conf");
    std::fs::create_dir(&root).unwrap();
    std::fs::write(
        root.join("a.yaml"),
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: { name: a }\nspec: { hosts: [a] }\n",
    )
    .unwrap();
    symlink("nothing.yaml", root.join("gone.yaml")).unwrap();
    let store = EventStore::open(&dir.path().join("data"), OpenOptions { create: true, repair: false }).unwrap();
    let rescan = Duration::from_millis(100);
    let mut cfg = FileSourceConfig::new(root.clone());
    cfg.rescan = rescan;
    let source = FileSource::new(cfg);
    let id = source.id().to_string();
    let hub =
        Hub::start(store, HubConfig { sources: vec![source.id().clone()], ..Default::default() }, Metrics::default())
            .await
            .unwrap();
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(Box::new(source).run(hub.handle(), stop_rx));
    let health = || hub.handle().health().get(&id).cloned().unwrap_or_default();

    until("the first sync", || hub.handle().current().is_some_and(|s| s.resources.len() == 1)).await;
    tokio::time::sleep(rescan * 15).await;
    assert_eq!(log.lines_with("WARN", "gone.yaml:0: dangling symlink"), 1, "a per-path error is logged once");
    assert_eq!(log.lines_with("ERROR", ""), 0, "a bad entry does not take the source down");

    std::fs::rename(&root, dir.path().join("elsewhere")).unwrap();
    until("the source to go down", || !health().up).await;
    tokio::time::sleep(rescan * 15).await;
    assert_eq!(log.lines_with("ERROR", "cannot read"), 1, "a down reason is logged once");

    std::fs::rename(dir.path().join("elsewhere"), &root).unwrap();
    until("the source to recover", || health().up).await;
    assert_eq!(log.lines_with("INFO", "source recovered"), 1);

    std::fs::remove_file(root.join("gone.yaml")).unwrap();
    until("the error to clear", || health().errors.is_empty()).await;
    assert_eq!(log.lines_with("INFO", "error cleared: gone.yaml:0:"), 1, "a cleared error is said once");
    assert_eq!(log.lines_with("WARN", "gone.yaml:0:"), 1);

    let _ = stop.send(true);
    task.await.unwrap();
    hub.stop().await.unwrap();
}
