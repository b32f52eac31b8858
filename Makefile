# Shortcuts for people who have make; the scripts in ops/ work without it.
.PHONY: demo test lint api-docs
demo:
	bash ops/demo.sh
test:
	bash ops/test.sh
lint:
	.venv/bin/ruff check hermes_worker hermes_producer tests && .venv/bin/mypy
# The API reference, from the docstrings (pdoc), into docs/api/ (not committed: CI keeps a copy in artifacts/api/).
api-docs:
	bash ops/api-docs.sh docs/api

# The benchmark suite: a full run (10-20 minutes) with reports in bench/out/report.md and
# report.json; `bash bench/run.sh --quick --out DIR` is the 3-minute one.
.PHONY: bench
bench:
	bash bench/run.sh --out bench/out
