//! Lakeview, as in Trae Agent: after each step, a second model says in a few
//! words what the agent did (`task`, general; `details`, specific) and tags
//! the step (`WRITE_TEST`, `EXAMINE_CODE`, …), reported as
//! [`EngineEvent::Lakeview`].
//!
//! It runs beside the loop: finished steps go to one worker task per run,
//! which asks the lakeview model twice per step (the summary, then the tags,
//! as upstream does) and never holds up the next step. Steps are summarised
//! in order, so their events arrive in step order (after the step, perhaps
//! after later steps' events). A failed call only logs a warning: the step
//! gets no `lakeview` event and the run goes on. Every call's tokens and cost
//! are recorded in the run's [`Ledger`], so they count toward the task's
//! totals and its budget. When the run ends, the worker gets a bounded time
//! ([`DRAIN`]) to summarise the last steps, so their events land before the
//! run's end; a stopped run cancels it at once.
//!
//! Differences from upstream, on purpose: the previous step is really the
//! previous one (upstream always sends "(none)"), the tagger sees the recent
//! steps (upstream's history is never filled) within [`TAG_CONTEXT_CHARS`],
//! and an unreadable answer is asked again [`ATTEMPTS`] times at most (not 10).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use super::spend::{Call, Ledger};
use crate::events::{EngineEvent, EventSink};
use crate::llm::{LlmClient, LlmError};
use crate::messages::{LlmResponse, Message, Role};

/// Trae's step tags, with the emoji its console shows before each.
pub const KNOWN_TAGS: [(&str, &str); 8] = [
    ("WRITE_TEST", "☑️"),
    ("VERIFY_TEST", "✅"),
    ("EXAMINE_CODE", "👁️"),
    ("WRITE_FIX", "📝"),
    ("VERIFY_FIX", "🔥"),
    ("REPORT", "📣"),
    ("THINK", "🧠"),
    ("OUTLIER", "⁉️"),
];

/// Tags as Trae's console labels them: `👁️EXAMINE_CODE · 📝WRITE_FIX`.
pub fn tag_label(tags: &[String]) -> String {
    tags.iter()
        .map(|tag| match KNOWN_TAGS.iter().find(|(t, _)| t == tag) {
            Some((_, emoji)) => format!("{emoji}{tag}"),
            None => tag.clone(),
        })
        .collect::<Vec<_>>()
        .join(" · ")
}

/// How long a finished run waits for the summaries still being made.
pub const DRAIN: Duration = Duration::from_secs(30);
/// Answers asked for per question when they cannot be read.
pub const ATTEMPTS: usize = 3;
/// Earlier steps the tagger is shown, newest first, up to this many characters.
pub const TAG_CONTEXT_CHARS: usize = 50_000;

/// The lakeview of one run: a queue of finished steps and its worker.
pub(crate) struct Lakeview {
    client: Arc<dyn LlmClient>,
    events: Arc<dyn EventSink>,
    spend: Ledger,
    jobs: Option<mpsc::UnboundedSender<Job>>,
    worker: Option<JoinHandle<()>>,
    /// The latest step's cancellation: a stop cuts the final wait short.
    stop: CancellationToken,
    /// The span the run's steps are in (the task's): the worker's spans go
    /// under it, not under the step that happened to start the worker.
    span: tracing::Span,
}

struct Job {
    step: u32,
    /// The step as the lakeview model reads it.
    text: String,
    deadline: Option<Instant>,
}

impl Lakeview {
    pub fn new(client: Arc<dyn LlmClient>, events: Arc<dyn EventSink>, spend: Ledger) -> Self {
        Lakeview {
            client,
            events,
            spend,
            jobs: None,
            worker: None,
            stop: CancellationToken::new(),
            span: tracing::Span::none(),
        }
    }

    /// The run's cancellation for this step, and the span its step is in.
    pub fn watch(&mut self, cancel: &CancellationToken, span: tracing::Span) {
        self.stop = cancel.clone();
        self.span = span;
    }

