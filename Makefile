# Two commands do all set-up on a fresh machine:
#   make run    builds .venv if needed, then runs the main job on its embedded default
#   make test   builds .venv if needed, then runs the test suite (make faults: the fault suite)
VENV ?= .venv
PY := $(VENV)/bin/python
ARGS ?=

.PHONY: run test bench faults ui dashboard

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

run: $(VENV)/.installed
	$(PY) harness/tune.py --space rkd_weights $(ARGS)

test: $(VENV)/.installed
	$(PY) -m pytest tests

# The fault suite (tests/faults; about 15 minutes on 2 cores): killed and stopped drivers, two
# drivers on one study, an mlflow server away, S3 storage (moto), a lost Ray node. Its table:
# runs-faults/faults.md (python benchmarks/faults.py --table).
faults: $(VENV)/.installed
	$(PY) -m pytest tests/faults -m faults

bench: $(VENV)/.installed
	$(PY) -m crkd.bench $(ARGS)

# Browse the studies in ./runs: MLflow (the printed links open the leaderboard) and Optuna's dashboard.
ui: $(VENV)/.installed
	$(PY) -m mlflow server --backend-store-uri sqlite:///$(CURDIR)/runs/mlflow.db \
		--artifacts-destination $(CURDIR)/runs/mlartifacts --host 127.0.0.1 --port 5000

dashboard: $(VENV)/.installed
	$(PY) -c "import optuna_dashboard" 2>/dev/null || $(PY) -m pip install --quiet -e '.[dashboard]'
	$(VENV)/bin/optuna-dashboard $(if $(NAME),runs/$(NAME)/optuna.log,$$(ls -t runs/*/optuna.log | head -1)) \
		--host 127.0.0.1 --port 8080
