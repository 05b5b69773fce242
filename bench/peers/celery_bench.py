"""Celery 5 peer of the taskfleet benchmark: a no-op task that counts its runs in Redis.

    python celery_bench.py enqueue N        # queue N tasks
    celery -A celery_bench worker -Q ...    # run them (the benchmark starts this)

Settings come from the environment: BENCH_BROKER (a Redis URL), BENCH_QUEUE, BENCH_COUNTER.
"""

import os
import sys

import redis
from celery import Celery

app = Celery("celery_bench", broker=os.environ["BENCH_BROKER"])
app.conf.update(
    task_default_queue=os.environ["BENCH_QUEUE"],
    task_ignore_result=True,
    worker_send_task_events=False,
    broker_connection_retry_on_startup=True,
)
counter = redis.Redis.from_url(os.environ["BENCH_BROKER"])


@app.task
def noop():
    counter.incr(os.environ["BENCH_COUNTER"])


if __name__ == "__main__" and sys.argv[1:2] == ["enqueue"]:
    with app.producer_or_acquire() as producer:
        for _ in range(int(sys.argv[2])):
            noop.apply_async(producer=producer)
