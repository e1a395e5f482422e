//! One progress bar across all stages of a benchmark, drawn on stderr so that stdout
//! stays clean for the table or `--json` (indicatif hides it when stderr is no terminal).

use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

#[derive(Debug)]
pub struct Progress {
    bar: ProgressBar,
    stage_len: Duration,
    stage: u64,
}

impl Progress {
    /// `stages` stages of `stage_len` each (warm-up plus measurement).
    pub fn new(stages: usize, stage_len: Duration) -> Self {
        let total_ms = stages as u64 * stage_len.as_millis() as u64;
        let bar = ProgressBar::new(total_ms.max(1));
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {wide_bar} {percent:>3}% {msg}",
            )
            .expect("static template")
            .progress_chars("=> "),
        );
        bar.enable_steady_tick(Duration::from_millis(100));
        Self {
            bar,
            stage_len,
            // Advanced to 0 by the first `stage` call.
            stage: u64::MAX,
        }
    }

    /// Starts the next stage, labelled `name`.
    pub fn stage(&mut self, name: &str) {
        self.stage = self.stage.wrapping_add(1);
        self.bar.set_message(name.to_string());
        self.at(Duration::ZERO);
    }

    /// How far into the current stage we are.
    pub fn at(&self, elapsed: Duration) {
        let base = self.stage * self.stage_len.as_millis() as u64;
        let within = elapsed.min(self.stage_len).as_millis() as u64;
        self.bar.set_position(base + within);
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
