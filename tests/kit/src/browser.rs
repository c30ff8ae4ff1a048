//! Headless Chromium (Debian's, installed by `scripts/install-deps.sh`) loading a page of ours:
//! the DOM after its scripts ran, and every request the page itself made (from Chromium's net
//! log), so a test can show that nothing but localhost was asked for.

use std::process::Command;

/// What a page load produced.
pub struct PageLoad {
    /// The DOM after the scripts ran.
    pub dom: String,
    /// URLs the page (not the browser's own services) requested.
    pub page_requests: Vec<String>,
}

/// The flags every test Chromium runs with: headless, offline but for loopback (nothing but
/// loopback resolves, so the browser's own services cannot leave either).
pub const CHROMIUM_FLAGS: [&str; 9] = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-features=NetworkTimeServiceQuerying",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1, EXCLUDE localhost",
];

/// Loads `url` in a fresh headless Chromium and waits for its scripts (virtual time).
pub fn load(url: &str) -> PageLoad {
    let dir = tempfile::tempdir().expect("a profile folder");
    let net_log = dir.path().join("net.json");
    let out = Command::new("chromium")
        .args(CHROMIUM_FLAGS)
        .arg("--virtual-time-budget=15000")
        .arg(format!(
            "--user-data-dir={}",
            dir.path().join("profile").display()
        ))
        .arg(format!("--log-net-log={}", net_log.display()))
        .arg("--dump-dom")
        .arg(url)
        .output()
        .expect("chromium (scripts/install-deps.sh installs it)");
    assert!(
        out.status.success(),
        "chromium: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let origin = url.splitn(4, '/').take(3).collect::<Vec<_>>().join("/");
    PageLoad {
        dom: String::from_utf8_lossy(&out.stdout).into_owned(),
        page_requests: page_requests(&net_log, &origin),
    }
}

/// URLs of requests whose initiator is `origin` (sub-resources, fetches) in a Chromium net log.
fn page_requests(net_log: &std::path::Path, origin: &str) -> Vec<String> {
    let text = std::fs::read_to_string(net_log).expect("the net log");
    let log: serde_json::Value = serde_json::from_str(&text).expect("a JSON net log");
    let start_job = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"].clone();
    log["events"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["type"] == start_job && e["params"]["initiator"] == origin)
        .filter_map(|e| e["params"]["url"].as_str().map(str::to_owned))
        .collect()
}
