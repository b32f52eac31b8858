"""Repository-level pytest configuration.

Doctests are collected from the packages, but not from the modules that build and configure a
live Celery worker when imported: tests start real workers as subprocesses instead.
"""

import sys

# pytest caches the test modules it rewrites (assertions) in __pycache__ unless bytecode writing
# is off; an environment with PYTHONDONTWRITEBYTECODE=1 made every test process rewrite all of
# them again (4.5 s instead of 1.6 s of each process's collection). The cache is git-ignored.
sys.dont_write_bytecode = False

collect_ignore = [
    "hermes_worker/app.py",
    "hermes_worker/tasks.py",
    "hermes_worker/worker.py",
    "hermes_producer/flower_main.py",
]
