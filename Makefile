# The two commands a new user needs; each runs the (idempotent) set-up first.
#   make demo   score the bundled example radiographs with the bundled weights
#   make test   run the test suite (CPU; GPU / slow tests are skipped unless asked for)
PY := .venv/bin/python

.PHONY: setup demo test test-all lint bench

setup:
	@bash scripts/setup.sh

demo: setup
	@$(PY) -m precise_baa.cli demo

test:
	@bash scripts/setup.sh --browser --pacs
	@$(PY) -m pytest

test-all:
	@bash scripts/setup.sh --browser --pacs
	@$(PY) -m pytest -m "" 

lint: setup
	@$(PY) -m ruff check precise_baa tests benchmarks

bench: setup
	@$(PY) benchmarks/bench_pipeline.py
