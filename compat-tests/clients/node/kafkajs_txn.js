// kafkajs transactions against Fjord: commit and abort (read_committed
// consumers see only committed records, read_uncommitted see all), offsets
// sent to a transaction apply only when it commits, and a second producer
// with the same transactionalId fences the first.

const { Kafka, logLevel } = require('kafkajs');

const [bootstrap] = process.argv.slice(2);

function check(cond, what) {
  if (!cond) { console.error(`CHECK FAILED: ${what}`); process.exit(1); }
}
function eq(what, got, want) {
  const g = JSON.stringify(got), w = JSON.stringify(want);
  if (g !== w) { console.error(`MISMATCH in ${what}:\n  got:  ${g}\n  want: ${w}`); process.exit(1); }
}

const kafka = new Kafka({ clientId: 'fjord-txn', brokers: bootstrap.split(','), logLevel: logLevel.NOTHING, retry: { retries: 3 } });
const suffix = `${Date.now()}-${Math.floor(Math.random() * 1e6)}`;

function txnProducer(id) {
  return kafka.producer({ transactionalId: id, maxInFlightRequests: 1, idempotent: true });
}

// Reads the single-partition topic until `last` arrives; returns every value.
async function readUntil(topic, last, readUncommitted) {
  const consumer = kafka.consumer({ groupId: `read-${topic}-${readUncommitted}`, readUncommitted });
  await consumer.connect();
  await consumer.subscribe({ topic, fromBeginning: true });
  const seen = [];
  await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no ${last} in ${topic}: saw ${seen}`)), 60000);
    consumer.run({
      eachMessage: async ({ message }) => {
        seen.push(message.value.toString());
        if (message.value.toString() === last) { clearTimeout(timer); resolve(); }
      },
    }).catch(reject);
  });
  await consumer.disconnect();
  return seen;
}

async function main() {
  const admin = kafka.admin();
  await admin.connect();
  const topic = `kafkajs-txn-${suffix}`;
  await admin.createTopics({ topics: [{ topic, numPartitions: 1 }], waitForLeaders: true });

  const producer = txnProducer(`kjs-${suffix}`);
  await producer.connect();
  const values = (tag, n) => Array.from({ length: n }, (_, i) => ({ value: `${tag}-${i}` }));
  const group = `kjs-offsets-${suffix}`;

  let txn = await producer.transaction();
  await txn.send({ topic, messages: values('commit1', 5) });
  await txn.sendOffsets({ consumerGroupId: group, topics: [{ topic, partitions: [{ partition: 0, offset: '3' }] }] });
  await txn.commit();

  txn = await producer.transaction();
  await txn.send({ topic, messages: values('abort', 4) });
  await txn.sendOffsets({ consumerGroupId: group, topics: [{ topic, partitions: [{ partition: 0, offset: '7' }] }] });
  await txn.abort();

  txn = await producer.transaction();
  await txn.send({ topic, messages: [...values('commit2', 3), { value: 'last' }] });
  await txn.commit();

  const offsets = await admin.fetchOffsets({ groupId: group, topics: [topic] });
  eq('offsets of the committed transaction only', offsets[0].partitions.map((p) => p.offset), ['3']);

  const committed = [...values('commit1', 5), ...values('commit2', 3), { value: 'last' }].map((m) => m.value);
  eq('read_committed', await readUntil(topic, 'last', false), committed);
  const all = [...values('commit1', 5), ...values('abort', 4), ...values('commit2', 3), { value: 'last' }].map((m) => m.value);
  eq('read_uncommitted', await readUntil(topic, 'last', true), all);

  // Zombie fencing: the successor's first transaction fences the zombie.
  const fenceTopic = `kafkajs-fence-${suffix}`;
  await admin.createTopics({ topics: [{ topic: fenceTopic, numPartitions: 1 }], waitForLeaders: true });
  const zombie = txnProducer(`kjs-fence-${suffix}`);
  await zombie.connect();
  const zt = await zombie.transaction();
  await zt.send({ topic: fenceTopic, messages: values('zombie', 3) });
  const successor = txnProducer(`kjs-fence-${suffix}`);
  await successor.connect();
  const st = await successor.transaction();
  await st.send({ topic: fenceTopic, messages: [...values('successor', 2), { value: 'last' }] });
  await st.commit();
  let fenced = null;
  try {
    await zt.commit();
  } catch (e) {
    fenced = e;
  }
  check(fenced !== null, 'the zombie cannot commit');
  check(['INVALID_PRODUCER_EPOCH', 'PRODUCER_FENCED'].includes(fenced.type), `zombie error: ${fenced.type} ${fenced.message}`);
  eq('fenced read_committed', await readUntil(fenceTopic, 'last', false), ['successor-0', 'successor-1', 'last']);

  await producer.disconnect();
  await zombie.disconnect().catch(() => {});
  await successor.disconnect();
  await admin.disconnect();
  console.log('kafkajs transactions passed');
}

main().catch((e) => { console.error(e); process.exit(1); });
