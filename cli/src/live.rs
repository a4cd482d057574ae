//! Live progress for `qsched status`: the throughput and ETA arithmetic, and how
//! `status --watch` puts its blocks on the screen (redrawn in place on a terminal,
//! appended elsewhere).
//!
//! Everything here is pure (no store, no terminal), so the numbers and the escape
//! sequences are unit-tested; `commands::status` gathers the inputs and `main.rs` writes
//! the frames.

/// Training steps per second over `points` — `(step, unix seconds)` of a shard's train
/// metric points, oldest first. Only the trailing stretch in which steps and times grow
/// counts: a retried shard's stream still holds its earlier attempt, whose steps start
/// again from 0 or a checkpoint. `None` without two distinct points to measure between.
pub fn steps_per_second(points: &[(u64, f64)]) -> Option<f64> {
    let (&(last_step, last_at), rest) = points.split_last()?;
    let mut first = (last_step, last_at);
    for &(step, at) in rest.iter().rev() {
        if step > first.0 || at > first.1 || !at.is_finite() {
            break;
        }
        first = (step, at);
    }
    let (steps, secs) = (last_step.checked_sub(first.0)?, last_at - first.1);
    (steps > 0 && secs > 0.0).then(|| steps as f64 / secs)
}

/// Seconds until a shard at `step` of `total` finishes training at `rate` steps per
/// second; 0 once every step is done (its final evaluation is not included). `None`
/// without a usable rate.
pub fn shard_eta(step: u64, total: u64, rate: Option<f64>) -> Option<f64> {
    let remaining = total.saturating_sub(step);
    if remaining == 0 {
        return Some(0.0);
    }
    let rate = rate.filter(|r| r.is_finite() && *r > 0.0)?;
    Some(remaining as f64 / rate)
}

/// What the per-run ETA is computed from.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunEtaInput {
    /// Shards queued, not yet picked up by an agent.
    pub waiting: usize,
    /// Each running shard's own ETA ([`shard_eta`]), `None` where it has no rate yet.
    pub running: Vec<Option<f64>>,
    /// Wall seconds (load, train, evaluate) of the run's finished shards.
    pub finished_walls: Vec<f64>,
    /// Live agents serving the run's device class.
    pub agents: usize,
}

/// The per-run ETA, or why there is none.
#[derive(Debug, Clone, PartialEq)]
pub enum RunEta {
    /// No shard is waiting or running.
    Nothing,
    /// Seconds from now, and what they are based on (said in the output).
    Known {
        /// Seconds until the last shard should finish.
        secs: f64,
        /// How the estimate was made, for people.
        basis: String,
    },
    /// Nothing to base an estimate on, and why.
    Unknown(String),
}

/// Estimates when a run finishes: the waiting shards take the mean wall time of the
/// finished ones, a running shard its own ETA (or, before it has a rate, the mean wall
/// time), and the work is spread over the live agents; never sooner than the slowest
/// running shard.
pub fn run_eta(input: &RunEtaInput) -> RunEta {
    if input.waiting == 0 && input.running.is_empty() {
        return RunEta::Nothing;
    }
    let walls: Vec<f64> = input.finished_walls.iter().copied().filter(|w| w.is_finite() && *w > 0.0).collect();
    let mean_wall = (!walls.is_empty()).then(|| walls.iter().sum::<f64>() / walls.len() as f64);
    let mut running = Vec::with_capacity(input.running.len());
    for eta in &input.running {
        match eta.or(mean_wall) {
            Some(secs) => running.push(secs),
            None => return RunEta::Unknown("a running shard has no rate yet and no shard has finished".into()),
        }
    }
    let slots = input.agents.max(input.running.len());
    if input.waiting > 0 {
        if mean_wall.is_none() {
            return RunEta::Unknown(format!("no shard has finished yet to time the {} queued", input.waiting));
        }
        if slots == 0 {
            return RunEta::Unknown(format!("no live agent to run the {} queued shard(s)", input.waiting));
        }
    }
    let waiting_work = input.waiting as f64 * mean_wall.unwrap_or(0.0);
    let work = running.iter().sum::<f64>() + waiting_work;
    let slowest = running.iter().copied().fold(0.0, f64::max);
    let secs = (work / slots.max(1) as f64).max(slowest);

    let mut parts = Vec::new();
    if input.waiting > 0 {
        parts.push(format!(
            "{} queued × {} mean wall time of {} finished shard(s)",
            input.waiting,
            human_secs(mean_wall.unwrap_or(0.0)),
            walls.len()
        ));
    }
    let measured = input.running.iter().filter(|e| e.is_some()).count();
    if measured > 0 {
        parts.push(format!("{measured} running shard(s) at their current rate"));
    }
    if measured < input.running.len() {
        parts.push(format!(
            "{} running shard(s) without a rate yet at the mean wall time",
            input.running.len() - measured
        ));
    }
    let basis = format!("{}, over {} agent(s)", parts.join(" + "), slots);
    RunEta::Known { secs, basis }
}

