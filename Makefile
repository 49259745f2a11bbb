# Set-up and entry points. Every target creates the virtual environment and builds the kernels first.
VENV ?= .venv
PYTHON := $(VENV)/bin/python
PIP := $(PYTHON) -m pip

.PHONY: install test test-all lint demo bench clean

install:
	test -x $(PYTHON) || python3 -m venv $(VENV)
	$(PIP) install -q -c requirements/constraints.txt -r requirements/dev.txt
	$(PIP) install -q -e . --no-build-isolation --no-deps
	$(PYTHON) -c "import tokred, torch; print('tokred', tokred.__version__, '| torch', torch.__version__, '|', *tokred.ops.registered_ops())"

test: install
	$(PYTHON) -m pytest -ra

test-all: install
	$(PYTHON) -m pytest -ra -m ""

lint: install
	$(PYTHON) -m ruff check . && $(PYTHON) -m ruff format --check .

demo: install
	$(PYTHON) train/main.py --method dpc_knn --r 0.5 --epochs 7 --batch-size 32 --lr 5e-4 --lr-batch-normalizer 32 \
		--amp bf16 --run-name demo_deit_tiny_dpc_knn --resume auto

bench: install
	$(PYTHON) bench/ops.py

clean:
	rm -rf build tokred/_C*.so *.egg-info