    /// Queues a finished step (its answer and tool calls) to be summarised.
    /// Returns at once; the worker starts with the first step.
    pub fn summarise(&mut self, step: u32, response: &LlmResponse, deadline: Option<Instant>) {
        let text = step_text(response);
        if text.is_empty() {
            return;
        }
        let jobs = self.jobs.get_or_insert_with(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            let worker = Worker {
                client: self.client.clone(),
                events: self.events.clone(),
                spend: self.spend.clone(),
            };
            self.worker = Some(tokio::spawn(worker.run(rx).instrument(self.span.clone())));
            tx
        });
        let _ = jobs.send(Job {
            step,
            text,
            deadline,
        });
    }

    /// The run ended: waits (at most [`DRAIN`], and not once it is stopped)
    /// for the queued steps' summaries, then ends the worker. After this,
    /// lakeview emits nothing more.
    pub async fn finish(&mut self, stopped: bool) {
        self.jobs = None; // the worker ends after the last queued step
        let Some(mut worker) = self.worker.take() else {
            return;
        };
        if !stopped {
            tokio::select! {
                _ = &mut worker => return,
                () = tokio::time::sleep(DRAIN) => {
                    tracing::warn!("lakeview did not finish summarising in time; the last steps have no summary");
                }
                () = self.stop.cancelled() => {}
            }
        }
        worker.abort();
        // Wait for it to be gone, so nothing is emitted after the run's end.
        let _ = worker.await;
    }
}

impl Drop for Lakeview {
    fn drop(&mut self) {
        if let Some(worker) = &self.worker {
            worker.abort();
        }
    }
}

struct Worker {
    client: Arc<dyn LlmClient>,
    events: Arc<dyn EventSink>,
    spend: Ledger,
}

impl Worker {
    async fn run(self, mut jobs: mpsc::UnboundedReceiver<Job>) {
        // Earlier steps: (step, text).
        let mut history: Vec<(u32, String)> = Vec::new();
        while let Some(job) = jobs.recv().await {
            let span = tracing::info_span!(
                "lakeview",
                otel.name = format_args!("lakeview step {}", job.step),
                agent.step = i64::from(job.step),
            );
            match self.summarise(&history, &job).instrument(span).await {
                Ok(Some(event)) => self.events.emit(event),
                Ok(None) => {
                    tracing::warn!(
                        step = job.step,
                        "lakeview answers could not be read; the step has no summary"
                    )
                }
                Err(e) => {
                    tracing::warn!(step = job.step, error = %e, "lakeview call failed; the step has no summary")
                }
            }
            history.push((job.step, job.text));
        }
    }

    /// The step's event; `None` when neither answer could be read. A failed
    /// summary call skips the tags (the model is likely down).
    async fn summarise(
        &self,
        history: &[(u32, String)],
        job: &Job,
    ) -> Result<Option<EngineEvent>, LlmError> {
        let previous = history.last().map_or("(none)", |(_, text)| text.as_str());
        let summary = self
            .ask(job, &summary_messages(previous, &job.text), parse_summary)
            .await?;
        let tags = self
            .ask(job, &tag_messages(history, &job.text), parse_tags)
            .await?;
        if summary.is_none() && tags.is_none() {
            return Ok(None);
        }
        let (task, details) = summary.unwrap_or_default();
        Ok(Some(EngineEvent::Lakeview {
            step: job.step,
            task,
            details,
            tags: tags.unwrap_or_default(),
        }))
    }

    /// Asks until `parse` reads the answer, [`ATTEMPTS`] times at most;
    /// every answer's usage is recorded.
    async fn ask<T>(
        &self,
        job: &Job,
        messages: &[Message],
        parse: fn(&str) -> Option<T>,
    ) -> Result<Option<T>, LlmError> {
        for _ in 0..ATTEMPTS {
            let answer = self.client.chat(messages, &[], job.deadline).await?;
            self.spend.record(
                Call {
                    step: job.step,
                    provider: self.client.provider(),
                    model: self.client.model(),
                    usage: answer.usage,
                    lakeview: true,
                },
                &*self.events,
            );
            if let Some(parsed) = parse(&answer.content) {
                return Ok(Some(parsed));
            }
        }
        Ok(None)
    }
}

/// A step as the lakeview model reads it: the agent's text, then its tool
/// calls one a line.
pub(crate) fn step_text(response: &LlmResponse) -> String {
    let mut text = response.content.trim().to_string();
    if !response.tool_calls.is_empty() {
        let calls: Vec<String> = response
            .tool_calls
            .iter()
            .map(|c| {
                let args = c
                    .raw_arguments
                    .clone()
                    .unwrap_or_else(|| c.arguments.to_string());
                format!("[`{}`] `{args}`", c.name)
            })
            .collect();
        text = format!("{text}\n\nTool calls:\n{}", calls.join("\n"))
            .trim()
            .to_string();
    }
    text
}

fn assistant(text: &str) -> Message {
    Message {
        role: Role::Assistant,
        ..Message::user(text)
    }
}

