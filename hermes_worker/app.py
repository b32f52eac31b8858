"""The worker's Celery app: ``celery -A hermes_worker.app worker`` and ``hermes worker`` run it.

Settings are read once, here, when a worker starts; producers build their own client app from
the same :func:`~hermes_worker.celeryconfig.make_celery` and never import this module.
"""

from __future__ import annotations

from .celeryconfig import make_celery
from .settings import Settings

settings = Settings.from_env()
app = make_celery(settings, main="hermes_worker")

# Registered for their side effects: the task, and the worker's signal handlers.
from . import tasks, worker  # noqa: E402, F401
from .guard import drop_builtins  # noqa: E402

# Celery's built-in tasks (celery.map, celery.group...) would run Hermes' task, or send others,
# for anyone who can write to the broker: a Hermes worker has only its own.
drop_builtins(app)
