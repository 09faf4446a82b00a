// One kafkajs group member in its own process: records consumed keys and
// its assignment in files; SIGTERM disconnects it (leaving the group).
const fs = require('fs');
const { Kafka, logLevel } = require('kafkajs');

const [bootstrap, topic, group, out] = process.argv.slice(2);
const publish = (parts) => {
  fs.writeFileSync(`${out}.assign.tmp`, parts.slice().sort((a, b) => a - b).join(' '));
  fs.renameSync(`${out}.assign.tmp`, `${out}.assign`);
};

(async () => {
  const kafka = new Kafka({ clientId: 'member', brokers: [bootstrap], logLevel: logLevel.NOTHING });
  const consumer = kafka.consumer({ groupId: group, sessionTimeout: 6000, heartbeatInterval: 300, rebalanceTimeout: 10000 });
  consumer.on(consumer.events.GROUP_JOIN, (e) => publish(e.payload.memberAssignment[topic] || []));
  process.on('SIGTERM', async () => {
    await consumer.disconnect();
    process.exit(0);
  });
  await consumer.connect();
  await consumer.subscribe({ topic, fromBeginning: true });
  await consumer.run({
    autoCommit: false,
    eachMessage: async ({ partition, message }) => {
      fs.appendFileSync(out, `${message.key.toString()}\n`);
      const next = (BigInt(message.offset) + 1n).toString();
      await consumer.commitOffsets([{ topic, partition, offset: next }]).catch(() => {});
    },
  });
})().catch((e) => {
  console.error(e);
  process.exit(1);
});
