//! The decode → function → encode path, run natively through the test double.
//!
//! A panic must not unwind out of an `extern "C"` function (it aborts the test binary), so the
//! transform functions below never assert: they report what they saw by emitting it, and the
//! tests assert on the outcome.

use crate::__private::{on_batch, Handler, BAD_BATCH, FAILED};
use crate::testing::TestHost;
use crate::*;

fn sample_batch() -> Vec<Record> {
    vec![
        Record {
            offset: 10,
            timestamp: 1_700_000_000_000,
            key: Some(b"k1".to_vec()),
            value: Some(b"{\"a\":1}".to_vec()),
            headers: vec![("trace".into(), Some(b"abc".to_vec())), ("none".into(), None)],
        },
        // Empty and null are different things and must stay so.
        Record { offset: 11, timestamp: 5, key: Some(Vec::new()), value: None, headers: vec![] },
        Record {
            offset: 12,
            timestamp: 6,
            key: None,
            value: Some(Vec::new()),
            headers: vec![("".into(), Some(vec![]))],
        },
        Record { offset: 13, timestamp: -1, key: None, value: Some(vec![0, 159, 146, 150]), headers: vec![] },
    ]
}

fn identity(record: &Record, out: &mut Output) -> Result<(), Error> {
    out.emit(0, record)
}

extern "C" fn run_identity(ptr: *mut u8, len: usize) -> i32 {
    on_batch(ptr, len, Handler::Record(identity))
}

#[test]
fn records_round_trip_unchanged() {
    let outcome = TestHost::new().outputs(["out"]).run(run_identity, &sample_batch());
    assert_eq!(outcome.status, 0, "{:?}", outcome.logs);
    let emitted: Vec<Record> = outcome.output(0).into_iter().cloned().collect();
    assert_eq!(emitted, sample_batch());
    assert_eq!(emitted[1].value, None);
    assert_eq!(emitted[2].value, Some(Vec::new()));
}

#[test]
fn an_empty_batch_calls_nothing() {
    let outcome = TestHost::new().outputs(["out"]).run(run_identity, &[]);
    assert!(outcome.is_ok());
    assert!(outcome.emitted.is_empty());
}

fn to_second(record: &Record, out: &mut Output) -> Result<(), Error> {
    out.emit(1, record)
}

extern "C" fn run_to_second(ptr: *mut u8, len: usize) -> i32 {
    on_batch(ptr, len, Handler::Record(to_second))
}

#[test]
fn emitting_to_an_undeclared_output_fails_the_batch() {
    let outcome = TestHost::new().outputs(["only"]).run(run_to_second, &sample_batch());
    assert_eq!(outcome.status, FAILED);
    assert!(outcome.emitted.is_empty());
    let errors = outcome.logs_at(Level::Error);
    assert_eq!(errors.len(), 1);
    assert!(errors[0].contains("offset 10"), "{errors:?}");
    assert!(errors[0].contains("no output number 1"), "{errors:?}");

    let outcome = TestHost::new().outputs(["a", "b"]).run(run_to_second, &sample_batch());
    assert!(outcome.is_ok());
    assert_eq!(outcome.output(1).len(), 4);
}

/// Reports what `emit_to` did for the topic named in the record's value.
fn by_name(record: &Record, out: &mut Output) -> Result<(), Error> {
    let topic = record.value_str().unwrap_or_default();
    let result = out.emit_to(topic, Record::new().with_value(topic));
    let report = match result {
        Ok(()) => "ok".to_string(),
        Err(e) => format!("{:?}: {}", e.kind(), e.message()),
    };
    out.emit(0, Record::new().with_key("report").with_value(report))
}

extern "C" fn run_by_name(ptr: *mut u8, len: usize) -> i32 {
    on_batch(ptr, len, Handler::Record(by_name))
}

#[test]
fn emit_to_resolves_topic_names_in_declared_order() {
    let batch = ["audit", "errors", "nope"].map(|topic| Record::new().with_value(topic));
    let outcome = TestHost::new().outputs(["reports", "audit", "errors"]).run(run_by_name, &batch);
    assert!(outcome.is_ok(), "{:?}", outcome.logs);
    assert_eq!(outcome.output(1)[0].value_str(), Some("audit"));
    assert_eq!(outcome.output(2)[0].value_str(), Some("errors"));
    let reports: Vec<_> = outcome.output(0).iter().filter_map(|r| r.value_str()).collect();
    assert_eq!(reports[..2], ["ok", "ok"]);
    assert!(reports[2].starts_with("NoSuchOutput: no output topic `nope`"), "{reports:?}");
    assert!(reports[2].contains("reports,audit,errors"), "{reports:?}");
}

