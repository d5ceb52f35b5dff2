# Two commands do all set-up on a fresh machine:  `make demo`  and  `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench browser

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(VENV)/bin/probes demo --out demo-output

# The report's browser test needs Debian's Chromium (as root it is installed here; elsewhere the
# test skips unless CI is set, where a missing browser fails it).
browser:
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	   --no-install-recommends chromium >/dev/null) || \
	  echo "chromium not installed: the report's browser test will skip"; }

# The suite runs on the CPU even where a GPU is present (tests/conftest.py hides CUDA); where
# CUDA is present the GPU module first runs in a session of its own that sees the GPU.
test: $(STAMP) browser
	HF_HUB_OFFLINE=1 $(VENV)/bin/ruff check embedcache probes tests benchmarks
	@if $(PY) -c "import sys, torch; sys.exit(not torch.cuda.is_available())"; then \
	  HF_HUB_OFFLINE=1 EMBEDCACHE_TEST_GPU=1 $(VENV)/bin/pytest -q tests/test_gpu.py; \
	else echo "no CUDA here: tests/test_gpu.py not run"; fi
	HF_HUB_OFFLINE=1 $(VENV)/bin/pytest -q

bench: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) benchmarks/extraction.py
	HF_HUB_OFFLINE=1 $(PY) benchmarks/store_io.py
