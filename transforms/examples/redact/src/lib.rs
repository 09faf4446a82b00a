//! `redact`: masks named fields of JSON events, wherever they are nested.
//!
//! Outputs: one (number 0). Lookups: none. Environment:
//!
//! - `REDACT_FIELDS`: field names, comma-separated (`email,ssn,card`). A field of any of these
//!   names, in any object at any depth (inside arrays too), gets `"***"` when its value is a
//!   string and `null` otherwise (a number, a boolean, or a whole object or array, which is not
//!   looked into).
//!
//! Each event is written to output 0 with key, headers and timestamp kept. One without any
//! such field is written byte for byte as it came; a tombstone passes through.
//!
//! A value that is not JSON fails the batch (pausing the transform) rather than being passed on
//! unredacted; so does an unset or empty `REDACT_FIELDS`.
//!
//! It registers a per-batch function ([`transform_batch!`]) so that the setting is parsed once
//! per batch rather than once per record.

use fjord_transform_sdk::{env, transform_batch, Error, Output, Record};
use serde_json::Value;

/// What a masked string becomes.
const MASK: &str = "***";

fn redact_batch(records: &[Record], out: &mut Output) -> Result<(), Error> {
    let fields = fields()?;
    for record in records {
        out.emit(0, redact_record(record, &fields)?)?;
    }
    Ok(())
}

fn fields() -> Result<Vec<String>, Error> {
    let setting = env("REDACT_FIELDS").unwrap_or_default();
    let fields: Vec<String> = setting.split(',').map(str::trim).filter(|f| !f.is_empty()).map(String::from).collect();
    if fields.is_empty() {
        return Err(Error::new("REDACT_FIELDS names no fields"));
    }
    Ok(fields)
}

fn redact_record(record: &Record, fields: &[String]) -> Result<Record, Error> {
    let Some(value) = record.value.as_deref() else {
        return Ok(record.clone());
    };
    let mut json: Value = serde_json::from_slice(value).map_err(|e| {
        Error::new(format!("the value at offset {} is not JSON ({e}); not passing it on unredacted", record.offset))
    })?;
    if redact(&mut json, fields) == 0 {
        return Ok(record.clone());
    }
    Ok(record.clone().with_value(serde_json::to_vec(&json)?))
}

/// Masks the fields named `fields` in `value`; returns how many it masked.
fn redact(value: &mut Value, fields: &[String]) -> usize {
    match value {
        Value::Object(map) => map
            .iter_mut()
            .map(|(name, field)| {
                if !fields.contains(name) {
                    return redact(field, fields);
                }
                *field = match field {
                    Value::String(_) => Value::String(MASK.to_string()),
                    _ => Value::Null,
                };
                1
            })
            .sum(),
        Value::Array(items) => items.iter_mut().map(|item| redact(item, fields)).sum(),
        _ => 0,
    }
}

transform_batch!(redact_batch);

#[cfg(test)]
mod tests {
    use fjord_transform_sdk::testing::TestHost;
    use fjord_transform_sdk::Record;

    use super::fjord_on_batch;

    fn run(fields: &str, values: &[&str]) -> Vec<String> {
        let batch: Vec<Record> = values.iter().map(|v| Record::new().with_value(*v)).collect();
        let outcome = TestHost::new().outputs(["clean"]).env("REDACT_FIELDS", fields).run(fjord_on_batch, &batch);
        assert!(outcome.is_ok(), "{:?}", outcome.logs);
        outcome.output(0).iter().map(|r| r.value_str().unwrap().to_string()).collect()
    }

    #[test]
    fn masks_strings_and_nulls_everything_else_at_any_depth() {
        let out = run(
            " email , ssn,card",
            &[
                r#"{"id":1,"email":"a@b.c","ssn":123456789,"name":"Ada"}"#,
                r#"{"user":{"email":"x@y.z","prefs":{"card":{"number":"4111"}}},"tags":[{"ssn":"1"},{"ok":true}]}"#,
                r#"[{"email":"top@level.array"}]"#,
                r#"{"email":null,"EMAIL":"case matters"}"#,
            ],
        );
        assert_eq!(
            out,
            [
                r#"{"id":1,"email":"***","ssn":null,"name":"Ada"}"#,
                r#"{"user":{"email":"***","prefs":{"card":null}},"tags":[{"ssn":"***"},{"ok":true}]}"#,
                r#"[{"email":"***"}]"#,
                r#"{"email":null,"EMAIL":"case matters"}"#,
            ]
        );
    }

    #[test]
    fn untouched_events_keep_their_bytes_and_records_keep_their_metadata() {
        let untouched = "{ \"name\" : \"Ada\" }";
        assert_eq!(run("email", &[untouched, "42", "\"email\""]), [untouched, "42", "\"email\""]);

        let record = Record::new().with_key("k").with_header("h", "v").with_timestamp(5).with_value(r#"{"email":"e"}"#);
        let tombstone = Record::new().with_key("gone");
        let outcome = TestHost::new()
            .outputs(["clean"])
            .env("REDACT_FIELDS", "email")
            .run(fjord_on_batch, &[record.clone(), tombstone.clone()]);
        assert_eq!(outcome.output(0), [&record.with_value(r#"{"email":"***"}"#), &tombstone]);
    }

    #[test]
    fn refuses_to_pass_on_what_it_cannot_read() {
        let batch = [
            Record::new().with_value(r#"{"email":"ok@x"}"#),
            Record { offset: 9, ..Record::new() }.with_value("email=a@b"),
        ];
        let outcome = TestHost::new().outputs(["clean"]).env("REDACT_FIELDS", "email").run(fjord_on_batch, &batch);
        assert!(!outcome.is_ok());
        assert!(outcome.emitted.is_empty(), "nothing of the batch is written, not even the good record");
        assert!(outcome.logs[0].1.contains("offset 9 is not JSON"), "{:?}", outcome.logs);
    }

    #[test]
    fn needs_fields_to_redact() {
        for host in [TestHost::new(), TestHost::new().env("REDACT_FIELDS", " , ")] {
            let outcome = host.outputs(["clean"]).run(fjord_on_batch, &[Record::new().with_value("{}")]);
            assert!(!outcome.is_ok());
            assert!(outcome.logs[0].1.contains("REDACT_FIELDS names no fields"), "{:?}", outcome.logs);
        }
    }
}
