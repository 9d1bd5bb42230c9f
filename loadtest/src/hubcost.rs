//! The hub's cost during a run: RSS and CPU time, read from `/proc/<pid>`
//! (`--hub-pid`), or from its `/metrics` process series otherwise.

/// One reading.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct Sample {
    pub rss_bytes: u64,
    pub cpu_s: f64,
}

/// Where readings come from.
#[derive(Clone, Debug)]
pub enum Probe {
    Proc(u32),
    Metrics(String),
    None,
}

impl Probe {
    pub async fn sample(&self) -> Option<Sample> {
        match self {
            Probe::Proc(pid) => proc_sample(*pid),
            Probe::Metrics(admin) => metrics_sample(admin).await,
            Probe::None => None,
        }
    }
}

fn proc_sample(pid: u32) -> Option<Sample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces): utime is 14th, stime 15th.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kb: u64 = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.split_whitespace().next()?.parse().ok()?;
    // USER_HZ is 100 on every Linux the project targets.
    Some(Sample { rss_bytes: rss_kb * 1024, cpu_s: ticks as f64 / 100.0 })
}

/// Reads `process_resident_memory_bytes` and `process_cpu_seconds_total`.
async fn metrics_sample(admin: &str) -> Option<Sample> {
    let url = format!("{}/metrics", admin.trim_end_matches('/'));
    let text = crate::api::request_text("GET", &url, None, "").await.ok()?;
    let value = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
    };
    Some(Sample {
        rss_bytes: value("process_resident_memory_bytes")? as u64,
        cpu_s: value("process_cpu_seconds_total")?,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_this_process() {
        let s = super::proc_sample(std::process::id()).expect("own /proc entry");
        assert!(s.rss_bytes > 1 << 20, "{s:?}");
    }
}
