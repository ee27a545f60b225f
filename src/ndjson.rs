//! `--json`: progress and results as NDJSON on stdout, one object a line, each with an `event`
//! field (`start`, `seed`, `result`, ...). docs/summary-format.md lists the events.

use std::io::Write;

use serde::Serialize;
use serde_json::{json, Map, Value};

/// The version of the NDJSON events, named in every `start` event.
pub const NDJSON_VERSION: u32 = 1;

/// Writes events when `--json` was given, and nothing otherwise.
#[derive(Debug, Clone, Copy)]
pub struct Events {
    pub enabled: bool,
}

impl Events {
    /// An event writer; `enabled` is the command's `--json` flag.
    pub fn new(enabled: bool) -> Events {
        Events { enabled }
    }

    /// Whether human-readable text should go to stdout (only without `--json`).
    pub fn text(&self) -> bool {
        !self.enabled
    }

    /// Writes `{"event": event, ...fields}`; `fields` must serialize to an object.
    pub fn emit<T: Serialize>(&self, event: &str, fields: &T) {
        if !self.enabled {
            return;
        }
        let mut object = Map::new();
        object.insert("event".into(), json!(event));
        if let Ok(Value::Object(more)) = serde_json::to_value(fields) {
            object.extend(more);
        }
        let mut out = std::io::stdout().lock();
        // A closed stdout (a consumer that quit) must not stop the run.
        let _ = writeln!(out, "{}", Value::Object(object)).and_then(|()| out.flush());
    }

    /// The `start` event: the command and its inputs, with the NDJSON and drill versions.
    pub fn start(&self, command: &str, fields: Value) {
        let mut object = json!({
            "command": command,
            "ndjson_version": NDJSON_VERSION,
            "drill_version": crate::runfiles::DRILL_VERSION,
        });
        if let (Some(o), Value::Object(more)) = (object.as_object_mut(), fields) {
            o.extend(more);
        }
        self.emit("start", &object);
    }
}
