"""Heartbeat cost: time inside MLflowMetrics.on_epoch_end with and without the beat, and one beat's write.

    PYTHONPATH=. python benchmarks/heartbeat_cost.py sqlite:////tmp/hb/mlflow.db   # or http://127.0.0.1:5000
"""
import statistics, sys, time
import mlflow
from mlflow.tracking import MlflowClient
from src.training import callbacks
from src.tracking import liveness, runs

uri = sys.argv[1]
client = MlflowClient(uri)
exp = client.create_experiment(f"hb-{time.time()}")
run_id = client.create_run(exp).info.run_id
logs = {"loss": 0.5, "accuracy": 0.9, "val_loss": 0.4, "val_accuracy": 0.91}

def inside(beat_on, n=100):
    cb = callbacks.MLflowMetrics(run_id, client=client)
    original = liveness.beat
    if not beat_on:
        liveness.beat = None  # stand-in: replaced below by skipping the submit
    times = []
    for epoch in range(n):
        cb.on_epoch_begin(epoch)
        t = time.perf_counter()
        if beat_on:
            cb.on_epoch_end(epoch, logs)
        else:  # the same callback body without the beat's submit
            values = callbacks.numeric_logs(logs)
            cb._pending.append(runs.send_later(client.log_batch, run_id,
                [mlflow.entities.Metric(k, v, 0, epoch + 1) for k, v in values.items()]))
        times.append(time.perf_counter() - t)
        runs.wait_for_metrics()  # an epoch is far longer than the sends: they never pile up
    liveness.beat = original
    cb.on_train_end()
    return statistics.median(times) * 1e6

with_beat = inside(True)
run_id = client.create_run(exp).info.run_id
without = inside(False)
writes = []
for _ in range(50):
    t = time.perf_counter(); liveness.beat(client, run_id); writes.append(time.perf_counter() - t)
print(f"{uri.split(':')[0]}: on_epoch_end median {with_beat:.0f} us with the beat, {without:.0f} us without; "
      f"one beat (set_tag, on the sender thread) median {statistics.median(writes)*1e3:.1f} ms")
