"""Hermes worker side: the normalization engine, the task contract, the Celery worker and its sandbox.

The engine (:mod:`hermes_worker.engine`) imports only the standard library and ftfy, so the
same code runs in-process, in a Celery worker and inside the sandbox container.
"""

__version__ = "0.1.0"
