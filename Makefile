# Two commands do all set-up on a fresh machine:  `make demo`  and  `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(VENV)/bin/embedcache demo --out demo-output

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(VENV)/bin/ruff check embedcache probes tests benchmarks
	HF_HUB_OFFLINE=1 $(VENV)/bin/pytest -q

bench: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) benchmarks/extraction.py
	HF_HUB_OFFLINE=1 $(PY) benchmarks/store_io.py
