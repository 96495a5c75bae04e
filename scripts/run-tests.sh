#!/bin/sh
# Run the whole suite; pytest's exit 5 ("no tests collected") is a failure here.
cd "$(dirname "$0")/.." || exit 1
.venv/bin/python -m pytest -q -p no:cacheprovider tests "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "run-tests: pytest collected no tests — failing" >&2
  exit 1
fi
exit $rc