/// Seconds for people: `45s`, `3m 20s`, `2h 05m`, `3d 4h`.
pub fn human_secs(secs: f64) -> String {
    if !secs.is_finite() || secs < 0.0 {
        return "—".into();
    }
    let s = secs.round() as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m {:02}s", s / 60, s % 60),
        3600..86_400 => format!("{}h {:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d {}h", s / 86_400, s % 86_400 / 3600),
    }
}

/// How `status --watch` shows each new block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchMode {
    /// Replace the previous block on the screen (a terminal).
    Redraw,
    /// Append each block after a blank line (a pipe, a file, a dumb terminal).
    Append,
}

impl WatchMode {
    /// Redraw when stdout is a terminal that takes ANSI escapes (`TERM` is not `dumb`),
    /// append otherwise, so a log or a pipe gets whole blocks and no escape codes.
    pub fn choose(stdout_is_terminal: bool, term: Option<&str>) -> WatchMode {
        if stdout_is_terminal && term != Some("dumb") { WatchMode::Redraw } else { WatchMode::Append }
    }
}

/// The blocks `status --watch` has drawn, turning each new one into the text to write.
#[derive(Debug)]
pub struct WatchScreen {
    mode: WatchMode,
    /// Screen lines of the block on screen (0 before the first).
    drawn: usize,
}

impl WatchScreen {
    /// Nothing drawn yet.
    pub fn new(mode: WatchMode) -> Self {
        WatchScreen { mode, drawn: 0 }
    }

