//! A headless Chromium driven over the Chrome DevTools Protocol, for the dashboard's
//! browser test: open a page, evaluate JavaScript in it, take screenshots. Chromium comes
//! from Debian's `chromium` package (`.ci/run` installs it; `QSCHED_CHROMIUM` points at
//! another binary). Blocking I/O with timeouts: a browser that hangs fails the test.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::prelude::BASE64_STANDARD;
use serde_json::{Value, json};
use tungstenite::{Message, WebSocket};

/// The Chromium binary (`QSCHED_CHROMIUM`, default `chromium` on the PATH).
fn chromium_binary() -> PathBuf {
    std::env::var_os("QSCHED_CHROMIUM").map_or_else(|| PathBuf::from("chromium"), PathBuf::from)
}

/// A headless Chromium with one page; killed on drop.
pub struct Browser {
    child: Child,
    socket: WebSocket<TcpStream>,
    session: String,
    next_id: u64,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts Chromium with a fresh profile and a `width` × `height` page.
    pub fn start(width: u32, height: u32) -> Browser {
        let binary = chromium_binary();
        let profile = tempfile::tempdir().unwrap();
        let child = Command::new(&binary)
            .args([
                "--headless",
                // The tests run as root in CI, where Chromium's sandbox cannot start.
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--hide-scrollbars",
                "--remote-debugging-port=0",
                "--remote-allow-origins=*",
                &format!("--user-data-dir={}", profile.path().display()),
                "about:blank",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                // Missing is a failure, not a skip: a skipped browser test checks nothing.
                panic!(
                    "cannot run `{}` ({e}): install Debian's chromium package (`apt-get install chromium`, as \
                     .ci/run does) or point QSCHED_CHROMIUM at a Chromium binary",
                    binary.display()
                )
            });
        // Chromium writes the port it chose and the browser's endpoint into the profile.
        let active = profile.path().join("DevToolsActivePort");
        let deadline = Instant::now() + Duration::from_secs(60);
        let (port, path) = loop {
            if let Ok(text) = std::fs::read_to_string(&active)
                && let [port, path, ..] = text.lines().collect::<Vec<_>>()[..]
            {
                break (port.to_owned(), path.to_owned());
            }
            assert!(Instant::now() < deadline, "Chromium did not open its DevTools port within 60 s");
            std::thread::sleep(Duration::from_millis(100));
        };
        let stream = TcpStream::connect(format!("127.0.0.1:{port}")).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let (socket, _) = tungstenite::client(format!("ws://127.0.0.1:{port}{path}"), stream).unwrap();
        let mut browser = Browser { child, socket, session: String::new(), next_id: 0, _profile: profile };
        let target = browser.call(None, "Target.createTarget", json!({"url": "about:blank"}));
        let target_id = target["targetId"].as_str().unwrap().to_owned();
        let attached = browser.call(None, "Target.attachToTarget", json!({"targetId": target_id, "flatten": true}));
        browser.session = attached["sessionId"].as_str().unwrap().to_owned();
        browser.page("Page.enable", json!({}));
        browser.page(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": width, "height": height, "deviceScaleFactor": 1, "mobile": false}),
        );
        browser
    }

    /// Sends one command (to the page's session, or to the browser) and returns its result.
    fn call(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut message = json!({"id": id, "method": method, "params": params});
        if let Some(s) = session {
            message["sessionId"] = json!(s);
        }
        self.socket.send(Message::text(message.to_string())).unwrap();
        loop {
            let reply = match self.socket.read() {
                Ok(Message::Text(t)) => serde_json::from_str::<Value>(&t).unwrap(),
                Ok(_) => continue,
                Err(e) => panic!("DevTools connection failed during {method}: {e}"),
            };
            // Events (no id) and replies to nothing we wait for are skipped.
            if reply["id"].as_u64() != Some(id) {
                continue;
            }
            assert!(reply.get("error").is_none(), "{method} failed: {}", reply["error"]);
            return reply["result"].clone();
        }
    }

    fn page(&mut self, method: &str, params: Value) -> Value {
        let session = self.session.clone();
        self.call(Some(&session), method, params)
    }

    /// Opens `url` in the page (a change of the `#` part alone does not reload it).
    pub fn navigate(&mut self, url: &str) {
        self.page("Page.navigate", json!({"url": url}));
    }

    /// The value of a JavaScript expression in the page (promises awaited); a thrown
    /// exception fails the test.
    pub fn eval(&mut self, expression: &str) -> Value {
        let r = self
            .page("Runtime.evaluate", json!({"expression": expression, "returnByValue": true, "awaitPromise": true}));
        assert!(r.get("exceptionDetails").is_none(), "{expression} threw: {}", r["exceptionDetails"]);
        r["result"]["value"].clone()
    }

    /// Evaluates `expression` until it is truthy (returning its value) or `timeout` passes.
    pub fn wait_for(&mut self, expression: &str, timeout: Duration, what: &str) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let v = self.eval(expression);
            let truthy = !(v.is_null() || v == json!(false) || v == json!("") || v == json!(0));
            if truthy {
                return v;
            }
            assert!(Instant::now() < deadline, "{what}: not seen within {timeout:?}");
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// A PNG of the whole page (beyond the viewport when it is longer) into `path`.
    pub fn screenshot(&mut self, path: &Path) {
        let shot = self.page("Page.captureScreenshot", json!({"format": "png", "captureBeyondViewport": true}));
        let data = shot["data"].as_str().expect("screenshot data");
        std::fs::write(path, BASE64_STANDARD.decode(data).expect("screenshot is base64")).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
