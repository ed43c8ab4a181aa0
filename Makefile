# Essay lifecycle batch registration: developer entry points.
# `make help` lists the targets. Everything runs against the throwaway local stack
# in .stack/ (scripts/stack.sh): PostgreSQL 15 + single-node Kafka 4 on 127.0.0.1.

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help
.ONESHELL:

VENV   := .venv
PY     := $(VENV)/bin/python
STACK  := scripts/stack.sh
# Python paths that lint looks at; missing ones are skipped.
LINT_PATHS := worker.py els_worker els_migrate.py testkit tests bench chaos scripts/demo.py monitoring

.PHONY: help test demo bootstrap stack-up stack-down stack-status migrate rollback \
        lint fmt psql pgtap plpgsql-check pytest test-unit clean schema-snapshot bench chaos \
        dashboard prometheus stack-up-ha stack-down-ha test-ha chaos-ha chaos-sharded test-compose

help: ## list the targets
	@if [[ -t 1 ]]; then c=$$'\033[36m' r=$$'\033[0m'; else c= r=; fi
	awk -v c="$$c" -v r="$$r" 'BEGIN {FS = ":.*?## "} /^[a-zA-Z_-]+:.*?## / {printf "  %s%-16s%s %s\n", c, $$1, r, $$2}' $(MAKEFILE_LIST)

test: bootstrap lint stack-up pgtap plpgsql-check pytest ## everything CI runs: lint, pgTAP, plpgsql_check, pytest
	@echo "make test: all steps passed"

demo: bootstrap stack-up migrate ## stack + migrations + worker, a realistic event stream, a summary
	@eval "$$($(STACK) env)"
	$(PY) scripts/demo.py

bootstrap: ## install missing system packages (as root) and the .venv
	@scripts/bootstrap.sh

stack-up: bootstrap ## start PostgreSQL + Kafka (idempotent)
	@$(STACK) up

stack-up-ha: bootstrap ## start the HA topology: pg_auto_failover primary + sync standby, 3 Kafka nodes (docs/HA.md)
	@$(STACK) --ha up

stack-down-ha: ## stop the HA topology
	@$(STACK) --ha down

test-ha: bootstrap stack-up-ha ## the HA tests (PostgreSQL failover, broker loss) on the HA topology
	@ELS_STACK_TOPOLOGY=ha $(VENV)/bin/pytest -m ha tests/chaos/test_ha_stack.py $(PYTEST_ARGS)

stack-down: ## stop the demo worker, PostgreSQL + Kafka; leave no process behind
	@$(STACK) down

stack-status: ## show whether PostgreSQL and Kafka are running
	@$(STACK) status

migrate: stack-up ## apply migrations and reload sql/ into database els
	@eval "$$($(STACK) env)"
	$(PY) -c 'import os, els_migrate; els_migrate.apply_migrations(os.environ["ELS_DATABASE_URL"])'
	echo "migrated $$ELS_DATABASE_URL"

rollback: stack-up ## roll back every migration in database els
	@eval "$$($(STACK) env)"
	$(PY) -c 'import os, els_migrate; els_migrate.rollback_migrations(os.environ["ELS_DATABASE_URL"])'

lint: bootstrap ## ruff check + mypy (Python sources that exist)
	@paths=""; for p in $(LINT_PATHS); do [[ -e "$$p" ]] && paths="$$paths $$p"; done
	$(VENV)/bin/ruff check .
	if [[ -n "$$paths" ]]; then $(VENV)/bin/mypy $$paths; fi

fmt: bootstrap ## ruff format + autofix
	@$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

psql: stack-up ## open psql on database els
	@eval "$$($(STACK) env)"
	exec psql "$$ELS_DATABASE_URL"

pgtap: stack-up ## run pgtap_tests/*.sql with pg_prove in a fresh migrated database
	@scripts/pgtap.sh

plpgsql-check: stack-up ## static check of every PL/pgSQL function in schema els
	@scripts/plpgsql_check.sh

# Test processes of the parallel part (pytest-xdist): the suite mostly waits (on workers,
# brokers, timeouts), so more processes than cores pay; worksteal: an idle process takes
# tests queued for a busy one (the chaos runs take minutes, most tests seconds).
PYTEST_PROCESSES ?= 4

test-unit: bootstrap ## the unit tests alone (tests/unit: no service needed)
	@$(VENV)/bin/pytest tests/unit $(PYTEST_ARGS)

pytest: stack-up ## the Python test suite: in parallel, then alone the tests that disturb the shared stack
	@$(VENV)/bin/pytest -n $(PYTEST_PROCESSES) --dist worksteal -m 'not ha and not serial and not compose' $(PYTEST_ARGS)
	$(VENV)/bin/pytest -m 'serial and not ha and not compose' $(PYTEST_ARGS)

# compose.yaml for real (tests/compose): installs docker.io, debootstrap and the compose
# plugin when missing, starts dockerd unless one runs (and stops only the one it started),
# builds the offline stand-ins of the public images, then the tests. As root.
test-compose: bootstrap ## compose.yaml on a Docker engine: stand-in images, up --wait, a stream, stop/restart, down -v
	@scripts/compose-deps.sh
	engine="$$(scripts/dockerd.sh up)"
	if [[ "$$engine" == started ]]; then trap 'scripts/dockerd.sh down' EXIT; fi
	tests/compose/images/build.sh
	$(VENV)/bin/pytest -m compose tests/compose $(PYTEST_ARGS)

clean: stack-down ## stop the stack and delete .stack/ (cluster, Kafka data, logs)
	@if [[ -L .stack/pg ]]; then rm -rf "$$(readlink -f .stack/pg)"; fi
	rm -rf .stack

schema-snapshot: stack-up ## rewrite docs/schema.sql from a freshly migrated scratch database
	@eval "$$($(STACK) env)"
	$(PY) els_migrate.py snapshot

bench: stack-up ## benchmarks: register_batch vs COPY/INSERT, duplicates, throughput, end to end (docs/BENCHMARKS.md)
	@$(PY) -m bench.run $(BENCH_ARGS)

dashboard: bootstrap ## regenerate monitoring/grafana/dashboards/els.json (grafana-foundation-sdk)
	@$(PY) monitoring/build_dashboard.py

prometheus: stack-up ## print the local Prometheus URL, its targets and the firing alerts
	@eval "$$($(STACK) env)"
	echo "Prometheus: $$ELS_PROMETHEUS_URL   (targets: $$ELS_PROMETHEUS_URL/targets, alerts: $$ELS_PROMETHEUS_URL/alerts)"
	$(STACK) prom-target list
	curl -s "$$ELS_PROMETHEUS_URL/api/v1/alerts" | $(PY) -c 'import json, sys; a = json.load(sys.stdin)["data"]["alerts"]; [print(" ", x["state"], x["labels"]["alertname"], x["labels"].get("instance", "")) for x in a] or print("  no alert pending or firing")'

chaos: bootstrap ## full chaos run on a private PostgreSQL + Kafka: kills, restarts, oracle check (docs/RELIABILITY.md)
	@$(PY) -m chaos.run --profile full $(CHAOS_ARGS)

chaos-ha: bootstrap ## the chaos run on the HA topology: primary + broker SIGKILLs too (docs/HA.md)
	@$(PY) -m chaos.run --profile ha $(CHAOS_ARGS)

chaos-sharded: bootstrap ## the chaos run on 2 partitions behind PL/Proxy: kills, a restart, partitions down (docs/SCALING.md)
	@$(PY) -m chaos.run --profile sharded $(CHAOS_ARGS)