    /// The text that shows `block` in place of the previous one. In [`WatchMode::Redraw`]
    /// the cursor goes back up over the previous block and erases to the end of the
    /// screen; line wrapping is off while the block is written, so each of its lines is
    /// exactly one screen line (a line wider than the terminal is cut, as `watch` does)
    /// and the count to go back up is right.
    pub fn frame(&mut self, block: &str) -> String {
        let mut block = block.to_owned();
        if !block.ends_with('\n') {
            block.push('\n');
        }
        let previous = std::mem::replace(&mut self.drawn, block.matches('\n').count());
        match self.mode {
            WatchMode::Append if previous == 0 => block,
            WatchMode::Append => format!("\n{block}"),
            WatchMode::Redraw => {
                let back = if previous == 0 { String::new() } else { format!("\r\x1b[{previous}A\x1b[J") };
                format!("{back}\x1b[?7l{block}\x1b[?7h")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throughput_from_train_points() {
        assert_eq!(steps_per_second(&[]), None);
        assert_eq!(steps_per_second(&[(10, 100.0)]), None);
        assert_eq!(steps_per_second(&[(10, 100.0), (30, 110.0)]), Some(2.0));
        assert_eq!(steps_per_second(&[(0, 0.0), (10, 100.0), (30, 110.0), (50, 120.0)]), Some(50.0 / 120.0));
        // No time passed, or no step: no rate.
        assert_eq!(steps_per_second(&[(10, 100.0), (20, 100.0)]), None);
        assert_eq!(steps_per_second(&[(10, 100.0), (10, 105.0)]), None);
        // A retried shard: the earlier attempt (up to step 90) does not count.
        assert_eq!(steps_per_second(&[(80, 50.0), (90, 60.0), (0, 200.0), (5, 201.0), (25, 205.0)]), Some(5.0));
        // Restarted from a checkpoint at 40 after reaching 60.
        assert_eq!(steps_per_second(&[(50, 10.0), (60, 20.0), (40, 30.0), (44, 32.0)]), Some(2.0));
    }

    #[test]
    fn shard_eta_from_remaining_steps_and_rate() {
        assert_eq!(shard_eta(10, 40, Some(2.0)), Some(15.0));
        assert_eq!(shard_eta(40, 40, None), Some(0.0));
        assert_eq!(shard_eta(45, 40, None), Some(0.0));
        assert_eq!(shard_eta(10, 40, None), None);
        assert_eq!(shard_eta(10, 40, Some(0.0)), None);
        assert_eq!(shard_eta(10, 40, Some(f64::NAN)), None);
    }

    #[test]
    fn run_eta_spreads_the_remaining_work_over_the_agents() {
        assert_eq!(run_eta(&RunEtaInput::default()), RunEta::Nothing);
        // 4 queued × 100 s + running 30 s and 50 s over 2 agents = 240 s.
        let input = RunEtaInput {
            waiting: 4,
            running: vec![Some(30.0), Some(50.0)],
            finished_walls: vec![80.0, 120.0],
            agents: 2,
        };
        let RunEta::Known { secs, basis } = run_eta(&input) else { panic!("{:?}", run_eta(&input)) };
        assert_eq!(secs, 240.0);
        assert_eq!(
            basis,
            "4 queued × 1m 40s mean wall time of 2 finished shard(s) + 2 running shard(s) at their current rate, \
             over 2 agent(s)"
        );
        // Never sooner than the slowest running shard.
        let input =
            RunEtaInput { waiting: 0, running: vec![Some(300.0), Some(10.0)], finished_walls: vec![], agents: 8 };
        assert!(matches!(run_eta(&input), RunEta::Known { secs, .. } if secs == 300.0));
        // A running shard without a rate counts as a mean wall time.
        let input = RunEtaInput { waiting: 0, running: vec![None], finished_walls: vec![60.0], agents: 1 };
        let RunEta::Known { secs, basis } = run_eta(&input) else { panic!() };
        assert_eq!(secs, 60.0);
        assert!(basis.contains("1 running shard(s) without a rate yet at the mean wall time"), "{basis}");
        // Running shards occupy agents even when fewer heartbeats are live.
        let input =
            RunEtaInput { waiting: 2, running: vec![Some(10.0), Some(10.0)], finished_walls: vec![10.0], agents: 0 };
        assert!(matches!(run_eta(&input), RunEta::Known { secs, .. } if secs == 20.0));
    }

    #[test]
    fn run_eta_without_a_basis_says_why() {
        let no_finished = RunEtaInput { waiting: 3, running: vec![Some(5.0)], finished_walls: vec![], agents: 1 };
        assert_eq!(run_eta(&no_finished), RunEta::Unknown("no shard has finished yet to time the 3 queued".into()));
        let no_rate = RunEtaInput { waiting: 0, running: vec![None], finished_walls: vec![0.0], agents: 1 };
        assert!(matches!(run_eta(&no_rate), RunEta::Unknown(why) if why.contains("no rate yet")));
        let no_agent = RunEtaInput { waiting: 3, running: vec![], finished_walls: vec![10.0], agents: 0 };
        assert_eq!(run_eta(&no_agent), RunEta::Unknown("no live agent to run the 3 queued shard(s)".into()));
    }

    #[test]
    fn durations_for_people() {
        assert_eq!(human_secs(0.4), "0s");
        assert_eq!(human_secs(45.0), "45s");
        assert_eq!(human_secs(200.0), "3m 20s");
        assert_eq!(human_secs(7500.0), "2h 05m");
        assert_eq!(human_secs(273_600.0), "3d 4h");
        assert_eq!(human_secs(f64::INFINITY), "—");
    }

    #[test]
    fn watch_redraws_on_a_terminal_and_appends_elsewhere() {
        assert_eq!(WatchMode::choose(true, Some("xterm-256color")), WatchMode::Redraw);
        assert_eq!(WatchMode::choose(true, None), WatchMode::Redraw);
        assert_eq!(WatchMode::choose(true, Some("dumb")), WatchMode::Append);
        assert_eq!(WatchMode::choose(false, Some("xterm-256color")), WatchMode::Append);

        let mut plain = WatchScreen::new(WatchMode::Append);
        assert_eq!(plain.frame("a\nb\n"), "a\nb\n");
        assert_eq!(plain.frame("c"), "\nc\n");
        assert!(!plain.frame("d\n").contains('\x1b'));

        let mut screen = WatchScreen::new(WatchMode::Redraw);
        // The first block is written as is (wrapping off while it is).
        assert_eq!(screen.frame("a\nb\nc\n"), "\x1b[?7la\nb\nc\n\x1b[?7h");
        // The next one goes back up the three lines and erases them first.
        assert_eq!(screen.frame("d\n"), "\r\x1b[3A\x1b[J\x1b[?7ld\n\x1b[?7h");
        assert_eq!(screen.frame("e\nf"), "\r\x1b[1A\x1b[J\x1b[?7le\nf\n\x1b[?7h");
    }
}
