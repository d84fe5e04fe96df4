"""A ClientApp that does no work and returns the same payload as ours: the floor of what a
Flower simulation costs per client update, for ``fedmmrec bench``.

It sends back the arrays it received and metrics with the same keys, so the server does the
same validation, aggregation and bookkeeping as in a real run.
"""

from __future__ import annotations

from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    arrays = msg.content["arrays"]
    metrics = MetricRecord(
        {
            "num-examples": 30,
            "train-loss": 0.0,
            "epsilon": 0.0,
            "steps": 0,
            "sample-rate": 0.25,
            "bytes-sent": sum(int(a.numpy().nbytes) for a in arrays.values()),
            "declined": 0,
        }
    )
    privacy = ConfigRecord({"client-id": str(context.node_id), "history": "[]", "noise-multiplier": 0.0, "clip-norm": 1.0,
                            "batch-size": 8, "poisson": False, "accountant": "rdp", "delta": 1e-5})
    return Message(RecordDict({"arrays": arrays, "metrics": metrics, "privacy": privacy}), reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    return Message(RecordDict({"metrics": MetricRecord({"num-examples": 1, "trained": 0})}), reply_to=msg)
