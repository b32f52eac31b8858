# Shortcuts for people who have make; the scripts in ops/ work without it.
.PHONY: demo test lint
demo:
	bash ops/demo.sh
test:
	bash ops/test.sh
lint:
	.venv/bin/ruff check hermes_worker hermes_producer tests && .venv/bin/mypy
