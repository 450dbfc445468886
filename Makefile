# Entry points for developers and CI. Every target first runs scripts/bootstrap,
# which is quick when the virtualenv, packages and Docker engine are in place.

VENV := $(CURDIR)/.venv
PYTHON := $(VENV)/bin/python
VACD := $(VENV)/bin/vacd
DEMO_STATE_DIR := $(CURDIR)/.vac-demo
PYTEST_ARGS ?=

.PHONY: bootstrap test demo bench clean

bootstrap:
	scripts/bootstrap

# -ra lists the reason of every skipped, failed or errored test.
test: bootstrap
	$(PYTHON) -m pytest -q -ra $(PYTEST_ARGS)

# The demo: a local busybox image, the machinetypes' files under the state
# directory, then vacd in the foreground. exec: vacd replaces the recipe's
# shell, so Ctrl-C and SIGTERM reach it directly.
demo: bootstrap
	$(PYTHON) contrib/demo/busybox_image.py vac-demo-busybox:latest
	mkdir -p $(DEMO_STATE_DIR)/machinetypes
	cp -R contrib/demo/machinetypes/. $(DEMO_STATE_DIR)/machinetypes/
	@echo "vac demo: state in $(DEMO_STATE_DIR), control socket $(DEMO_STATE_DIR)/control.sock"
	@echo "vac demo: watch 'ps -eo pid,args | grep vacd:', machine directories in"
	@echo "vac demo: $(DEMO_STATE_DIR)/machines/, APEL records in $(DEMO_STATE_DIR)/apel-archive/;"
	@echo "vac demo: Ctrl-C stops vacd and leaves the containers running for the next demo"
	exec $(VACD) --config contrib/demo/vac.conf --state-dir $(DEMO_STATE_DIR) --socket $(DEMO_STATE_DIR)/control.sock

bench:
	scripts/bootstrap --bench
	@set -e; scripts='$(sort $(wildcard bench/bench_*.py))'; \
	if [ -z "$$scripts" ]; then echo "no bench/bench_*.py to run"; fi; \
	for script in $$scripts; do echo "== $$script"; $(PYTHON) $$script; done

# Keeps .vac-demo: it may hold the state of containers a demo left running.
clean:
	rm -rf $(VENV) .pytest_cache .hypothesis build *.egg-info
	find . -path ./.git -prune -o -path ./.vac-demo -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +
