"""A ClientApp that does no work and returns the same payload as ours: the floor of what a
Flower simulation costs per client update, for ``fedmmrec bench``.

It sends back the arrays it received and metrics with the same keys, so the server does the
same validation, aggregation and bookkeeping as in a real run.
"""

from __future__ import annotations

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from shared.messages import (
    PrivacyRecord,
    TrainMetrics,
    train_reply,
    untrained_reply,
    update_of,
)

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    arrays = update_of(msg)
    metrics = TrainMetrics(
        num_examples=30, train_loss=0.0, epsilon=0.0, steps=0, sample_rate=0.25,
        bytes_sent=sum(int(a.numpy().nbytes) for a in arrays.values()),
    )
    privacy = PrivacyRecord(client_id=str(context.node_id), clip_norm=1.0, batch_size=8, accountant="rdp", delta=1e-5)
    return train_reply(msg, arrays, metrics, privacy.record())


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    return untrained_reply(msg)
