// A partition reassignment through kafkajs's admin client: alterPartitionReassignments for one
// partition, then listPartitionReassignments until that partition is no longer listed (the
// reassignment completed), printing each listing as `listed P replicas=.. adding=.. removing=..`
// and `done` at the end.
//
//     node kafkajs_reassign.js BOOTSTRAP TOPIC PARTITION R1,R2,..
const { Kafka, logLevel } = require('kafkajs')

async function main() {
  const [bootstrap, topic, partition, replicas] = process.argv.slice(2)
  const kafka = new Kafka({ brokers: bootstrap.split(','), logLevel: logLevel.NOTHING })
  const admin = kafka.admin()
  await admin.connect()
  const p = Number(partition)
  await admin.alterPartitionReassignments({
    topics: [{ topic, partitionAssignment: [{ partition: p, replicas: replicas.split(',').map(Number) }] }],
  })
  const deadline = Date.now() + 60000
  for (;;) {
    const listed = await admin.listPartitionReassignments({ topics: [{ topic, partitions: [p] }] })
    const mine = (listed.topics.find(t => t.name === topic) || { partitions: [] }).partitions
      .find(x => x.partition === p)
    if (!mine) break
    console.log(`listed ${p} replicas=${mine.replicas} adding=${mine.addingReplicas} removing=${mine.removingReplicas}`)
    if (Date.now() > deadline) throw new Error('the reassignment did not complete within 60 s')
    await new Promise(resolve => setTimeout(resolve, 100))
  }
  console.log('done')
  await admin.disconnect()
}

main().catch(e => {
  console.error(e)
  process.exit(1)
})
