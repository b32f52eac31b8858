"""Peers: the same function on plain Celery, RQ and Dramatiq, 2 worker processes each.

``work`` holds the function (the ``compact`` profile of the Hermes engine, nothing else);
``celery_app``, ``dramatiq_app`` wire it into each framework (imported by their workers);
``runner`` starts the workers, sends the prompts and collects the results.
"""
