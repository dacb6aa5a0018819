//! The `[topic.NAME]` tables: what a topic checks at the edge. Plain data and its checks;
//! `schema` compiles it (at start, in `--check-config` and again on SIGHUP).

use crate::kafka::topics::valid_topic;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// What happens to a record its topic's schema refuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnInvalid {
    /// The whole request is refused (422, or 400 for a body that is not JSON); nothing
    /// of it is produced.
    #[default]
    Reject,
    /// Valid records go to the topic, each invalid one to `dead_letter_topic` with
    /// headers naming the topic, the schema and the first error.
    DeadLetter,
}

/// One topic's checks: `[topic.orders]`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TopicConfig {
    /// JSON Schema file every record value must match (draft-07, 2019-09 or 2020-12, by
    /// its `$schema`; 2020-12 without one).
    pub schema: Option<PathBuf>,
    /// JSON Schema file every record key must match (keys are then JSON text too).
    pub key_schema: Option<PathBuf>,
    pub on_invalid: OnInvalid,
    /// Where invalid records go with `on_invalid = "dead_letter"`.
    pub dead_letter_topic: Option<String>,
}

impl TopicConfig {
    /// Checks what can be checked without reading the schema files.
    pub fn validate(&self, name: &str, allowed: impl Fn(&str) -> bool) -> Result<(), String> {
        let at = format!("topic.{name}");
        if !valid_topic(name) {
            return Err(format!("{at}: invalid topic name"));
        }
        if !allowed(name) {
            return Err(format!("{at}: the topic is not in the global topics"));
        }
        if self.schema.is_none() && self.key_schema.is_none() {
            return Err(format!("{at}: needs a schema or a key_schema"));
        }
        match (self.on_invalid, &self.dead_letter_topic) {
            (OnInvalid::DeadLetter, None) => Err(format!(
                "{at}.dead_letter_topic: on_invalid = \"dead_letter\" needs a dead_letter_topic"
            )),
            (OnInvalid::Reject, Some(_)) => Err(format!(
                "{at}.dead_letter_topic: only used with on_invalid = \"dead_letter\""
            )),
            (_, Some(d)) if !valid_topic(d) => {
                Err(format!("{at}.dead_letter_topic: invalid topic name {d:?}"))
            }
            (_, Some(d)) if d == name => Err(format!(
                "{at}.dead_letter_topic: must be another topic than {name:?}"
            )),
            _ => Ok(()),
        }
    }
}
