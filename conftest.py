"""Repository-level pytest configuration.

Doctests are collected from the packages, but not from the modules that build and configure a
live Celery worker when imported: tests start real workers as subprocesses instead.
"""

collect_ignore = [
    "hermes_worker/app.py",
    "hermes_worker/tasks.py",
    "hermes_worker/worker.py",
    "hermes_producer/flower_main.py",
]
