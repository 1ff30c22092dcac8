//! Showing progress. On a terminal: an indicatif bar of steps (step n of
//! max_steps, the token totals, the current tool) with event lines printed
//! above it. Anywhere else (a pipe, a file, a test): the same lines, plain,
//! one per event, so they can be read as they come.

use std::{io::IsTerminal as _, time::Duration};

use agentd::proto::TaskEvent;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::{
    follow::Item,
    print_line,
    render::{Outcome, RunState},
};

const STEP_TEMPLATE: &str =
    "{spinner:.green} {prefix} [{bar:24.cyan/blue}] {elapsed_precise} {wide_msg}";
const BYTES_TEMPLATE: &str =
    "{spinner:.green} {prefix} [{bar:24.cyan/blue}] {bytes}/{total_bytes} {bytes_per_sec}";
const BYTES_UNKNOWN_TEMPLATE: &str = "{spinner:.green} {prefix} {bytes} {bytes_per_sec}";

/// `run --follow`'s view of a task.
pub struct RunView {
    bar: Option<ProgressBar>,
    state: RunState,
}

impl RunView {
    /// A bar when standard output is a terminal; plain lines otherwise.
    pub fn new(task_id: &str) -> Self {
        let bar = std::io::stdout().is_terminal().then(|| {
            // An empty bar until `start` tells max_steps.
            let bar = ProgressBar::with_draw_target(Some(1), ProgressDrawTarget::stdout());
            if let Ok(style) = ProgressStyle::with_template(STEP_TEMPLATE) {
                bar.set_style(style.progress_chars("=> "));
            }
            bar.set_prefix("step 0");
            bar.set_message(format!("task {task_id}"));
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        Self {
            bar,
            state: RunState::default(),
        }
    }

    /// Shows one item of the followed stream.
    pub fn show(&mut self, item: &Item) -> anyhow::Result<()> {
        match item {
            Item::Event(ev) => self.event(ev),
            Item::Heartbeat => Ok(()),
            Item::Lost { after_seq, why } => {
                self.note(&format!(
                    "connection lost after seq {after_seq} ({why}); reconnecting…"
                ));
                Ok(())
            }
            Item::Resumed { after_seq } => {
                self.note(&format!("reconnected; resuming after seq {after_seq}"));
                Ok(())
            }
        }
    }

    fn event(&mut self, ev: &TaskEvent) -> anyhow::Result<()> {
        let lines = self.state.apply(ev);
        match &self.bar {
            None => lines.iter().try_for_each(|l| print_line(l)),
            Some(bar) => {
                for line in &lines {
                    bar.println(line);
                }
                let st = &self.state;
                bar.set_length(u64::from(st.max_steps.unwrap_or(1).max(st.step)));
                bar.set_position(u64::from(st.step));
                bar.set_prefix(st.step_label());
                let mut msg = st.tokens_label();
                if let Some(tool) = &st.tool {
                    msg.push_str(&format!(" · {tool}"));
                }
                bar.set_message(msg);
                Ok(())
            }
        }
    }

    /// A remark about the connection, on standard error.
    pub fn note(&self, line: &str) {
        match &self.bar {
            Some(bar) => bar.suspend(|| eprintln!("{line}")),
            None => eprintln!("{line}"),
        }
    }

    /// Removes the bar (the lines stay); returns the outcome seen.
    pub fn finish(self) -> Option<Outcome> {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
        self.state.outcome
    }
}

/// A bar for a transfer of `total` bytes (unknown: a counter), drawn on
/// standard error when it is a terminal, hidden otherwise.
pub fn transfer_bar(what: &str, total: Option<u64>) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(total, ProgressDrawTarget::stderr());
    let template = if total.is_some() {
        BYTES_TEMPLATE
    } else {
        BYTES_UNKNOWN_TEMPLATE
    };
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_prefix(what.to_string());
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}
