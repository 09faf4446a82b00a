//! `enrich`: adds what a lookup table knows about each event's user to the event.
//!
//! Input: JSON objects with a `user` field, the user's id (a string, or a number read as its
//! JSON text). Lookups: one (number 0), a compacted topic keyed by user id whose values are JSON
//! objects of the user's attributes. Outputs: one (number 0). Environment: none.
//!
//! Each event is written to output 0 with a field `"user_info"` holding the user's attributes,
//! or `null` when the event has no usable `user` or the table does not know it (an existing
//! `user_info` is replaced). Key, headers and timestamp are kept; so are the other fields and
//! their order. A tombstone passes through unchanged.
//!
//! An event that is not a JSON object, or a table value that is not one, fails the batch (and
//! so pauses the transform): enriching cannot be skipped silently, and an event without
//! `user_info` would look enriched to whoever reads the output. Put `validate` in front of it
//! to divert such records to a dead-letter topic instead.

use fjord_transform_sdk::{lookup, transform, Error, Output, Record};
use serde_json::Value;

/// The lookup table of user attributes.
const USERS: u32 = 0;

fn enrich(record: &Record, out: &mut Output) -> Result<(), Error> {
    let Some(value) = record.value.as_deref() else {
        return out.emit(0, record);
    };
    let mut event = match serde_json::from_slice::<Value>(value) {
        Ok(Value::Object(event)) => event,
        Ok(_) => return Err(Error::new("the event is not a JSON object")),
        Err(e) => return Err(Error::new(format!("the event is not JSON: {e}"))),
    };
    let user = match event.get("user") {
        Some(Value::String(id)) => Some(id.clone()),
        Some(Value::Number(id)) => Some(id.to_string()),
        _ => None,
    };
    let info = match user {
        Some(id) => user_info(&id)?,
        None => Value::Null,
    };
    event.insert("user_info".to_string(), info);
    out.emit(0, record.clone().with_value(serde_json::to_vec(&event)?))
}

fn user_info(id: &str) -> Result<Value, Error> {
    let Some(attributes) = lookup(USERS, id.as_bytes())? else {
        return Ok(Value::Null);
    };
    match serde_json::from_slice::<Value>(&attributes) {
        Ok(info @ Value::Object(_)) => Ok(info),
        _ => Err(Error::new(format!("the lookup table's value for user `{id}` is not a JSON object"))),
    }
}

transform!(enrich);

#[cfg(test)]
mod tests {
    use fjord_transform_sdk::testing::TestHost;
    use fjord_transform_sdk::Record;
    use serde_json::{json, Value};

    use super::fjord_on_batch;

    fn host() -> TestHost {
        TestHost::new().outputs(["enriched"]).lookup_table(
            "users",
            [
                ("u1", r#"{"name":"Ada","tier":"gold"}"#.to_string()),
                ("42", r#"{"name":"Numeric"}"#.to_string()),
                // Bigger than the SDK's first lookup buffer: the value must still arrive whole.
                ("big", json!({ "bio": "x".repeat(3000) }).to_string()),
                ("broken", "not json".to_string()),
            ],
        )
    }

    fn parse(record: &Record) -> Value {
        serde_json::from_slice(record.value.as_deref().unwrap()).unwrap()
    }

    #[test]
    fn adds_the_users_attributes() {
        let batch = [
            Record::new()
                .with_key("e1")
                .with_header("h", "v")
                .with_timestamp(77)
                .with_value(r#"{"user":"u1","action":"buy","amount":3}"#),
            Record::new().with_value(r#"{"user":42}"#),
            Record::new().with_value(r#"{"user":"big"}"#),
        ];
        let outcome = host().run(fjord_on_batch, &batch);
        assert!(outcome.is_ok(), "{:?}", outcome.logs);
        let out = outcome.output(0);
        assert_eq!(out.len(), 3);
        assert_eq!(
            out[0].value_str(),
            Some(r#"{"user":"u1","action":"buy","amount":3,"user_info":{"name":"Ada","tier":"gold"}}"#),
            "the other fields keep their order"
        );
        assert_eq!((out[0].key_str(), out[0].header_str("h"), out[0].timestamp), (Some("e1"), Some("v"), 77));
        assert_eq!(parse(out[1])["user_info"], json!({"name": "Numeric"}));
        assert_eq!(parse(out[2])["user_info"]["bio"].as_str().map(str::len), Some(3000));
    }

    #[test]
    fn unknown_or_missing_users_get_null() {
        let batch = [
            Record::new().with_value(r#"{"user":"nobody"}"#),
            Record::new().with_value(r#"{"action":"anonymous"}"#),
            Record::new().with_value(r#"{"user":null,"user_info":"stale"}"#),
            Record::new().with_value(r#"{"user":["u1"]}"#),
        ];
        let outcome = host().run(fjord_on_batch, &batch);
        assert!(outcome.is_ok(), "{:?}", outcome.logs);
        for record in outcome.output(0) {
            assert_eq!(parse(record)["user_info"], Value::Null, "{:?}", record.value_str());
        }
        assert_eq!(outcome.output(0).len(), 4);
    }

    #[test]
    fn tombstones_pass_through() {
        let tombstone = Record::new().with_key("gone");
        let outcome = host().run(fjord_on_batch, std::slice::from_ref(&tombstone));
        assert_eq!(outcome.output(0), [&tombstone]);
    }

    #[test]
    fn bad_events_and_bad_table_values_fail_the_batch() {
        for (value, why) in [
            ("not json", "the event is not JSON"),
            ("[1,2]", "the event is not a JSON object"),
            (r#"{"user":"broken"}"#, "value for user `broken` is not a JSON object"),
        ] {
            let outcome = host().run(fjord_on_batch, &[Record::new().with_value(value)]);
            assert!(!outcome.is_ok(), "{value}");
            assert!(outcome.logs[0].1.contains(why), "{:?}", outcome.logs);
        }
    }

    #[test]
    fn without_the_lookup_table_the_batch_fails() {
        let outcome =
            TestHost::new().outputs(["enriched"]).run(fjord_on_batch, &[Record::new().with_value(r#"{"user":"u1"}"#)]);
        assert!(!outcome.is_ok());
        assert!(outcome.logs[0].1.contains("no lookup table number 0"), "{:?}", outcome.logs);
    }
}
