// kafkajs against Fjord: admin, produce under every codec, consume back
// exactly through a consumer group, offsets, configs, partitions, delete
// records. Writes what it produced as JSON lines to argv[3] so the harness
// also reads it back with another client.

const fs = require('fs');
const { Kafka, CompressionTypes, CompressionCodecs, logLevel, ConfigResourceTypes } = require('kafkajs');
const SnappyCodec = require('kafkajs-snappy');
const lz4 = require('lz4js');
const { ZstdCodec } = require('zstd-codec');

const [bootstrap, outFile] = process.argv.slice(2);

// Pure-JS codecs: the native ones need a compiler toolchain and downloads.
CompressionCodecs[CompressionTypes.Snappy] = SnappyCodec;
CompressionCodecs[CompressionTypes.LZ4] = () => ({
  async compress(encoder) { return Buffer.from(lz4.compress(encoder.buffer)); },
  async decompress(buffer) { return Buffer.from(lz4.decompress(buffer)); },
});
const zstd = new Promise((resolve) => ZstdCodec.run((z) => resolve(new z.Simple())));
CompressionCodecs[CompressionTypes.ZSTD] = () => ({
  async compress(encoder) { return Buffer.from((await zstd).compress(encoder.buffer)); },
  async decompress(buffer) { return Buffer.from((await zstd).decompress(buffer)); },
});

function check(cond, what) {
  if (!cond) { console.error(`CHECK FAILED: ${what}`); process.exit(1); }
}
function eq(what, got, want) {
  const g = JSON.stringify(got), w = JSON.stringify(want);
  if (g !== w) { console.error(`MISMATCH in ${what}:\n  got:  ${g}\n  want: ${w}`); process.exit(1); }
}

