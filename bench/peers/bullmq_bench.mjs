// BullMQ peer of the taskfleet benchmark. Run from a directory where `bullmq` and `ioredis`
// are installed:
//   node bullmq_bench.mjs DRAIN_JOBS CONCURRENCY LATENCY_JOBS LATENCY_PER_SECOND ADD_BULK_SECONDS
// Prints one JSON line: the drain rate (first to last completion of a pre-filled queue), the
// pickup latency of jobs added at a steady rate to a running worker (add call to start), and
// the batch enqueue rate (`addBulk` of 1,000 jobs, 8 calls in flight, no worker).
import { Queue, Worker } from 'bullmq';
import IORedis from 'ioredis';
import { performance } from 'node:perf_hooks';

const [drainJobs, concurrency, latencyJobs, perSecond, addBulkSeconds] =
  process.argv.slice(2).map(Number);
const connection = new IORedis(process.env.BENCH_REDIS, { maxRetriesPerRequest: null });
const name = `tfbench-${process.pid}-${Date.now()}`;

async function drain() {
  const queue = new Queue(`${name}-drain`, { connection });
  for (let at = 0; at < drainJobs; at += 1000) {
    const size = Math.min(1000, drainJobs - at);
    await queue.addBulk(Array.from({ length: size }, () => ({ name: 'noop', data: {} })));
  }
  let done = 0;
  let first = 0;
  let last = 0;
  const finished = new Promise((resolve) => {
    const worker = new Worker(`${name}-drain`, async () => {}, { connection, concurrency });
    worker.on('completed', () => {
      const now = performance.now();
      if (done === 0) first = now;
      done += 1;
      last = now;
      if (done === drainJobs) resolve(worker);
    });
  });
  const worker = await finished;
  await worker.close();
  await queue.obliterate({ force: true });
  await queue.close();
  return (drainJobs - 1) / ((last - first) / 1000);
}

async function latency() {
  const queue = new Queue(`${name}-latency`, { connection });
  const added = new Map();
  const millis = [];
  let resolveAll;
  const all = new Promise((resolve) => { resolveAll = resolve; });
  const worker = new Worker(`${name}-latency`, async (job) => {
    millis.push(performance.now() - added.get(job.data.n));
    if (millis.length === latencyJobs) resolveAll();
  }, { connection, concurrency });
  await worker.waitUntilReady();
  const began = performance.now();
  for (let n = 0; n < latencyJobs; n += 1) {
    const due = began + (n * 1000) / perSecond;
    const wait = due - performance.now();
    if (wait > 0) await new Promise((resolve) => setTimeout(resolve, wait));
    added.set(n, performance.now());
    queue.add('noop', { n });
  }
  await all;
  await worker.close();
  await queue.obliterate({ force: true });
  await queue.close();
  millis.sort((a, b) => a - b);
  const at = (q) => millis[Math.round((millis.length - 1) * q)];
  return { p50: at(0.5), p99: at(0.99), max: millis[millis.length - 1] };
}

// The peer of taskfleet's `POST /v1/jobs/batch` of 1,000 from 8 connections: 8 callers, each
// with a connection of its own, call `addBulk` with 1,000 no-op jobs again and again until
// `addBulkSeconds` have passed; the jobs of every answered call count, over the window (as
// taskfleet's client counts the jobs of the requests answered 201). The queue is emptied after.
async function addBulk() {
  const queueName = `${name}-add-bulk`;
  const connections = Array.from({ length: 8 }, () =>
    new IORedis(process.env.BENCH_REDIS, { maxRetriesPerRequest: null }));
  const queues = connections.map((c) => new Queue(queueName, { connection: c }));
  await Promise.all(queues.map((queue) => queue.waitUntilReady()));
  const jobs = Array.from({ length: 1000 }, () => ({ name: 'noop', data: {} }));
  const deadline = performance.now() + addBulkSeconds * 1000;
  const added = await Promise.all(queues.map(async (queue) => {
    let n = 0;
    while (performance.now() < deadline) {
      await queue.addBulk(jobs);
      n += jobs.length;
    }
    return n;
  }));
  await queues[0].obliterate({ force: true });
  await Promise.all(queues.map((queue) => queue.close()));
  await Promise.all(connections.map((c) => c.quit()));
  return added.reduce((a, b) => a + b, 0) / addBulkSeconds;
}

const result = {
  drain_per_second: await drain(),
  latency: await latency(),
  add_bulk_per_second: await addBulk(),
};
console.log(JSON.stringify(result));
await connection.quit();
