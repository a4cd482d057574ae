//! stderr shared between the progress bar of `qsched submit --wait | --local` and the log
//! lines written while it is drawn.
//!
//! A bar is redrawn in place: it moves the cursor back over the lines it drew last time.
//! A line written straight to the terminal while the bar is up lands on the bar's line,
//! after it, and the next redraw starts below: every log line would leave a copy of the
//! bar behind. [`Console`] writes each line with the bar cleared first and redrawn after
//! ([`ProgressBar::suspend`]), so the lines stack up above one bar. Two writers go
//! through it: `qsched`'s own log ([`ConsoleLog`], its tracing writer) and the log lines
//! of the embedded mode's worker processes, which the agent forwards line by line.
//!
//! When no bar is shown (`--quiet`, stderr not a terminal, no run being followed) a line
//! is written as it is: nothing is held back or dropped.

use std::io::Write;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use indicatif::ProgressBar;
use tracing_subscriber::fmt::MakeWriter;

/// Where log lines go while a progress bar may be drawn on the same terminal.
pub struct Console {
    bar: Mutex<Option<ProgressBar>>,
    out: Mutex<Box<dyn Write + Send>>,
}

impl std::fmt::Debug for Console {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Console").field("bar", &*lock(&self.bar)).finish_non_exhaustive()
    }
}

/// A poisoned lock still guards valid data here (a bar handle, a writer): a panic in one
/// log call must not silence every later one.
fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Console {
    /// A console on this process's stderr.
    pub fn stderr() -> Self {
        Console::new(Box::new(std::io::stderr()))
    }

    /// A console writing to `out` (tests pass a simulated terminal).
    pub fn new(out: Box<dyn Write + Send>) -> Self {
        Console { bar: Mutex::new(None), out: Mutex::new(out) }
    }

    /// Lines are written above `bar` until the returned guard is dropped, which clears
    /// the bar from the screen (on every path out, errors included, so that an error
    /// message is not written past a bar either). A hidden bar costs nothing.
    pub fn show(&self, bar: ProgressBar) -> ShownBar<'_> {
        *lock(&self.bar) = Some(bar.clone());
        ShownBar { console: self, bar }
    }

    /// Writes `bytes` (whole lines, each ending in a newline) above the bar.
    pub fn write_lines(&self, bytes: &[u8]) {
        let write = || {
            let mut out = lock(&self.out);
            // A log line that cannot be written has nowhere else to go.
            let _ = out.write_all(bytes);
            let _ = out.flush();
        };
        // The bar handle is cloned out of the lock: `suspend` redraws the bar, and a
        // redraw must not wait on a lock another log call holds.
        let bar = lock(&self.bar).clone();
        match bar {
            Some(bar) => bar.suspend(write),
            None => write(),
        }
    }

    /// Writes one line (a newline is added) above the bar.
    pub fn line(&self, text: &str) {
        let mut bytes = Vec::with_capacity(text.len() + 1);
        bytes.extend_from_slice(text.as_bytes());
        bytes.push(b'\n');
        self.write_lines(&bytes);
    }
}

/// A progress bar on the screen, with log lines going above it; see [`Console::show`].
#[derive(Debug)]
pub struct ShownBar<'a> {
    console: &'a Console,
    bar: ProgressBar,
}

impl ShownBar<'_> {
    /// The bar, to update.
    pub fn bar(&self) -> &ProgressBar {
        &self.bar
    }
}

impl Drop for ShownBar<'_> {
    fn drop(&mut self) {
        // Cleared first: a line logged in between is then written above no bar at all.
        self.bar.finish_and_clear();
        *lock(&self.console.bar) = None;
    }
}

/// `qsched`'s tracing writer: each log event goes through the [`Console`].
#[derive(Debug, Clone)]
pub struct ConsoleLog(pub Arc<Console>);

impl<'a> MakeWriter<'a> for ConsoleLog {
    type Writer = EventWriter;

    fn make_writer(&'a self) -> Self::Writer {
        EventWriter { console: self.0.clone(), buf: Vec::new() }
    }
}

/// Collects one log event and hands it to the [`Console`] whole when dropped (the
/// formatter writes an event in one or more pieces, then drops its writer), so the bar
/// is cleared and redrawn once per event, never in the middle of a line.
#[derive(Debug)]
pub struct EventWriter {
    console: Arc<Console>,
    buf: Vec<u8>,
}

impl Write for EventWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for EventWriter {
    fn drop(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        if !self.buf.ends_with(b"\n") {
            self.buf.push(b'\n');
        }
        self.console.write_lines(&self.buf);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use indicatif::{ProgressDrawTarget, ProgressStyle, TermLike};

    /// A terminal reduced to what a progress bar does with it: lines of text, a cursor
    /// that moves over them, writes that overwrite from the cursor, `\r` and clearing.
    #[derive(Debug, Clone, Default)]
    struct Screen(Arc<Mutex<ScreenState>>);

    #[derive(Debug, Default)]
    struct ScreenState {
        lines: Vec<String>,
        row: usize,
        col: usize,
    }

    impl ScreenState {
        fn put(&mut self, s: &str) {
            for c in s.chars() {
                if c == '\r' {
                    self.col = 0;
                    continue;
                }
                while self.lines.len() <= self.row {
                    self.lines.push(String::new());
                }
                let mut chars: Vec<char> = self.lines[self.row].chars().collect();
                while chars.len() < self.col {
                    chars.push(' ');
                }
                if self.col < chars.len() {
                    chars[self.col] = c;
                } else {
                    chars.push(c);
                }
                self.lines[self.row] = chars.into_iter().collect();
                self.col += 1;
            }
        }

        fn newline(&mut self) {
            while self.lines.len() <= self.row {
                self.lines.push(String::new());
            }
            self.row += 1;
            self.col = 0;
        }
    }

    impl Screen {
        fn state(&self) -> MutexGuard<'_, ScreenState> {
            lock(&self.0)
        }

        /// The non-empty lines on the screen, top to bottom.
        fn text(&self) -> Vec<String> {
            self.state().lines.iter().map(|l| l.trim_end().to_owned()).filter(|l| !l.is_empty()).collect()
        }
    }

