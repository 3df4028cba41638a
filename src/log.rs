//! Structured log events as JSON lines on stderr. Messages passed here never contain the
//! database URL or password (see `config::describe_target`).

use serde_json::{Map, Value};

pub fn warn(event: &str, fields: &[(&str, &str)]) {
  emit("warn", event, fields);
}

fn emit(level: &str, event: &str, fields: &[(&str, &str)]) {
  if std::env::var("STORAGE_QUOTA_LOG").is_ok_and(|v| v == "off") {
    return;
  }
  let mut line = Map::new();
  line.insert("level".into(), Value::from(level));
  line.insert("source".into(), Value::from("storage-quota"));
  line.insert("event".into(), Value::from(event));
  for (key, value) in fields {
    line.insert((*key).into(), Value::from(*value));
  }
  // Never `eprintln!`: it panics when stderr is a full non-blocking pipe.
  use std::io::Write;
  let _ = writeln!(std::io::stderr(), "{}", Value::Object(line));
}