async function main() {
  const kafka = new Kafka({ clientId: 'fjord-compat', brokers: [bootstrap], logLevel: logLevel.WARN, retry: { retries: 3 } });
  const admin = kafka.admin();
  await admin.connect();
  const topic = `kafkajs-${Date.now()}-${Math.floor(Math.random() * 1e6)}`;
  eq('create', await admin.createTopics({ topics: [{ topic, numPartitions: 3, replicationFactor: 1 }], waitForLeaders: true }), true);
  eq('create again', await admin.createTopics({ topics: [{ topic, numPartitions: 3 }] }), false);

  const producer = kafka.producer({ allowAutoTopicCreation: false });
  await producer.connect();
  const codecs = { none: CompressionTypes.None, gzip: CompressionTypes.GZIP, snappy: CompressionTypes.Snappy, lz4: CompressionTypes.LZ4, zstd: CompressionTypes.ZSTD };
  const produced = [];
  const counts = [0, 0, 0];
  const before = Date.now();
  for (const [name, type] of Object.entries(codecs)) {
    const messages = [];
    for (let i = 0; i < 60; i++) {
      const partition = i % 3;
      const key = `${name}-key-${i}`;
      const value = `${name}-value-${i}-`.repeat(1 + (i % 9));
      messages.push({ partition, key, value, headers: { codec: name, index: String(i) } });
      produced.push({ partition, offset: counts[partition]++, key, value, headers: { codec: name, index: String(i) } });
    }
    const res = await producer.send({ topic, compression: type, acks: -1, messages });
    check(res.every((r) => r.errorCode === 0), `produce ${name}: ${JSON.stringify(res)}`);
  }
  await producer.disconnect();
  fs.writeFileSync(outFile, produced.map((r) => JSON.stringify(r)).join('\n') + '\n');

  // Consume everything back through a consumer group, exactly.
  const groupId = `group-${topic}`;
  const consumer = kafka.consumer({ groupId, sessionTimeout: 10000, heartbeatInterval: 500 });
  await consumer.connect();
  await consumer.subscribe({ topic, fromBeginning: true });
  const consumed = [];
  await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`consumed only ${consumed.length}`)), 60000);
    consumer.run({
      eachMessage: async ({ partition, message }) => {
        const headers = {};
        for (const [k, v] of Object.entries(message.headers || {})) headers[k] = v.toString();
        consumed.push({ partition, offset: Number(message.offset), key: message.key.toString(), value: message.value.toString(), headers });
        if (consumed.length === produced.length) { clearTimeout(timer); resolve(); }
      },
    }).catch(reject);
  });
  await consumer.disconnect();
  const sortKey = (r) => r.partition * 1e6 + r.offset;
  eq('consumed records', consumed.sort((a, b) => sortKey(a) - sortKey(b)), [...produced].sort((a, b) => sortKey(a) - sortKey(b)));
  const committed = (await admin.fetchOffsets({ groupId, topics: [topic] }))[0].partitions.sort((a, b) => a.partition - b.partition);
  eq('committed offsets', committed.map((p) => Number(p.offset)), counts);
  const groups = (await admin.listGroups()).groups.map((g) => g.groupId);
  check(groups.includes(groupId), 'group is listed');
  const described = (await admin.describeGroups([groupId])).groups[0];
  eq('group state after the consumer left', [described.state, described.members.length], ['Empty', 0]);
  await admin.deleteGroups([groupId]);
  check(!(await admin.listGroups()).groups.some((g) => g.groupId === groupId), 'deleted group is gone');

  const offsets = (await admin.fetchTopicOffsets(topic)).sort((a, b) => a.partition - b.partition);
  eq('high offsets', offsets.map((o) => Number(o.high)), counts);
  eq('low offsets', offsets.map((o) => Number(o.low)), [0, 0, 0]);
  const byTime = (await admin.fetchTopicOffsetsByTimestamp(topic, before - 60000)).sort((a, b) => a.partition - b.partition);
  eq('offsets by old timestamp', byTime.map((o) => Number(o.offset)), [0, 0, 0]);

  const describedCfg = await admin.describeConfigs({ resources: [{ type: ConfigResourceTypes.TOPIC, name: topic, configNames: ['retention.ms'] }] });
  eq('retention.ms default', describedCfg.resources[0].configEntries.map((e) => [e.configName, e.configValue]), [['retention.ms', '604800000']]);
  await admin.alterConfigs({ resources: [{ type: ConfigResourceTypes.TOPIC, name: topic, configEntries: [{ name: 'retention.ms', value: '86400000' }] }] });
  const altered = await admin.describeConfigs({ resources: [{ type: ConfigResourceTypes.TOPIC, name: topic, configNames: ['retention.ms'] }] });
  eq('retention.ms altered', altered.resources[0].configEntries[0].configValue, '86400000');
  let rejected = false;
  try {
    await admin.alterConfigs({ resources: [{ type: ConfigResourceTypes.TOPIC, name: topic, configEntries: [{ name: 'no.such.config', value: '1' }] }] });
  } catch (e) { rejected = e.type === 'INVALID_CONFIG' || /INVALID_CONFIG|config/i.test(String(e.message)); }
  check(rejected, 'unknown config rejected');

  await admin.createPartitions({ topicPartitions: [{ topic, count: 4 }] });
  const meta = await admin.fetchTopicMetadata({ topics: [topic] });
  eq('partitions after grow', meta.topics[0].partitions.length, 4);

  await admin.deleteTopicRecords({ topic, partitions: [{ partition: 1, offset: '3' }] });
  const after = (await admin.fetchTopicOffsets(topic)).find((o) => o.partition === 1);
  eq('low offset after delete records', Number(after.low), 3);

  // Delete a scratch topic; the main one stays for the harness to read back.
  const scratch = `${topic}-scratch`;
  await admin.createTopics({ topics: [{ topic: scratch, numPartitions: 1 }], waitForLeaders: true });
  check((await admin.listTopics()).includes(scratch), 'scratch topic listed');
  await admin.deleteTopics({ topics: [scratch] });
  check(!(await admin.listTopics()).includes(scratch), 'deleted topic is gone');
  // Leave the topic for the harness to read back, then it deletes it.
  await admin.disconnect();
  console.log(`kafkajs suite passed: ${topic}`);
}

main().catch((e) => { console.error(e); process.exit(1); });