/// Looks up the record's key in the table named by its value ("#n" for a number) and emits
/// the result.
fn look(record: &Record, out: &mut Output) -> Result<(), Error> {
    let key = record.key.as_deref().unwrap_or_default();
    let table = record.value_str().unwrap_or_default();
    let result = match table.strip_prefix('#') {
        Some(number) => lookup(number.parse::<u32>()?, key),
        None => lookup(table, key),
    };
    let reported = match result {
        Ok(Some(value)) => Record::new().with_value(value),
        Ok(None) => Record::new().with_key("absent"),
        Err(e) => Record::new().with_key(format!("{:?}", e.kind())),
    };
    out.emit(0, reported)
}

extern "C" fn run_look(ptr: *mut u8, len: usize) -> i32 {
    on_batch(ptr, len, Handler::Record(look))
}

fn lookup_host(big: &[u8]) -> TestHost {
    TestHost::new()
        .outputs(["out"])
        .lookup_table("small", [("a", "1"), ("empty", "")])
        .lookup_table("big", [(b"x".to_vec(), big.to_vec())])
}

#[test]
fn lookup_regrows_its_buffer_when_the_value_is_bigger() {
    let big: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
    let outcome = lookup_host(&big).run(run_look, &[Record::new().with_key("x").with_value("#1")]);
    assert!(outcome.is_ok(), "{:?}", outcome.logs);
    assert_eq!(outcome.output(0)[0].value.as_deref(), Some(&big[..]));
    assert_eq!(outcome.lookup_capacities.len(), 2);
    assert!(outcome.lookup_capacities[0] < big.len());
    assert!(outcome.lookup_capacities[1] >= big.len());

    // A value exactly the size of the first buffer fits in one call.
    let exact = vec![7; LOOKUP_BUFFER];
    let outcome = lookup_host(&exact).run(run_look, &[Record::new().with_key("x").with_value("big")]);
    assert_eq!(outcome.output(0)[0].value.as_deref(), Some(&exact[..]));
    assert_eq!(outcome.lookup_capacities.len(), 1);
}

#[test]
fn lookup_tells_absent_keys_empty_values_and_unknown_tables_apart() {
    let batch = [
        Record::new().with_key("a").with_value("small"),
        Record::new().with_key("a").with_value("#0"),
        Record::new().with_key("empty").with_value("small"),
        Record::new().with_key("b").with_value("small"),
        Record::new().with_key("a").with_value("#2"),
        Record::new().with_key("a").with_value("missing"),
    ];
    let outcome = lookup_host(b"").run(run_look, &batch);
    assert!(outcome.is_ok(), "{:?}", outcome.logs);
    let out = outcome.output(0);
    assert_eq!(out[0].value_str(), Some("1"));
    assert_eq!(out[1].value_str(), Some("1"));
    assert_eq!((out[2].key.as_deref(), out[2].value_str()), (None, Some("")));
    assert_eq!(out[3].key_str(), Some("absent"));
    assert_eq!(out[4].key_str(), Some("NoSuchTable"));
    assert_eq!(out[5].key_str(), Some("NoSuchTable"));
}

#[test]
fn malformed_batches_are_rejected_without_calling_the_function() {
    let mut batch = codec::encode_batch(&sample_batch()).unwrap();
    batch.truncate(batch.len() - 1);
    for bytes in [&batch[..], &[], &[1, 0, 0, 0], &[0, 0, 0, 0, 0]] {
        let outcome = TestHost::new().outputs(["out"]).run_bytes(run_identity, bytes);
        assert_eq!(outcome.status, BAD_BATCH, "{bytes:?}");
        let errors = outcome.logs_at(Level::Error);
        assert!(errors[0].starts_with("cannot read the batch"), "{errors:?}");
    }
}

