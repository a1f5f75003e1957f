# One command per job: `make serve`, `make test`, `make lint`, `make bench`. Each sets up what it
# needs.
VENV ?= .venv
PY := $(VENV)/bin/python
PORT ?= 3000
INSTALLED := $(VENV)/.installed
REQUIREMENTS := requirements-cpu.txt requirements-nodeps.txt requirements-dev.txt
CHROMIUM ?= /usr/bin/chromium
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

.PHONY: install model serve test lint clean browser bench bench-quick bench-layer

$(INSTALLED): $(REQUIREMENTS)
	test -x $(PY) || python3.11 -m venv $(VENV) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-cpu.txt -r requirements-dev.txt
	$(PY) -m pip install --quiet --no-deps -r requirements-nodeps.txt
	$(PY) -m pip uninstall --quiet --yes torchvision torchaudio torchcodec
	touch $@

install: $(INSTALLED)

model: install  ## convert the packaged default model into the BentoML store (once)
	$(PY) -m vllm_bento.packaged_model

serve: model
	$(VENV)/bin/bentoml serve service:VLLM --port $(PORT)

test: model lint browser
	$(VENV)/bin/pytest $(PYTEST_ARGS)

browser:  ## Debian's Chromium for the chat page tests (Playwright drives it; it downloads none)
	test -x $(CHROMIUM) || { $(SUDO) apt-get update && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y chromium; }

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

# Benchmarks: this service vs raw `vllm serve` vs transformers (docs/benchmarks.md). Not part
# of `make test`: the full run takes up to 30 minutes and wants the machine to itself.
BENCH_INSTALLED := $(VENV)/.bench-installed

$(BENCH_INSTALLED): $(INSTALLED) requirements-bench.txt
	$(PY) -m pip install --quiet -r requirements-bench.txt
	touch $@

bench: model $(BENCH_INSTALLED)  ## full run: bench/results/full.json, docs/benchmarks.{md,png}
	$(PY) -m bench

bench-quick: model $(BENCH_INSTALLED)  ## smoke run of every path, a few minutes (bench/results/tmp)
	$(PY) -m bench --quick

bench-layer: model $(BENCH_INSTALLED)  ## the service's own layer vs a stand-in for vLLM, CPU, minutes
	$(PY) -m bench.layer

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache tests/artifacts
