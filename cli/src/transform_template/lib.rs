//! A Fjord transform: the broker calls it with each batch of committed records of its input
//! topic, and it writes records to the outputs it was deployed with (`--output`, numbered from
//! 0 in that order). The SDK it is written against is vendored in `fjord-transform-sdk/`; its
//! docs: `cargo doc --open -p fjord-transform-sdk`.

use fjord_transform_sdk::{transform, Error, Output, Record};

/// Writes every record, unchanged, to the first output. Emit nothing to drop a record, emit to
/// another output number to route it, or emit a changed copy to rewrite it.
fn identity(record: &Record, out: &mut Output) -> Result<(), Error> {
    out.emit(0, record)
}

transform!(identity);

// The tests run on the build machine, where the SDK's `TestHost` stands in for the broker:
//   cargo test --target "$(rustc -vV | sed -n 's/^host: //p')"
#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use fjord_transform_sdk::testing::TestHost;
    use fjord_transform_sdk::Record;

    #[test]
    fn every_record_goes_to_the_first_output_unchanged() {
        let input = [Record::new().with_key("k").with_value("v").with_header("h", "1"), Record::new().with_key("gone")];
        let outcome = TestHost::new().outputs(["out"]).run(super::fjord_on_batch, &input);
        assert!(outcome.is_ok());
        let out = outcome.output(0);
        assert_eq!(out.len(), 2);
        for (got, want) in out.iter().zip(&input) {
            assert_eq!((&got.key, &got.value, &got.headers), (&want.key, &want.value, &want.headers));
        }
    }
}