const SUMMARY_PROMPT: &str = r#"
Using the excerpt above, tell what the agent is doing in <this_step>, at two levels of detail, as <task>...</task><details>...</details>.
<task>: short and general, at most 10 words, leaving out anything particular to this bug.
<details>: at most 30 words adding the particulars that <task> leaves out (files, functions, errors), so that it is informative.

Examples:

<task>The agent is writing a test that reproduces the bug.</task><details>The agent is writing "test_issue.py" to show that Parser.parse_date drops the timezone of ISO dates.</details>
<task>The agent is looking through the source code.</task><details>The agent is searching for "load_config", the function named in the traceback's "settings.py" line.</details>
<task>The agent is repairing its reproduction test.</task><details>The agent is fixing "test_issue.py", which failed with a NameError because it never imported "parse_date".</details>

Answer only in the form "<task>...</task><details>...</details>", with nothing else.
"#;

const TAGS_PROMPT: &str = r#"
Tell what the agent is doing in the current step by choosing, from the list below, every tag that applies to it, separated by commas.

<tags>
WRITE_TEST: writes a test script that reproduces the bug, or changes one that does not work yet.
VERIFY_TEST: runs the reproduction test to check that the test setup works.
EXAMINE_CODE: reads, searches or explores the repository to find the cause of the bug.
WRITE_FIX: changes the source code to fix the bug it found.
VERIFY_FIX: runs the reproduction test or existing tests to check that the fix works.
REPORT: tells the user the work is done or how far it has got.
THINK: reasons about the bug without acting yet.
OUTLIER: most of the step fits none of the tags above (e.g. installing dependencies).
</tags>

<examples>
Opening a file to read it: <tags>EXAMINE_CODE</tags>
Correcting a known problem of the reproduction test and running it again: <tags>WRITE_TEST,VERIFY_TEST</tags>
Only thinking about the cause of the bug: <tags>THINK</tags>
</examples>

Answer only with the tags, in the form <tags>...</tags>, with nothing else.
"#;

/// The summary question: the previous step and this one, the prompt, and
/// the start of the answer for the model to go on with.
fn summary_messages(previous: &str, this: &str) -> Vec<Message> {
    vec![
        Message::user(format!(
            "Here is an excerpt of the steps an AI agent took to fix a software bug: \
             <previous_step>{previous}</previous_step><this_step>{this}</this_step>"
        )),
        assistant("Understood."),
        Message::user(SUMMARY_PROMPT.trim()),
        assistant("Here is what the agent is doing: <task>The agent"),
    ]
}

/// The tag question: the recent steps, this one, the prompt and the start
/// of the answer.
fn tag_messages(history: &[(u32, String)], this: &str) -> Vec<Message> {
    let mut shown = Vec::new();
    let mut chars = 0;
    for (step, text) in history.iter().rev() {
        let block = format!("<step id=\"{step}\">\n{}\n</step>", text.trim());
        chars += block.len();
        if chars > TAG_CONTEXT_CHARS {
            break;
        }
        shown.push(block);
    }
    shown.reverse();
    let steps = if shown.is_empty() {
        "(none)".to_string()
    } else {
        shown.join("\n\n")
    };
    vec![
        Message::user(format!(
            "Here are the steps an AI agent took to fix a software bug, up to the current one, \
             each in a <step> tag.\n\n{steps}\n\n<current_step>{this}</current_step>"
        )),
        assistant("Understood."),
        Message::user(TAGS_PROMPT.trim()),
        assistant("The tags are: <tags>"),
    ]
}

/// `(task, details)` from the summary answer, which goes on from the
/// prefilled `<task>The agent` (or starts over with its own `<task>`).
/// `None` without `</task>`, `<details>` and `</details>`.
pub(crate) fn parse_summary(answer: &str) -> Option<(String, String)> {
    let answer = answer.trim();
    let end = answer.rfind("</task>")?;
    let (task, rest) = (&answer[..end], &answer[end + "</task>".len()..]);
    let details = rest.split_once("<details>")?.1.split_once("</details>")?.0;
    let task = task.rsplit("<task>").next().unwrap_or(task).trim();
    let task = if task.is_empty() || task.to_lowercase().starts_with("the agent") {
        task.to_string()
    } else {
        format!("The agent {task}")
    };
    Some((one_line(&task), one_line(details)))
}

