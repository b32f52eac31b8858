#!/usr/bin/env bash
# Install Hermes into .venv and run the main job on the embedded default (no broker needed):
# normalize the example prompts into cleaned.jsonl.
source "$(dirname "${BASH_SOURCE[0]}")/bootstrap.sh"
ensure_venv ""
cd "$HERMES_ROOT"
say "hermes batch examples/prompts.jsonl -o cleaned.jsonl"
set +e
"$VENV/bin/hermes" batch examples/prompts.jsonl -o cleaned.jsonl "$@"
status=$?
set -e
say "done (exit $status): $(wc -l < cleaned.jsonl) records in cleaned.jsonl; try: $VENV/bin/hermes run --prompt 'cafÃ©' --json"
exit "$status"
