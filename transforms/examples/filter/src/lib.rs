//! `filter`: keeps the JSON events whose field `FILTER_FIELD` equals `FILTER_VALUE` and drops
//! every other record.
//!
//! Outputs: one (number 0), the kept events, unchanged. Lookups: none. Environment:
//!
//! - `FILTER_FIELD`: the name of a top-level field of the event, e.g. `type`.
//! - `FILTER_VALUE`: the value it must have, e.g. `purchase`. A string field matches when it is
//!   that text; a number, boolean or null field when its JSON text is (`FILTER_VALUE=3` keeps
//!   `{"n": 3}`); an object or array never matches.
//!
//! A record that is not a JSON object (including a tombstone) does not match and is dropped.
//! An unset variable fails the batch, which pauses the transform until it is redeployed with
//! the variable set.

use fjord_transform_sdk::{env, transform, Error, Output, Record};
use serde_json::Value;

fn required_env(name: &str) -> Result<String, Error> {
    env(name).ok_or_else(|| Error::new(format!("environment variable {name} is not set")))
}

fn filter(record: &Record, out: &mut Output) -> Result<(), Error> {
    let field = required_env("FILTER_FIELD")?;
    let wanted = required_env("FILTER_VALUE")?;
    if matches(record, &field, &wanted) {
        out.emit(0, record)?;
    }
    Ok(())
}

fn matches(record: &Record, field: &str, wanted: &str) -> bool {
    let Some(value) = record.value.as_deref() else { return false };
    let Ok(Value::Object(event)) = serde_json::from_slice(value) else { return false };
    match event.get(field) {
        Some(Value::String(text)) => text == wanted,
        Some(Value::Object(_) | Value::Array(_)) | None => false,
        Some(scalar) => {
            // Compared as text: `Value`'s own `== str` is true only for strings.
            let text = scalar.to_string();
            text == wanted
        }
    }
}

transform!(filter);

#[cfg(test)]
mod tests {
    use fjord_transform_sdk::testing::TestHost;
    use fjord_transform_sdk::Record;

    use super::fjord_on_batch;

    fn event(offset: i64, json: &str) -> Record {
        Record { offset, ..Record::new() }.with_key(format!("k{offset}")).with_value(json)
    }

    fn host(field: &str, value: &str) -> TestHost {
        TestHost::new().outputs(["purchases"]).env("FILTER_FIELD", field).env("FILTER_VALUE", value)
    }

    #[test]
    fn keeps_only_matching_events_unchanged() {
        let batch = vec![
            event(0, r#"{"type":"purchase","amount":5}"#),
            event(1, r#"{"type":"view"}"#),
            event(2, r#"{"amount":5}"#),
            event(3, r#"{"type":"purchase"}"#).with_header("h", "v"),
            event(4, r#"{"type":"Purchase"}"#),
            event(5, r#"{"nested":{"type":"purchase"}}"#),
            event(6, "not json"),
            event(7, r#"["purchase"]"#),
            Record { offset: 8, ..Record::new() },
            event(9, r#"{"type":["purchase"]}"#),
        ];
        let outcome = host("type", "purchase").run(fjord_on_batch, &batch);
        assert!(outcome.is_ok(), "{:?}", outcome.logs);
        let kept: Vec<Record> = outcome.output(0).into_iter().cloned().collect();
        assert_eq!(kept, vec![batch[0].clone(), batch[3].clone()]);
    }

    #[test]
    fn scalars_match_by_their_json_text() {
        let batch = vec![
            event(0, r#"{"n":3}"#),
            event(1, r#"{"n":"3"}"#),
            event(2, r#"{"n":3.5}"#),
            event(3, r#"{"n":true}"#),
            event(4, r#"{"n":null}"#),
        ];
        let kept = |value: &str| -> Vec<i64> {
            let outcome = host("n", value).run(fjord_on_batch, &batch);
            assert!(outcome.is_ok());
            outcome.output(0).iter().map(|r| r.offset).collect()
        };
        assert_eq!(kept("3"), [0, 1]);
        assert_eq!(kept("3.5"), [2]);
        assert_eq!(kept("true"), [3]);
        assert_eq!(kept("null"), [4]);
        assert_eq!(kept("4"), Vec::<i64>::new());
    }

    #[test]
    fn a_missing_setting_fails_the_batch() {
        let outcome = TestHost::new()
            .outputs(["purchases"])
            .env("FILTER_FIELD", "type")
            .run(fjord_on_batch, &[event(0, r#"{"type":"purchase"}"#)]);
        assert!(!outcome.is_ok());
        assert!(outcome.logs[0].1.contains("FILTER_VALUE is not set"), "{:?}", outcome.logs);
    }
}
