"""The worker's Celery app: ``celery -A hermes_worker.app worker`` and ``hermes worker`` run it.

:func:`create_app` builds a worker app from settings: the Celery configuration, the chunk task,
the public task and Celery's result backend for it, and the
:class:`~hermes_worker.runtime.WorkerRuntime` that answers the worker's signals.
``hermes worker`` calls it with its own settings and the identity its probe decided. For
``celery -A hermes_worker.app``, this module's ``app`` is built from ``Settings.from_env()`` the
first time it is asked for (not when the module is imported, so importing :func:`create_app`
reads no environment). Producers build their own client app from the same
:func:`~hermes_worker.celeryconfig.make_celery` and never import this module.
"""

from __future__ import annotations

from celery import Celery

from .celeryconfig import make_celery, public_task_config
from .guard import drop_builtins
from .identity import Identity
from .runtime import WorkerRuntime
from .settings import Settings
from .tasks import register

__all__ = ["app", "create_app"]

app: Celery  # see __getattr__ below


def create_app(settings: Settings, identity: Identity | None = None) -> Celery:
    """A worker app configured from ``settings``.

    Args:
        settings: the worker's settings; nothing else is read.
        identity: the tag and probe outcome, when decided already; None: the worker probes
            when it initialises.
    """
    app = make_celery(settings, main="hermes_worker")
    app.conf.update(public_task_config(settings))
    runtime = WorkerRuntime(settings, identity)
    register(app, runtime)
    runtime.attach(app)
    # Celery's built-in tasks (celery.map, celery.group...) would run Hermes' task, or send others,
    # for anyone who can write to the broker: a Hermes worker has only its own.
    drop_builtins(app)
    return app


def __getattr__(name: str) -> Celery:
    # `celery -A hermes_worker.app` looks up `app` here: built once, from the environment, then.
    if name == "app":
        globals()["app"] = built = create_app(Settings.from_env())
        return built
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
