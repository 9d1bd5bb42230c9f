//! Crash consistency: a writer process is SIGKILLed at random points, over and
//! over, on the same store. After every kill the store must open without
//! repair, verify clean, and hold every record whose append had returned,
//! byte for byte.
//!
//! This binary plays both roles: run normally it is the test; with
//! `KEELSON_CRASH_CHILD=<dir>` it is the writer, printing `ack <first> <last>
//! <thread> <counter>` only after each append has returned.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use keelson_storage::{EventLog, NewRecord, OpenOptions, RecordKind, SledEventLog};

const KILLS: usize = 60;
const WRITER_THREADS: u64 = 4;

fn payload(thread: u64, counter: u64) -> Vec<u8> {
    let unit = format!("t{thread}:c{counter};");
    unit.repeat(1 + (counter as usize % 40)).into_bytes()
}

fn child(dir: &str) -> ! {
    let log = std::sync::Arc::new(SledEventLog::open(dir, OpenOptions { create: true, repair: false }).expect("open"));
    let out = std::sync::Arc::new(std::sync::Mutex::new(std::io::stdout()));
    let seed = std::process::id() as u64;
    let handles: Vec<_> = (0..WRITER_THREADS)
        .map(|thread| {
            let (log, out) = (log.clone(), out.clone());
            std::thread::spawn(move || {
                let mut rng = fastrand::Rng::with_seed(seed * 31 + thread);
                // Counters are unique per child run and thread: seed them from the pid.
                let mut counter = seed * 1_000_000;
                loop {
                    let n = rng.u64(1..=32);
                    let batch: Vec<NewRecord> = (0..n)
                        .map(|i| NewRecord {
                            key: Bytes::from(format!("k{}", (counter + i) % 17)),
                            payload: Bytes::from(payload(thread, counter + i)),
                        })
                        .collect();
                    let r = log.append(&batch).expect("append");
                    let mut o = out.lock().unwrap();
                    writeln!(o, "ack {} {} {thread} {counter}", r.first, r.last).unwrap();
                    o.flush().unwrap();
                    counter += n;
                }
            })
        })
        .collect();
    // Writers loop until killed; joining one is waiting for the SIGKILL.
    let _ = handles.into_iter().next().map(|h| h.join());
    unreachable!("writers loop until killed")
}

struct Ack {
    first: u64,
    last: u64,
    thread: u64,
    counter: u64,
}

fn run_once(dir: &std::path::Path, rng: &mut fastrand::Rng) -> Vec<Ack> {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .env("KEELSON_CRASH_CHILD", dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let f: Vec<u64> = line.split(' ').skip(1).map(|x| x.parse().unwrap()).collect();
            let _ = tx.send(Ack { first: f[0], last: f[1], thread: f[2], counter: f[3] });
        }
    });
    // Kill after a random number of acks, or a random time after the first:
    // both early (mid-open, mid-first-flush) and deep into a run.
    let want_acks = rng.usize(1..400);
    let extra = Duration::from_micros(rng.u64(0..150_000));
    let mut acks = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut first_at = None;
    while acks.len() < want_acks && Instant::now() < deadline {
        if let Some(t) = first_at
            && Instant::now() >= t + extra
        {
            break;
        }
        if let Ok(a) = rx.recv_timeout(Duration::from_millis(1)) {
            first_at.get_or_insert_with(Instant::now);
            acks.push(a);
        }
    }
    assert!(!acks.is_empty(), "writer made no progress in 20 s");
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    reader.join().unwrap();
    // Lines already in the pipe were printed after their append returned: acknowledged too.
    acks.extend(rx.try_iter());
    acks
}

fn main() {
    if let Ok(dir) = std::env::var("KEELSON_CRASH_CHILD") {
        child(&dir);
    }
    let seed =
        std::env::var("KEELSON_CRASH_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| fastrand::u64(..));
    println!("crash test: seed {seed} (set KEELSON_CRASH_SEED to replay)");
    let mut rng = fastrand::Rng::with_seed(seed);
    let dir = tempfile::tempdir().unwrap();
    let mut acked: Vec<Ack> = Vec::new();
    let started = Instant::now();
    for kill in 1..=KILLS {
        acked.extend(run_once(dir.path(), &mut rng));
        let log = SledEventLog::open(dir.path(), OpenOptions::default())
            .unwrap_or_else(|e| panic!("kill {kill}: store does not open after SIGKILL: {e}"));
        let report = log.verify().unwrap();
        assert!(report.is_ok(), "kill {kill}: verify found damage: {:?}", report.damage);
        let held: HashMap<u64, Bytes> = log
            .read_from(1)
            .map(|r| r.unwrap())
            .filter(|r| r.kind == RecordKind::Event)
            .map(|r| (r.seq, r.payload))
            .collect();
        for a in &acked {
            for (i, seq) in (a.first..=a.last).enumerate() {
                let got = held.get(&seq).unwrap_or_else(|| panic!("kill {kill}: acknowledged seq {seq} is missing"));
                assert_eq!(
                    got.as_ref(),
                    payload(a.thread, a.counter + i as u64).as_slice(),
                    "kill {kill}: seq {seq} holds the wrong bytes"
                );
            }
        }
        assert_eq!(log.last_seq(), report.last_seq);
    }
    let records: u64 = acked.iter().map(|a| a.last - a.first + 1).sum();
    println!(
        "crash test: {KILLS} SIGKILLs, {} acknowledged appends ({records} records) all intact, {:.1}s",
        acked.len(),
        started.elapsed().as_secs_f64()
    );
    println!("test result: ok. 1 passed; 0 failed; 0 ignored");
}
