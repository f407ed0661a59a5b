#!/bin/sh
# The example's service: prints a greeting; --self-test checks that it does.
greeting="hello from the CI example"
if [ "${1:-}" = "--self-test" ]; then
    [ "$("$0")" = "$greeting" ] || { echo "self-test failed" >&2; exit 1; }
    echo "self-test passed"
    exit 0
fi
echo "$greeting"