#[test]
fn on_batch_only_accepts_the_buffer_fjord_alloc_returned() {
    let batch = codec::encode_batch(&sample_batch()).unwrap();
    let ptr = __private::alloc(batch.len());
    // SAFETY: `alloc` returned `batch.len()` writable bytes.
    unsafe { std::ptr::copy_nonoverlapping(batch.as_ptr(), ptr, batch.len()) };
    let mut elsewhere = batch.clone();
    assert_eq!(on_batch(elsewhere.as_mut_ptr(), batch.len(), Handler::Record(identity)), BAD_BATCH);
    // The buffer is consumed either way: a second call has nothing to read.
    assert_eq!(on_batch(ptr, batch.len(), Handler::Record(identity)), BAD_BATCH);

    let ptr = __private::alloc(batch.len());
    assert_eq!(on_batch(ptr, batch.len() + 1, Handler::Record(identity)), BAD_BATCH);

    // A shorter length than allocated is fine: the host may round its allocation up.
    let ptr = __private::alloc(batch.len() + 100);
    // SAFETY: as above.
    unsafe { std::ptr::copy_nonoverlapping(batch.as_ptr(), ptr, batch.len()) };
    assert_eq!(on_batch(ptr, batch.len(), Handler::Batch(|_, _| Ok(()))), 0);
}

#[test]
fn fjord_alloc_returns_null_when_it_cannot_allocate() {
    assert!(__private::alloc(usize::MAX).is_null());
    assert!(!__private::alloc(0).is_null());
}

fn fail_on_odd(record: &Record, out: &mut Output) -> Result<(), Error> {
    if record.offset % 2 == 1 {
        let n: i32 = "not a number".parse()?;
        return Err(Error::new(format!("parsed {n}")));
    }
    out.emit(0, record)
}

extern "C" fn run_fail_on_odd(ptr: *mut u8, len: usize) -> i32 {
    on_batch(ptr, len, Handler::Record(fail_on_odd))
}

#[test]
fn the_first_error_stops_the_batch_and_is_logged() {
    let outcome = TestHost::new().outputs(["out"]).run(run_fail_on_odd, &sample_batch());
    assert_eq!(outcome.status, FAILED);
    assert!(outcome.emitted.is_empty(), "a failed batch writes nothing");
    assert_eq!(
        outcome.logs,
        vec![(Level::Error, "the transform failed on the record at offset 11: invalid digit found in string".into())]
    );
}

fn summarize(records: &[Record], out: &mut Output) -> Result<(), Error> {
    if records.iter().any(|r| r.header_str("fail").is_some()) {
        return Err(Error::new("asked to fail"));
    }
    let offsets: Vec<String> = records.iter().map(|r| r.offset.to_string()).collect();
    out.emit(0, Record::new().with_value(offsets.join(",")))
}

extern "C" fn run_summarize(ptr: *mut u8, len: usize) -> i32 {
    on_batch(ptr, len, Handler::Batch(summarize))
}

#[test]
fn a_batch_function_sees_the_whole_batch() {
    let outcome = TestHost::new().outputs(["out"]).run(run_summarize, &sample_batch());
    assert!(outcome.is_ok());
    assert_eq!(outcome.output(0)[0].value_str(), Some("10,11,12,13"));

    let mut batch = sample_batch();
    batch[2] = batch[2].clone().with_header("fail", "yes");
    let outcome = TestHost::new().outputs(["out"]).run(run_summarize, &batch);
    assert_eq!(outcome.status, FAILED);
    assert_eq!(
        outcome.logs_at(Level::Error),
        ["the transform failed on the batch from offset 10 (4 records): asked to fail"]
    );
}

fn big(record: &Record, out: &mut Output) -> Result<(), Error> {
    for _ in 0..3 {
        if let Err(e) = out.emit(0, record) {
            return out.emit(0, Record::new().with_value(format!("{:?}", e.kind())));
        }
    }
    Ok(())
}

extern "C" fn run_big(ptr: *mut u8, len: usize) -> i32 {
    on_batch(ptr, len, Handler::Record(big))
}

#[test]
fn the_output_limit_is_reported() {
    let record = Record::new().with_value(vec![0; 100]);
    // 100 bytes of value + 28 of framing each: two fit in 300 bytes, a third does not.
    let outcome = TestHost::new().outputs(["out"]).output_limit(300).run(run_big, &[record]);
    assert!(outcome.is_ok());
    let out = outcome.output(0);
    assert_eq!(out.len(), 3);
    assert_eq!(out[2].value_str(), Some("OutputLimit"));
}

