//! `validate`: checks each event against a minimal schema and sends the invalid ones to a
//! dead-letter topic.
//!
//! Outputs: two. Number 0 gets the valid events, number 1 (the dead-letter topic) the invalid
//! ones, both unchanged except for one added header `error` on the invalid ones saying why
//! (all the reasons, separated by `; `). Lookups: none. Environment:
//!
//! - `REQUIRED_FIELDS`: field names, comma-separated. Each must be present at the top level of
//!   the event and hold a string or a number. Unset or empty: no field is required.
//!
//! An event is valid when its value is a JSON object with every required field. A tombstone
//! or a value that is not JSON is invalid.
//!
//! It registers a per-batch function ([`transform_batch!`]) so that the setting is parsed once
//! per batch rather than once per record.

use fjord_transform_sdk::{env, transform_batch, Error, Output, Record};
use serde_json::Value;

/// The output of valid events.
const VALID: u32 = 0;
/// The dead-letter output.
const INVALID: u32 = 1;

fn validate_batch(records: &[Record], out: &mut Output) -> Result<(), Error> {
    let setting = env("REQUIRED_FIELDS").unwrap_or_default();
    let required: Vec<&str> = setting.split(',').map(str::trim).filter(|f| !f.is_empty()).collect();
    for record in records {
        match problems(record, &required) {
            None => out.emit(VALID, record)?,
            Some(why) => out.emit(INVALID, record.clone().with_header("error", why))?,
        }
    }
    Ok(())
}

/// Why `record` is invalid, `None` when it is valid.
fn problems(record: &Record, required: &[&str]) -> Option<String> {
    let Some(value) = record.value.as_deref() else {
        return Some("the value is null".into());
    };
    let event = match serde_json::from_slice::<Value>(value) {
        Ok(Value::Object(event)) => event,
        Ok(other) => return Some(format!("not a JSON object but {}", kind(&other))),
        Err(e) => return Some(format!("not JSON: {e}")),
    };
    let problems: Vec<String> = required
        .iter()
        .filter_map(|&field| match event.get(field) {
            None => Some(format!("missing field `{field}`")),
            Some(Value::String(_) | Value::Number(_)) => None,
            Some(other) => Some(format!("field `{field}` is {}, not a string or number", kind(other))),
        })
        .collect();
    (!problems.is_empty()).then(|| problems.join("; "))
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

transform_batch!(validate_batch);

#[cfg(test)]
mod tests {
    use fjord_transform_sdk::testing::TestHost;
    use fjord_transform_sdk::Record;

    use super::fjord_on_batch;

    fn event(offset: i64, json: &str) -> Record {
        Record { offset, ..Record::new() }.with_key("k").with_value(json)
    }

    fn host() -> TestHost {
        TestHost::new().outputs(["valid", "dead-letters"]).env("REQUIRED_FIELDS", "id, amount")
    }

    #[test]
    fn valid_events_pass_unchanged() {
        let batch = vec![event(0, r#"{"id":"a","amount":3}"#), event(1, r#"{"id":7,"amount":"3.50","extra":null}"#)];
        let outcome = host().run(fjord_on_batch, &batch);
        assert!(outcome.is_ok(), "{:?}", outcome.logs);
        assert_eq!(outcome.output(0), [&batch[0], &batch[1]]);
        assert!(outcome.output(1).is_empty());
    }

    #[test]
    fn invalid_events_go_to_the_dead_letter_topic_with_the_reason() {
        let batch = vec![
            event(0, r#"{"id":"a"}"#),
            event(1, r#"{"id":null,"amount":true}"#),
            event(2, r#"{"id":{"x":1},"amount":[1]}"#),
            event(3, "[1,2,3]"),
            event(4, "{not json"),
            Record { offset: 5, ..Record::new() }.with_key("k"),
            event(6, r#"{"id":"ok","amount":1}"#).with_header("error", "from upstream"),
        ];
        let outcome = host().run(fjord_on_batch, &batch);
        assert!(outcome.is_ok(), "{:?}", outcome.logs);
        assert_eq!(outcome.output(0).iter().map(|r| r.offset).collect::<Vec<_>>(), [6]);
        let dead = outcome.output(1);
        let reasons: Vec<&str> = dead.iter().map(|r| r.header_str("error").unwrap()).collect();
        assert_eq!(reasons[0], "missing field `amount`");
        assert_eq!(
            reasons[1],
            "field `id` is null, not a string or number; field `amount` is a boolean, not a string or number"
        );
        assert_eq!(
            reasons[2],
            "field `id` is an object, not a string or number; field `amount` is an array, not a string or number"
        );
        assert_eq!(reasons[3], "not a JSON object but an array");
        assert!(reasons[4].starts_with("not JSON: key must be a string"), "{}", reasons[4]);
        assert_eq!(reasons[5], "the value is null");
        // The original record, plus the header.
        let mut expected = batch[0].clone();
        expected.headers.push(("error".into(), Some(b"missing field `amount`".to_vec())));
        assert_eq!(dead[0], &expected);
    }

    #[test]
    fn without_required_fields_any_object_is_valid() {
        let batch = [event(0, "{}"), event(1, "1")];
        let outcome = TestHost::new().outputs(["valid", "dead-letters"]).run(fjord_on_batch, &batch);
        assert_eq!(outcome.output(0).len(), 1);
        assert_eq!(outcome.output(1)[0].header_str("error"), Some("not a JSON object but a number"));
    }

    #[test]
    fn fails_when_the_dead_letter_topic_is_missing() {
        let outcome = TestHost::new().outputs(["valid"]).run(fjord_on_batch, &[event(0, "oops")]);
        assert!(!outcome.is_ok());
        assert!(outcome.logs[0].1.contains("no output number 1"), "{:?}", outcome.logs);
    }
}