    impl TermLike for Screen {
        fn width(&self) -> u16 {
            80
        }
        fn move_cursor_up(&self, n: usize) -> std::io::Result<()> {
            let mut s = self.state();
            s.row = s.row.saturating_sub(n);
            Ok(())
        }
        fn move_cursor_down(&self, n: usize) -> std::io::Result<()> {
            self.state().row += n;
            Ok(())
        }
        fn move_cursor_right(&self, n: usize) -> std::io::Result<()> {
            self.state().col += n;
            Ok(())
        }
        fn move_cursor_left(&self, n: usize) -> std::io::Result<()> {
            let mut s = self.state();
            s.col = s.col.saturating_sub(n);
            Ok(())
        }
        fn write_line(&self, line: &str) -> std::io::Result<()> {
            let mut s = self.state();
            s.put(line);
            s.newline();
            Ok(())
        }
        fn write_str(&self, text: &str) -> std::io::Result<()> {
            self.state().put(text);
            Ok(())
        }
        fn clear_line(&self) -> std::io::Result<()> {
            let mut s = self.state();
            let row = s.row;
            if let Some(line) = s.lines.get_mut(row) {
                line.clear();
            }
            s.col = 0;
            Ok(())
        }
        fn flush(&self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Bytes written to the screen as a program writes them to its terminal.
    impl Write for Screen {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            let text = String::from_utf8_lossy(bytes);
            let mut s = self.state();
            let mut pieces = text.split('\n').peekable();
            while let Some(piece) = pieces.next() {
                s.put(piece);
                if pieces.peek().is_some() {
                    s.newline();
                }
            }
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn bar_on(screen: &Screen) -> ProgressBar {
        let bar = ProgressBar::with_draw_target(Some(6), ProgressDrawTarget::term_like(Box::new(screen.clone())));
        bar.set_style(ProgressStyle::with_template("{pos}/{len} shards {msg}").unwrap());
        bar
    }

    fn bar_lines(screen: &Screen) -> usize {
        screen.text().iter().filter(|l| l.contains("shards")).count()
    }

    /// Lines through the console stack up above a single bar, which keeps its place at
    /// the bottom and its latest state.
    #[test]
    fn lines_go_above_one_bar() {
        let screen = Screen::default();
        let console = Console::new(Box::new(screen.clone()));
        let shown = console.show(bar_on(&screen));
        let bar = shown.bar().clone();
        bar.set_position(1);
        console.line("WARN first");
        bar.set_position(2);
        console.write_lines(b"WARN second\nWARN third\n");
        bar.set_message("running 1");
        assert_eq!(screen.text(), ["WARN first", "WARN second", "WARN third", "2/6 shards running 1"]);

        // Once the bar is gone from the screen, lines are plain lines again.
        drop(shown);
        assert!(bar.is_finished());
        console.line("results");
        assert_eq!(screen.text(), ["WARN first", "WARN second", "WARN third", "results"]);
    }

    /// The failure the console exists for: the same lines written straight to the
    /// terminal leave copies of the bar behind (this is what the test above guards).
    #[test]
    fn lines_written_past_the_bar_leave_copies_of_it() {
        let mut screen = Screen::default();
        let bar = bar_on(&screen);
        bar.set_position(1);
        screen.write_all(b"WARN first\n").unwrap();
        bar.set_position(2);
        screen.write_all(b"WARN second\n").unwrap();
        bar.set_position(3);
        assert_eq!(bar_lines(&screen), 3, "{:?}", screen.text());
    }

    /// A tracing event reaches the console once, whole, with its newline, whatever
    /// pieces the formatter wrote it in.
    #[test]
    fn a_log_event_is_written_whole() {
        let screen = Screen::default();
        let console = Arc::new(Console::new(Box::new(screen.clone())));
        let shown = console.show(bar_on(&screen));
        shown.bar().set_position(4);
        let log = ConsoleLog(console.clone());
        {
            let mut w = log.make_writer();
            w.write_all(b"2026-12-01T00:00:00Z  WARN ").unwrap();
            w.write_all(b"no live agent serves cpu").unwrap();
        }
        drop(log.make_writer()); // an event with no text writes nothing
        assert_eq!(screen.text(), ["2026-12-01T00:00:00Z  WARN no live agent serves cpu", "4/6 shards"]);
        assert_eq!(bar_lines(&screen), 1);
    }

    /// With a hidden bar (`--quiet`, or stderr not a terminal) lines are written as they
    /// come, none held back.
    #[test]
    fn a_hidden_bar_holds_nothing_back() {
        let screen = Screen::default();
        let console = Console::new(Box::new(screen.clone()));
        let shown = console.show(ProgressBar::hidden());
        shown.bar().set_position(3);
        console.line("WARN a");
        console.line("WARN b");
        assert_eq!(screen.text(), ["WARN a", "WARN b"]);
    }
}
