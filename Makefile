# slimeflow: `make demo` and `make test` work on a fresh Debian machine (they install what they
# need); `make up` runs Airflow for real nodes.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STATE ?= $(CURDIR)/.state
AIRFLOW_HOME ?= $(CURDIR)/.airflow
PYTEST_ARGS ?=

.PHONY: demo test test-compose test-unit test-integration up up-sim sim-up sim-down system-deps venv clean gpu-tests bench bench-all argvcheck-real

$(BIN)/.installed: requirements.txt requirements-dev.txt constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	set -o pipefail; $(BIN)/pip install -q --disable-pip-version-check -r requirements-dev.txt -c constraints.txt 2>&1 | { grep -v "is ignored: it is neither" || true; }
	touch $@

venv: $(BIN)/.installed

# Debian's sshd runs the simulated nodes; git applies the fla patch; chromium takes the e2e
# screenshots.
system-deps:
	@if [ ! -x /usr/sbin/sshd ] || ! command -v git >/dev/null || ! command -v chromium >/dev/null; then \
	  echo "installing openssh-server, git and chromium (Debian packages)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssh-server git chromium >/dev/null; \
	fi

demo: venv system-deps
	$(BIN)/python -m tests.simcluster.demo --state-dir $(STATE)/demo

test: venv system-deps
	@set -o pipefail; $(BIN)/python -m pytest -q -p no:cacheprovider $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing"; exit 1; fi; exit $$rc

test-unit: venv
	$(BIN)/python -m pytest -q tests/unit

# Run on a lent GPU machine (see docs/gpu-validation.md); CI skips these.
gpu-tests:
	python3 -m pytest -q -m gpu tests/gpu -p no:cacheprovider

# Airflow for real nodes: scheduler, triggerer, dag-processor and API/UI on 127.0.0.1:8080
# (`airflow standalone`, watched: a component that dies stops the target with its error).
up: venv
	mkdir -p $(AIRFLOW_HOME)
	AIRFLOW_HOME=$(AIRFLOW_HOME) \
	AIRFLOW__CORE__DAGS_FOLDER=$(CURDIR)/dags \
	AIRFLOW__CORE__PLUGINS_FOLDER=$(CURDIR)/plugins \
	AIRFLOW__CORE__LOAD_EXAMPLES=False \
	AIRFLOW__API__HOST=127.0.0.1 \
	AIRFLOW__CORE__PARALLELISM=$${AIRFLOW__CORE__PARALLELISM:-4} \
	PYTHONPATH=$(CURDIR)/plugins \
	$(BIN)/python -m slimeflow.devserver

# The UI of `make up` wired to a 2-node simulated cluster: connections and trigger-form defaults
# set, the cluster goes down with it (tests/simcluster/upsim.py).
up-sim: venv system-deps
	$(BIN)/python -m tests.simcluster.upsim --state-dir $(STATE)/up-sim --nodes $${NODES:-2}

sim-up: venv system-deps
	$(BIN)/python -m tests.simcluster up --nodes $${NODES:-2} --gpu $${GPU:-H100} --gpus-per-node 8 --state-dir $(STATE)/sim

sim-down:
	$(BIN)/python -m tests.simcluster down --state-dir $(STATE)/sim

# Orchestration costs (docs/benchmarks.md). `bench`: the quick ones (about 3 min); `bench-all`:
# every figure as documented (about 30 min on 2 cores).
bench: venv system-deps
	$(BIN)/python bench/parse_cost.py --runs 5
	$(BIN)/python bench/verify_speed.py --runs 5 --gb 0.5

bench-all: bench
	$(BIN)/python bench/verify_speed.py --runs 5
	$(BIN)/python bench/fanout.py --runs 5
	$(BIN)/python bench/overhead.py --runs 5
	$(BIN)/python bench/triggerer_cost.py --runs 50 --poll 15
	$(BIN)/python bench/triggerer_cost.py --runs 50 --poll 5 --slice-s 10

clean:
	-$(BIN)/python -m tests.simcluster down --state-dir $(STATE)/demo 2>/dev/null
	-$(BIN)/python -m tests.simcluster down --state-dir $(STATE)/sim 2>/dev/null
	rm -rf $(STATE) $(AIRFLOW_HOME)

# The four train command lines parsed by real slime, Megatron-LM and sglang trees with their
# Python (docs/pipeline.md, "Argv check against the real parsers"): one JSON each under
# .argvcheck/results/$(LABEL)/, one summary line each; fails when any line fails.
#   make argvcheck-real ARGVCHECK_PY=/path/python SLIME_DIR=... MEGATRON_DIR=... \
#        [SGLANG_PATH=...] [ARGVCHECK_BASE=/root] [ARGVCHECK_ARGS=--quote-literal] LABEL=pinned
ARGVCHECK_PY ?= python3
ARGVCHECK_BASE ?= /root
ARGVCHECK_ARGS ?=
LABEL ?= default
ARGVCHECK_LINES := qwen3-next-80b-a3b:1 qwen3-next-80b-a3b:4 qwen3-30b-a3b:1 qwen3-4b:1

argvcheck-real: venv
	@test -n "$(SLIME_DIR)" && test -n "$(MEGATRON_DIR)" || { echo "argvcheck-real: set SLIME_DIR and MEGATRON_DIR" >&2; exit 2; }
	@mkdir -p .argvcheck/results/$(LABEL); fail=0; \
	for line in $(ARGVCHECK_LINES); do recipe=$${line%%:*}; nodes=$${line##*:}; \
	  out=.argvcheck/results/$(LABEL)/$$recipe-$${nodes}x8.json; \
	  PYTHONPATH=$(CURDIR)/plugins $(BIN)/python -m slimeflow argvcheck --recipe $$recipe \
	    --nodes $$nodes --gpus-per-node 8 --python "$(ARGVCHECK_PY)" --slime-dir "$(SLIME_DIR)" \
	    --megatron-dir "$(MEGATRON_DIR)" $(if $(SGLANG_PATH),--sglang-path "$(SGLANG_PATH)") \
	    --base-folder "$(ARGVCHECK_BASE)" --out $$out $(ARGVCHECK_ARGS) >/dev/null \
	    || fail=1; \
	done; echo "argvcheck-real: results in .argvcheck/results/$(LABEL)/"; exit $$fail

# docker-compose.yaml for real (tests/compose/): its own dockerd (Debian docker.io, installed if
# missing, stopped by pid), local stand-ins for the official images (no registry is reachable),
# docs/operations.md §1 followed as written, against a 2-node simulated cluster. Prints the
# timings and `docker images` at the end.
test-compose: venv system-deps
	@set -o pipefail; SLIMEFLOW_COMPOSE_STATE=$(STATE)/compose $(BIN)/python -m pytest -q -p no:cacheprovider -m compose tests/compose $(PYTEST_ARGS); rc=$$?; \
	for f in timings.json images.txt; do if [ -f $(STATE)/compose/$$f ]; then cat $(STATE)/compose/$$f; fi; done; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing"; exit 1; fi; exit $$rc
