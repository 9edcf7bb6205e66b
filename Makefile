# The two commands a newcomer needs (each sets the machine up first):
#   make demo   a full migration against a local sandbox of real servers (ARGS=--yes approves by itself)
#   make test   every test
.PHONY: setup demo test lint
setup:
	bash scripts/setup.sh

demo: setup
	.venv/bin/python -m sandbox.demo $(ARGS)

test: setup
	.venv/bin/python -m pytest -q -p no:cacheprovider

lint: setup
	.venv/bin/ruff check . && .venv/bin/ruff format --check . && .venv/bin/mypy
