//! Full agent runs against the scripted provider servers (127.0.0.1 only):
//! the model views a file, edits it, creates a new one, runs a command and
//! calls `task_done`, in a temporary git repository. The patch and the
//! trajectory are checked, and so is what the provider received.

mod anthropic_run;
mod openai_run;
mod support;
