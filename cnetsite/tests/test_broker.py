"""The embedded broker delivers whole messages while producers and consumers race."""

import threading

import pytest
from django.conf import settings
from kombu import Queue

from cnetsite.celery import app


@pytest.mark.skipif(not settings.CELERY_BROKER_URL.startswith("filesystem://"), reason="embedded broker only")
def test_filesystem_broker_never_hands_out_a_partial_message():
    count = 400
    received, errors = [], []
    queue_name = "race-test"

    def consume():
        with app.connection_for_read() as conn:
            queue = conn.SimpleQueue(queue_name)
            try:
                while len(received) < count:
                    try:
                        message = queue.get(timeout=30)
                    except queue.Empty:
                        errors.append(f"timed out after {len(received)} messages")
                        return
                    received.append(message.payload["n"])
                    message.ack()
            except Exception as error:  # a half-written file shows up here as a JSON error
                errors.append(repr(error))
            finally:
                queue.close()

    consumer = threading.Thread(target=consume)
    consumer.start()
    with app.connection_for_write() as conn:
        # A bare producer: a SimpleQueue here would also consume, taking messages from the reader.
        producer = conn.Producer(serializer="json")
        for n in range(count):
            producer.publish({"n": n, "padding": "x" * 4096}, routing_key=queue_name,
                             declare=[Queue(queue_name)])
    consumer.join(timeout=60)
    assert errors == []
    assert sorted(received) == list(range(count))
