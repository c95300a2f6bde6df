# The two commands of the README: `make test` and `make demo`. Both create the virtual
# environment on first use.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
DEMO   ?= runs/demo

.PHONY: test demo reproduce ablations bench bench-trl lint clean

# The lock file pins what the README's numbers were measured with; requirements.txt gives the ranges.
$(VENV)/.installed: requirements.lock requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.lock
	touch $@

test: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q --durations=10 tests

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .

demo: $(VENV)/.installed
	bash scripts/demo.sh $(DEMO)

ablations: $(VENV)/.installed
	bash scripts/ablations.sh $(DEMO)

reproduce: $(VENV)/.installed
	bash scripts/reproduce.sh runs/reproduce

bench: $(VENV)/.installed
	$(PY) -m bench

# TRL is a benchmark-only dependency: installed here, never imported by the pipeline or the tests.
bench-trl: $(VENV)/.installed
	$(PY) -m pip install --quiet --no-deps -r bench/requirements-trl.txt
	$(PY) -m bench --sections trl --pairs 8 --out runs/bench_trl.json

clean:
	rm -rf $(VENV) runs
