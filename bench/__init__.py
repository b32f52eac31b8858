"""The Hermes benchmark suite: ``python -m bench [--quick] --out DIR`` (see bench/README.md).

Also runnable on their own: ``python -m bench.corpus`` (build the corpus), ``python -m
bench.session_vs_run`` and ``python -m bench.e2e_local`` (the older single-purpose benches).
"""
