//! When a long-running process (`qagent`, `qsched dashboard`) stops: on SIGINT (Ctrl-C)
//! or SIGTERM (systemd, Kubernetes, `kill`). The future is passed into the code that
//! serves, so shutdown is a value like any other input.

/// Resolves on SIGINT or SIGTERM (on SIGINT alone where SIGTERM cannot be watched).
pub async fn signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = ctrl_c.await;
        }
    }
}
