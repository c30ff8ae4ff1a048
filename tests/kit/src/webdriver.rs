//! Headless Chromium driven through chromedriver (Debian's `chromium` and `chromium-driver`,
//! installed by `scripts/install-deps.sh`) with the W3C WebDriver protocol: just the commands
//! the page tests use, over HTTP.

use serde_json::{Value, json};
use std::{
    os::unix::process::CommandExt,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// One browser session; chromedriver and every Chromium process it started are killed on drop.
pub struct Browser {
    http: reqwest::Client,
    session: String,
    driver: Child,
    _profile: tempfile::TempDir,
}

/// A WebDriver element reference.
#[derive(Clone, Debug)]
pub struct Element(Value);

const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

impl Browser {
    /// Starts chromedriver and a fresh headless Chromium whose profile lives in a temporary
    /// folder and which can reach nothing but loopback.
    pub async fn start() -> Self {
        let port = super::free_port();
        // In a process group of its own, which the Chromium it starts joins: dropping the
        // browser ends them all, not chromedriver alone (which left every Chromium running).
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("chromedriver is installed by scripts/install-deps.sh");
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        super::eventually(
            "chromedriver to answer",
            Duration::from_secs(20),
            || async {
                http.get(format!("{base}/status"))
                    .send()
                    .await
                    .ok()
                    .map(|_| ())
            },
        )
        .await;
        let profile = tempfile::tempdir().expect("a profile folder");
        let profile_flag = format!("--user-data-dir={}", profile.path().display());
        let mut args = super::browser::CHROMIUM_FLAGS.to_vec();
        args.extend([
            "--disable-dev-shm-usage",
            "--window-size=1280,900",
            &profile_flag,
        ]);
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": "/usr/bin/chromium", "args": args},
        }}});
        let created: Value = http
            .post(format!("{base}/session"))
            .json(&capabilities)
            .send()
            .await
            .expect("new session")
            .json()
            .await
            .expect("session JSON");
        let id = created["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {created}"));
        Self {
            http,
            session: format!("{base}/session/{id}"),
            driver,
            _profile: profile,
        }
    }

    /// The process group of chromedriver and its Chromium.
    pub fn process_group(&self) -> u32 {
        self.driver.id()
    }

    /// One command; its value, or WebDriver's error as text.
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, String> {
        let url = format!("{}{path}", self.session);
        let request = self.http.request(method, &url);
        let request = match body {
            Some(body) => request.json(&body),
            None => request,
        };
        let reply: Value = request
            .send()
            .await
            .expect("WebDriver call")
            .json()
            .await
            .expect("WebDriver JSON");
        match reply["value"].get("error") {
            Some(error) => Err(format!("{error}: {}", reply["value"]["message"])),
            None => Ok(reply["value"].clone()),
        }
    }

    async fn get(&self, path: &str) -> Value {
        let reply = self.call(reqwest::Method::GET, path, None).await;
        reply.unwrap_or_else(|e| panic!("WebDriver GET {path}: {e}"))
    }

    async fn post(&self, path: &str, body: Value) -> Value {
        let reply = self.call(reqwest::Method::POST, path, Some(body)).await;
        reply.unwrap_or_else(|e| panic!("WebDriver POST {path}: {e}"))
    }

    /// Opens `url`.
    pub async fn goto(&self, url: &str) {
        self.post("/url", json!({"url": url})).await;
    }

    /// Sets the window's size (e.g. a phone's width).
    pub async fn resize(&self, width: u32, height: u32) {
        self.post("/window/rect", json!({"width": width, "height": height}))
            .await;
    }

    /// Runs `script` (a function body; `arguments` are `args`) and returns its value.
    pub async fn run(&self, script: &str, args: Vec<Value>) -> Value {
        self.post("/execute/sync", json!({"script": script, "args": args}))
            .await
    }

    /// The elements matching `css` now.
    pub async fn all(&self, css: &str) -> Vec<Element> {
        let found = self
            .post("/elements", json!({"using": "css selector", "value": css}))
            .await;
        found
            .as_array()
            .map(|a| a.iter().cloned().map(Element).collect())
            .unwrap_or_default()
    }

    /// Waits (up to `timeout`) for an element matching `css`.
    pub async fn wait_for(&self, css: &str, timeout: Duration) -> Element {
        super::eventually(&format!("an element matching {css}"), timeout, || async {
            self.all(css).await.into_iter().next()
        })
        .await
    }

    /// Waits (up to `timeout`) until `script` returns true.
    pub async fn wait_until(&self, what: &str, script: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.run(script, vec![]).await != Value::Bool(true) {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn element_path(element: &Element, tail: &str) -> String {
        let id = element.0[ELEMENT_KEY].as_str().unwrap_or_default();
        format!("/element/{id}{tail}")
    }

    /// Calls `tail` on the first element matching `css`, waiting (up to `timeout`) for one; an
    /// element the page re-rendered in between (the gallery is live) is looked up again.
    async fn on_element(
        &self,
        css: &str,
        timeout: Duration,
        method: reqwest::Method,
        tail: &str,
        body: Option<Value>,
    ) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let element = self.wait_for(css, timeout).await;
            let path = Self::element_path(&element, tail);
            match self.call(method.clone(), &path, body.clone()).await {
                Ok(value) => return value,
                Err(e) if e.contains("stale element") && Instant::now() < deadline => continue,
                Err(e) => panic!("{tail} on {css}: {e}"),
            }
        }
    }

    /// Clicks the first element matching `css`, waiting (up to `timeout`) for one.
    pub async fn click_on(&self, css: &str, timeout: Duration) {
        self.on_element(
            css,
            timeout,
            reqwest::Method::POST,
            "/click",
            Some(json!({})),
        )
        .await;
    }

    /// The rendered text of the first element matching `css`, waiting (up to `timeout`) for one.
    pub async fn text_of(&self, css: &str, timeout: Duration) -> String {
        self.on_element(css, timeout, reqwest::Method::GET, "/text", None)
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// Types `text` into `element`.
    pub async fn type_into(&self, element: &Element, text: &str) {
        self.post(
            &Self::element_path(element, "/value"),
            json!({"text": text}),
        )
        .await;
    }

    /// The text of an open alert/confirm/prompt dialog, if one is open.
    pub async fn alert_text(&self) -> Option<String> {
        let value = self.call(reqwest::Method::GET, "/alert/text", None).await;
        match value {
            Ok(text) => text.as_str().map(str::to_owned),
            Err(e) if e.contains("no such alert") => None,
            Err(e) => panic!("WebDriver alert: {e}"),
        }
    }

    /// Saves a PNG screenshot of the page to `path`.
    pub async fn screenshot(&self, path: &std::path::Path) {
        use base64::Engine;
        let png = self.get("/screenshot").await;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().unwrap_or_default())
            .expect("a base64 screenshot");
        std::fs::write(path, bytes).expect("write screenshot");
    }
}

/// The live (not yet reaped ones aside) processes of process group `group`.
pub fn processes_in_group(group: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
            // "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses.
            let mut fields = stat.rsplit_once(')')?.1.split_whitespace();
            let state = fields.next()?;
            let pgrp: u32 = fields.nth(1)?.parse().ok()?;
            (pgrp == group && state != "Z").then_some(pid)
        })
        .collect()
}

impl Drop for Browser {
    fn drop(&mut self) {
        // chromedriver's whole group: itself and Chromium's processes (Chromium's crash handlers
        // exit with them), before the profile folder is removed.
        let group = format!("-{}", self.driver.id());
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.driver.wait();
    }
}