/// The tags of the tag answer (which goes on from the prefilled `<tags>`):
/// `None` unless every one is a [`KNOWN_TAGS`] name.
pub(crate) fn parse_tags(answer: &str) -> Option<Vec<String>> {
    let text = format!("<tags>{}", answer.trim_start());
    let inner = &text[..text.find("</tags>")?];
    let inner = &inner[inner.rfind("<tags>")? + "<tags>".len()..];
    let mut tags: Vec<String> = Vec::new();
    for tag in inner.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        if !KNOWN_TAGS.iter().any(|(known, _)| *known == tag) {
            return None;
        }
        if !tags.iter().any(|t| t == tag) {
            tags.push(tag.to_string());
        }
    }
    (!tags.is_empty()).then_some(tags)
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::{ToolCall, Usage};
    use serde_json::json;

    fn pair(task: &str, details: &str) -> Option<(String, String)> {
        Some((task.into(), details.into()))
    }

    #[test]
    fn a_summary_goes_on_from_the_prefill() {
        assert_eq!(
            parse_summary(
                " is examining source code.</task><details>It reads \"foo.py\"\n to find bar.</details>"
            ),
            pair(
                "The agent is examining source code.",
                "It reads \"foo.py\" to find bar."
            )
        );
    }

    #[test]
    fn a_summary_that_starts_over_is_read_too() {
        assert_eq!(
            parse_summary(
                "Sure: <task>The agent is writing a test.</task>\n<details>Writes test_bug.py.</details> Done."
            ),
            pair("The agent is writing a test.", "Writes test_bug.py.")
        );
    }

    #[test]
    fn a_summary_without_its_tags_is_unreadable() {
        assert_eq!(parse_summary("The agent is looking around."), None);
        assert_eq!(parse_summary(" is reading.</task>"), None);
        assert_eq!(parse_summary(" is reading.</task><details>open"), None);
        assert_eq!(parse_summary(""), None);
    }

    #[test]
    fn tags_are_read_after_the_prefill() {
        assert_eq!(
            parse_tags("EXAMINE_CODE</tags>"),
            Some(vec!["EXAMINE_CODE".to_string()])
        );
        assert_eq!(
            parse_tags(" WRITE_TEST, VERIFY_TEST ,WRITE_TEST</tags> trailing"),
            Some(vec!["WRITE_TEST".to_string(), "VERIFY_TEST".to_string()])
        );
        // The model repeated the opening tag.
        assert_eq!(
            parse_tags("<tags>THINK</tags>"),
            Some(vec!["THINK".to_string()])
        );
    }

    #[test]
    fn unknown_or_missing_tags_are_unreadable() {
        assert_eq!(parse_tags("EXAMINE_CODE, DEBUG</tags>"), None);
        assert_eq!(parse_tags("examine_code</tags>"), None);
        assert_eq!(parse_tags("EXAMINE_CODE"), None);
        assert_eq!(parse_tags("</tags>"), None);
    }

    #[test]
    fn tags_are_labelled_as_trae_shows_them() {
        let tags = vec!["EXAMINE_CODE".to_string(), "WRITE_FIX".to_string()];
        assert_eq!(tag_label(&tags), "👁️EXAMINE_CODE · 📝WRITE_FIX");
        assert_eq!(tag_label(&[]), "");
    }

    #[test]
    fn a_step_reads_as_text_then_tool_calls() {
        let mut response = LlmResponse {
            content: "  Let me look.\n".into(),
            tool_calls: vec![ToolCall {
                call_id: "c1".into(),
                name: "bash".into(),
                arguments: json!({"command": "ls"}),
                raw_arguments: None,
            }],
            model: "m".into(),
            finish_reason: None,
            usage: Usage::default(),
        };
        assert_eq!(
            step_text(&response),
            "Let me look.\n\nTool calls:\n[`bash`] `{\"command\":\"ls\"}`"
        );
        response.content.clear();
        assert_eq!(
            step_text(&response),
            "Tool calls:\n[`bash`] `{\"command\":\"ls\"}`"
        );
        response.tool_calls.clear();
        assert_eq!(step_text(&response), "");
    }

    #[test]
    fn the_tagger_sees_the_recent_steps_within_its_limit() {
        let long = "x".repeat(TAG_CONTEXT_CHARS / 2);
        let history = vec![
            (1, long.clone()),
            (2, long.clone()),
            (3, "short".to_string()),
        ];
        let messages = tag_messages(&history, "now");
        let first = &messages[0].content;
        assert!(!first.contains("<step id=\"1\">"), "the oldest is left out");
        assert!(first.contains("<step id=\"2\">") && first.contains("<step id=\"3\">"));
        assert!(first.ends_with("<current_step>now</current_step>"));
        assert_eq!(messages.last().map(|m| m.role), Some(Role::Assistant));
        assert!(tag_messages(&[], "now")[0].content.contains("(none)"));
    }
}