fn report_env(_: &Record, out: &mut Output) -> Result<(), Error> {
    let names = ["GREETING", "FJORD_OUTPUTS", "FJORD_LOOKUPS", "FJORD_TRANSFORM", "UNSET_VAR"];
    let seen: Vec<String> = names.iter().map(|n| format!("{n}={}", env(n).unwrap_or_else(|| "-".into()))).collect();
    out.emit(0, Record::new().with_value(seen.join(";")))?;
    out.emit(0, Record::new().with_value(lookups().join("+")))?;
    debug("d");
    info("i");
    warn("w");
    error("e");
    Ok(())
}

extern "C" fn run_report_env(ptr: *mut u8, len: usize) -> i32 {
    on_batch(ptr, len, Handler::Record(report_env))
}

#[test]
fn the_environment_and_logs_are_the_test_hosts() {
    let host = TestHost::new()
        .outputs(["a", "b"])
        .lookup_table("t1", [("k", "v")])
        .lookup_table("t2", Vec::<(Vec<u8>, Vec<u8>)>::new())
        .env("GREETING", "hello")
        .env("GREETING", "hej");
    let outcome = host.run(run_report_env, &[Record::new()]);
    assert!(outcome.is_ok());
    let out = outcome.output(0);
    assert_eq!(
        out[0].value_str(),
        Some("GREETING=hej;FJORD_OUTPUTS=a,b;FJORD_LOOKUPS=t1,t2;FJORD_TRANSFORM=test-transform;UNSET_VAR=-")
    );
    assert_eq!(out[1].value_str(), Some("t1+t2"));
    let levels: Vec<Level> = outcome.logs.iter().map(|(level, _)| *level).collect();
    assert_eq!(levels, [Level::Debug, Level::Info, Level::Warn, Level::Error]);
}

#[test]
fn record_helpers() {
    let record = Record::new()
        .with_key(vec![0xff])
        .with_value("v")
        .with_timestamp(9)
        .with_header("h", "first")
        .with_header("h", "second")
        .with_header("bin", vec![0xc3]);
    assert_eq!(record.key_str(), None, "not UTF-8");
    assert_eq!(record.value_str(), Some("v"));
    assert_eq!(record.timestamp, 9);
    assert_eq!(record.header_str("h"), Some("second"));
    assert_eq!(record.header("bin"), Some(&[0xc3][..]));
    assert_eq!(record.header_str("bin"), None);
    assert_eq!(record.header("missing"), None);
    let mut nulled = record.clone();
    nulled.headers.push(("h".into(), None));
    assert_eq!(nulled.header("h"), None, "the last `h` is null");
    assert_eq!(Record::new().value_str(), None);
}

#[test]
fn errors_convert_and_display() {
    let from_std: Error = "x".parse::<u8>().unwrap_err().into();
    assert_eq!(from_std.kind(), ErrorKind::Transform);
    assert_eq!(from_std.to_string(), "invalid digit found in string");
    assert_eq!(Error::new("boom").message(), "boom");
}

/// The macros' expansion itself, exports and all (once per test binary: they are `no_mangle`).
mod generated {
    use crate::{Error, Output, Record};

    fn upper(record: &Record, out: &mut Output) -> Result<(), Error> {
        let text = record.value_str().ok_or_else(|| Error::new("not text"))?;
        out.emit_to("upper", record.clone().with_value(text.to_uppercase()))
    }

    transform!(upper);

    #[test]
    fn exports_behave_as_the_abi_says() {
        assert_eq!(fjord_abi_version(), 1);
        let outcome = crate::testing::TestHost::new()
            .outputs(["lower", "upper"])
            .run(fjord_on_batch, &[Record::new().with_value("abc").with_header("h", "x")]);
        assert!(outcome.is_ok());
        assert_eq!(outcome.emitted, vec![(1, Record::new().with_value("ABC").with_header("h", "x"))]);

        let ptr = fjord_alloc(16);
        assert!(!ptr.is_null());
        assert_eq!(fjord_on_batch(ptr, 16), crate::__private::BAD_BATCH);
    }
}
