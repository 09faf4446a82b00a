// Reads one partition of a topic from offset 0 with kafkajs and compares every value, in
// order, to the lines of an expected file (tiered storage: the first segments are only in the
// bucket). Usage: node kafkajs_read_all.js BOOTSTRAP TOPIC EXPECTED_FILE read_committed|read_uncommitted
const fs = require("fs");
const { Kafka, logLevel } = require("kafkajs");

async function main() {
  const [bootstrap, topic, expectedFile, isolation] = process.argv.slice(2);
  const want = fs.readFileSync(expectedFile, "utf8").split("\n").filter((l) => l.length > 0);
  const kafka = new Kafka({ clientId: "fjord-tiered", brokers: bootstrap.split(","), logLevel: logLevel.WARN });
  const consumer = kafka.consumer({
    groupId: `tiered-kafkajs-${isolation}-${Date.now()}`,
    readUncommitted: isolation === "read_uncommitted",
    maxWaitTimeInMs: 500,
  });
  await consumer.connect();
  await consumer.subscribe({ topic, fromBeginning: true });
  const got = [];
  let resolve;
  const done = new Promise((r) => (resolve = r));
  const timer = setTimeout(() => resolve(), 120000);
  await consumer.run({
    eachMessage: async ({ partition, message }) => {
      if (partition !== 0) throw new Error(`unexpected partition ${partition}`);
      if (got.length === 0 && message.offset !== "0") {
        throw new Error(`first record at offset ${message.offset}, not 0`);
      }
      got.push(message.value.toString());
      if (got.length >= want.length) resolve();
    },
  });
  await done;
  clearTimeout(timer);
  await consumer.disconnect();
  for (let i = 0; i < Math.max(got.length, want.length); i++) {
    if (got[i] !== want[i]) {
      console.error(`MISMATCH at value ${i} of ${want.length} (read ${got.length}): got ${got[i]} want ${want[i]}`);
      process.exit(1);
    }
  }
  console.log(`kafkajs ${isolation}: read ${got.length} values from offset 0`);
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
