//! `identity`: writes every input record to output 0 unchanged (key, value, headers and
//! timestamp; tombstones included).
//!
//! Outputs: one (number 0). Lookups: none. Environment: none.
//!
//! The smallest transform there is, and the baseline for the host's overhead: copying a topic
//! through it should cost only the ABI's encode and decode.

use fjord_transform_sdk::{transform, Error, Output, Record};

fn identity(record: &Record, out: &mut Output) -> Result<(), Error> {
    out.emit(0, record)
}

transform!(identity);

#[cfg(test)]
mod tests {
    use fjord_transform_sdk::testing::TestHost;
    use fjord_transform_sdk::Record;

    use super::fjord_on_batch;

    #[test]
    fn copies_every_record_exactly() {
        let batch = vec![
            Record { offset: 3, timestamp: 1_700_000_000_123, ..Record::new() }
                .with_key("k")
                .with_value("{\"n\":1}")
                .with_header("trace", "t1"),
            Record { offset: 4, timestamp: 7, key: Some(b"gone".to_vec()), value: None, headers: vec![] },
            Record {
                offset: 5,
                key: None,
                value: Some(vec![0, 255, 1]),
                headers: vec![("h".into(), None)],
                ..Record::new()
            },
        ];
        let outcome = TestHost::new().outputs(["copy"]).run(fjord_on_batch, &batch);
        assert!(outcome.is_ok(), "{:?}", outcome.logs);
        let copied: Vec<Record> = outcome.output(0).into_iter().cloned().collect();
        assert_eq!(copied, batch);
        assert_eq!(outcome.emitted.len(), 3, "everything goes to output 0");
    }

    #[test]
    fn fails_without_an_output() {
        let outcome = TestHost::new().run(fjord_on_batch, &[Record::new().with_value("x")]);
        assert!(!outcome.is_ok());
        assert!(outcome.emitted.is_empty());
    }
}
