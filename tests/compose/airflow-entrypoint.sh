#!/bin/bash
# TEST-ONLY stand-in for the official image's /entrypoint: runs `airflow ARGS`, or the shell or
# Python asked for (the official one does the same for bash/python).
set -e
case "${1:-}" in
  bash|sh|python|python3) exec "$@" ;;
  airflow) shift ;;
esac
exec airflow "$@"
