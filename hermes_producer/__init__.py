"""The Hermes producer: the `hermes` command line, the batch pipeline, and Hermes from Python.

>>> from hermes_producer import normalize
>>> normalize("ﬁrst   line", profile="compact").text
'first line'

:class:`Client` sends many prompts (``map``, ``batch``) where ``hermes batch`` would.
"""

from .api import Cleaned, Client, normalize

__all__ = ["Cleaned", "Client", "normalize"]
