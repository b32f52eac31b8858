"""`hermes flower` runs this: Flower on Hermes' Celery configuration, read-only unless told otherwise.

Run as ``python -P -m hermes_producer.flower_main [flower options]``. The login arrives in the
environment (``HERMES_FLOWER_USER``, ``HERMES_FLOWER_PASSWORD``), never on the command line where
`ps` would show it, and is checked here, byte for byte: Flower's own ``FLOWER_BASIC_AUTH`` would
split a password at its commas (each piece a login of its own) and fail with a 500 on any
non-ASCII login. Nothing is read from the directory Flower starts in: no module (``-P``) and no
``flowerconfig.py`` (Flower's default configuration file is Python, run as it is read).

Read-only by default: a Flower login may look at everything Flower shows, and change nothing.
Every request is checked against the handler Flower routed it to (not its path, so no spelling
of a path gets around it), and only handlers that read, called with a method that reads, are
let through; anything else, from shutting workers down to sending tasks by hand (which is
writing to the broker), answers 403. ``hermes flower --allow-control`` (or
``HERMES_FLOWER_ALLOW_CONTROL=1``) restores Flower's full API; workers still refuse the
commands that would change them unless they run with ``HERMES_WORKER_REMOTE_CONTROL=all``.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hmac
import logging
import os
import sys
from typing import Any

import tornado.web
from flower.api import tasks as api_tasks
from flower.api import workers as api_workers
from flower.app import Flower
from flower.events import Events
from flower.views import BaseHandler, auth, broker, error, monitor
from flower.views import tasks as view_tasks
from flower.views import workers as view_workers

from hermes_worker.celeryconfig import make_celery
from hermes_worker.contract import QUEUE_CONTAINER, QUEUE_LOCAL
from hermes_worker.settings import Settings

from .terminal import printable

_active_queue_names = BaseHandler.get_active_queue_names


def _with_hermes_queues(handler: BaseHandler) -> list[str]:
    # Flower lists only the queues live workers consume; operators want both Hermes queues on
    # the broker tab, empty or not (a container queue with no consumer is exactly the problem
    # to see). Flower has no setting for this, hence the wrapper.
    return sorted(set(_active_queue_names(handler)) | {QUEUE_CONTAINER, QUEUE_LOCAL})


BaseHandler.get_active_queue_names = _with_hermes_queues

_READS = frozenset({"GET", "HEAD", "OPTIONS"})
# Every Flower handler that only reads, and the methods it reads with. An allow-list: a handler
# a newer Flower adds is refused until someone looks at it and adds it here.
READ_ONLY: dict[type, frozenset[str]] = {
    view_workers.WorkersView: _READS,
    view_workers.WorkerView: _READS,
    view_tasks.TaskView: _READS,
    view_tasks.TasksView: _READS,
    view_tasks.TasksDataTable: _READS | {"POST"},  # the tasks table asks for its rows with a POST
    broker.BrokerView: _READS,
    api_workers.ListWorkers: _READS,  # ?refresh=1 asks workers questions; they answer, nothing more
    api_tasks.ListTasks: _READS,
    api_tasks.ListTaskTypes: _READS,
    api_tasks.GetQueueLengths: _READS,
    api_tasks.TaskInfo: _READS,
    api_tasks.TaskResult: _READS,
    monitor.Metrics: _READS,
    monitor.Healthcheck: _READS,
    tornado.web.StaticFileHandler: _READS,
    auth.LoginHandler: _READS,
    auth.LogoutHandler: _READS,
    error.NotFoundErrorHandler: _READS | {"POST"},  # answers 404, whatever it is asked
}


def allowed(handler: type, method: str) -> bool:
    """Whether a read-only Flower serves ``method`` with ``handler``."""
    return method in READ_ONLY.get(handler, frozenset())


class Forbidden(BaseHandler):
    """Answers every request it gets with 403, after authentication (401 stays 401)."""

    def prepare(self) -> None:
        _ = self.current_user  # a wrong or missing login is a 401, as everywhere else
        raise tornado.web.HTTPError(
            403, "Flower is read-only: start it with hermes flower --allow-control to control workers"
        )

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        if status_code == 401:
            super().write_error(status_code, **kwargs)
            return
        exc = kwargs.get("exc_info", (None, None))[1]
        self.set_header("Content-Type", "text/plain; charset=UTF-8")
        self.finish(exc.log_message if isinstance(exc, tornado.web.HTTPError) else "Forbidden")


def login_matches(authorization: str, user: str, password: str) -> bool:
    """Whether an ``Authorization`` header carries exactly ``user:password`` (HTTP basic auth).

    Compared as bytes (UTF-8), so a login in any script works and no header can raise; the
    whole login, commas and colons included, is one credential.
    """
    scheme, _, token = authorization.partition(" ")
    try:
        given = base64.b64decode(token.strip(), validate=True)
    except (binascii.Error, ValueError):
        return False
    return scheme == "Basic" and hmac.compare_digest(given, f"{user}:{password}".encode())


def require_login(user: str, password: str) -> None:
    """Make every Flower started in this process require exactly this login (HTTP basic auth)."""
    flower_current_user, init = BaseHandler.get_current_user, Flower.__init__

    def current_user(self: BaseHandler) -> Any:
        if not login_matches(self.request.headers.get("Authorization", ""), user, password):
            raise tornado.web.HTTPError(401)
        options = self.application.options
        if not options.auth:
            return True
        # Flower's OAuth as well, when it is configured: its own check, without its basic auth.
        basic_auth, options.basic_auth = options.basic_auth, []
        try:
            return flower_current_user(self)
        finally:
            options.basic_auth = basic_auth

    def login_init(self: Flower, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        # Authentication is on, for every other check Flower makes (which only ask whether it is).
        self.options.basic_auth = [f"{user}:{password}"]

    BaseHandler.get_current_user = current_user
    Flower.__init__ = login_init


def read_only(allow_control: bool) -> None:
    """Make every Flower started in this process read-only, unless ``allow_control``."""
    if allow_control:
        return
    delegate, init = Flower.get_handler_delegate, Flower.__init__

    def guarded_delegate(self: Flower, request: Any, target_class: type, *args: Any, **kwargs: Any) -> Any:
        # Called for the handler the router chose, whatever path and method led there.
        if not allowed(target_class, request.method):
            return delegate(self, request, Forbidden)
        return delegate(self, request, target_class, *args, **kwargs)

    def read_only_init(self: Flower, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        self.options.read_only = True  # the dashboard hides the buttons it would refuse anyway

    Flower.get_handler_delegate = guarded_delegate
    Flower.__init__ = read_only_init


def events_at_once() -> None:
    """Make Flower ask workers for task events as it starts, not 5 s later (its first timer tick).

    Hermes workers send task events only once a monitor asks for them (HERMES_TASK_EVENTS):
    a batch started right after Flower must show up in it.
    """
    start = Events.start

    def start_and_enable(self: Events) -> None:
        start(self)
        if self.enable_events:
            self.io_loop.add_callback(self.on_enable_events)

    Events.start = start_and_enable


def printable_log() -> None:
    """Make every log record of this process printable: control characters shown, never obeyed.

    Flower's log quotes what requests and the broker say (a path, an unknown worker's name):
    a logged-in user could otherwise write terminal escapes into the operator's terminal or journal.
    Newlines stay; Tornado's formatter indents the lines after the first, so none poses as a record.
    """
    make_record = logging.getLogRecordFactory()

    def printable_record(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = make_record(*args, **kwargs)
        # A message that does not format stays as it is: logging reports it, as it always has.
        with contextlib.suppress(TypeError, ValueError):
            record.msg, record.args = printable(record.getMessage(), keep_newlines=True), None
        return record

    logging.setLogRecordFactory(printable_record)


settings = Settings.from_env()
if not getattr(Flower, "hermes_guarded", False):  # once, however many times this module is imported
    setattr(Flower, "hermes_guarded", True)  # noqa: B010 (an attribute of Flower's class, not ours)
    printable_log()
    events_at_once()
    read_only(settings.flower_allow_control)
    if settings.flower_user and settings.flower_password:
        require_login(settings.flower_user, settings.flower_password)
app = make_celery(settings, main="hermes_flower")

if __name__ == "__main__":
    from celery.bin.celery import main as celery_main

    # This very module's app (not imported again, from a path Celery puts the current directory
    # on); no configuration file unless the operator names one (later arguments win).
    sys.argv = ["celery", "-A", "__main__:app", "flower", f"--conf={os.devnull}", *sys.argv[1:]]
    celery_main()
