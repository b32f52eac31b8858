"""`hermes flower` runs this: Flower on Hermes' Celery configuration.

Run as ``python -m hermes_producer.flower_main [flower options]``. Credentials arrive in
Flower's own environment variables (``FLOWER_BASIC_AUTH``), never on the command line where
`ps` would show them.
"""

from __future__ import annotations

import sys

from flower.views import BaseHandler

from hermes_worker.celeryconfig import make_celery
from hermes_worker.contract import QUEUE_CONTAINER, QUEUE_LOCAL
from hermes_worker.settings import Settings

_active_queue_names = BaseHandler.get_active_queue_names


def _with_hermes_queues(handler: BaseHandler) -> list[str]:
    # Flower lists only the queues live workers consume; operators want both Hermes queues on
    # the broker tab, empty or not (a container queue with no consumer is exactly the problem
    # to see). Flower has no setting for this, hence the wrapper.
    return sorted(set(_active_queue_names(handler)) | {QUEUE_CONTAINER, QUEUE_LOCAL})


BaseHandler.get_active_queue_names = _with_hermes_queues

app = make_celery(Settings.from_env(), main="hermes_flower")

if __name__ == "__main__":
    from celery.bin.celery import main as celery_main

    sys.argv = ["celery", "-A", "hermes_producer.flower_main:app", "flower", *sys.argv[1:]]
    celery_main()
