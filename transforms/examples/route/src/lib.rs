//! `route`: sends each JSON event to the output topic named by one of its fields.
//!
//! Outputs: any number, at least one; the last declared is the catch-all. Lookups: none.
//! Environment:
//!
//! - `ROUTE_FIELD`: the name of a top-level field, e.g. `country`.
//!
//! An event whose `ROUTE_FIELD` is a string (or a number, read as its JSON text) naming one of
//! the declared outputs goes to that topic, unchanged. Everything else goes to the last
//! declared output: other values, events without the field, records that are not JSON objects,
//! tombstones. So with outputs `orders-se,orders-no,orders-other` and `ROUTE_FIELD=region`,
//! `{"region":"orders-se"}` goes to `orders-se` and `{"region":"dk"}` to `orders-other`.
//!
//! An unset `ROUTE_FIELD`, or no outputs at all, fails the batch.

use fjord_transform_sdk::{env, transform, Error, Output, Record};
use serde_json::Value;

fn route(record: &Record, out: &mut Output) -> Result<(), Error> {
    let field = env("ROUTE_FIELD").ok_or_else(|| Error::new("environment variable ROUTE_FIELD is not set"))?;
    let Some(catch_all) = out.outputs().len().checked_sub(1) else {
        return Err(Error::new("route needs at least one output (the last is the catch-all)"));
    };
    match destination(record, &field) {
        Some(topic) if out.output_index(&topic).is_some() => out.emit_to(&topic, record),
        _ => out.emit(catch_all as u32, record),
    }
}

/// The topic the event asks for, if it asks.
fn destination(record: &Record, field: &str) -> Option<String> {
    let Ok(Value::Object(mut event)) = serde_json::from_slice(record.value.as_deref()?) else {
        return None;
    };
    match event.remove(field)? {
        Value::String(topic) => Some(topic),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

transform!(route);

#[cfg(test)]
mod tests {
    use fjord_transform_sdk::testing::TestHost;
    use fjord_transform_sdk::Record;

    use super::fjord_on_batch;

    fn event(offset: i64, json: &str) -> Record {
        Record { offset, ..Record::new() }.with_value(json)
    }

    #[test]
    fn routes_by_field_with_a_catch_all() {
        let batch = vec![
            event(0, r#"{"region":"se","n":1}"#),
            event(1, r#"{"region":"no"}"#),
            event(2, r#"{"region":"dk"}"#),
            event(3, r#"{"n":2}"#),
            event(4, "not json"),
            Record { offset: 5, ..Record::new() }.with_key("tombstone"),
            event(6, r#"{"region":7}"#),
            event(7, r#"{"region":["se"]}"#),
            event(8, r#"{"region":"other"}"#),
            event(9, r#"{"nested":{"region":"se"}}"#),
            event(10, r#"{"region":"se"}"#).with_header("h", "kept"),
        ];
        let outcome = TestHost::new()
            .outputs(["se", "no", "7", "other"])
            .env("ROUTE_FIELD", "region")
            .run(fjord_on_batch, &batch);
        assert!(outcome.is_ok(), "{:?}", outcome.logs);
        let offsets = |output| outcome.output(output).iter().map(|r| r.offset).collect::<Vec<_>>();
        assert_eq!(offsets(0), [0, 10]);
        assert_eq!(offsets(1), [1]);
        assert_eq!(offsets(2), [6]);
        assert_eq!(offsets(3), [2, 3, 4, 5, 7, 8, 9]);
        // Routed records are the input records, unchanged.
        assert_eq!(outcome.output(0)[1], &batch[10]);
        assert_eq!(outcome.output(3)[3], &batch[5]);
    }

    #[test]
    fn a_single_output_takes_everything() {
        let outcome = TestHost::new()
            .outputs(["all"])
            .env("ROUTE_FIELD", "region")
            .run(fjord_on_batch, &[event(0, r#"{"region":"se"}"#), event(1, r#"{"region":"all"}"#)]);
        assert!(outcome.is_ok());
        assert_eq!(outcome.output(0).len(), 2);
    }

    #[test]
    fn misconfiguration_fails_the_batch() {
        let batch = [event(0, r#"{"region":"se"}"#)];
        let outcome = TestHost::new().outputs(["se"]).run(fjord_on_batch, &batch);
        assert!(outcome.logs[0].1.contains("ROUTE_FIELD is not set"), "{:?}", outcome.logs);
        let outcome = TestHost::new().env("ROUTE_FIELD", "region").run(fjord_on_batch, &batch);
        assert!(!outcome.is_ok());
        assert!(outcome.logs[0].1.contains("at least one output"), "{:?}", outcome.logs);
    }
}
