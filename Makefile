# batchembed: everything a fresh machine needs goes through these targets.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
JOB    ?= jobs/example.toml

.PHONY: setup test lint run demo bench bench-large bench-ratelimits clean

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
	$(BIN)/python jobs/make_sample.py --out data/sample --rows 3000
	$(BIN)/batchembed run jobs/example.toml
	@echo
	@echo "Output: out/example/part-*.parquet (vectors in column 'embedding', 384 dims)."
	@echo "Look at it:  $(BIN)/python -c \"import polars as pl; print(pl.read_parquet('out/example/*.parquet'))\""

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

clean:
	rm -rf out .pytest_cache
