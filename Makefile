# The project's interface. `make dev` and `make test` work from a fresh clone on Debian with Node 20.
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
export PATH := $(CURDIR)/node_modules/.bin:$(PATH)

TEST_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/ledgerline_test
PROTOS := $(wildcard proto/*/v1/*.proto)

.PHONY: dev test proto bench chaos lint clean services tools build migrate typecheck

node_modules/.install-stamp: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	@touch $@

proto/gen/.stamp: node_modules/.install-stamp $(PROTOS) buf.gen.yaml buf.yaml
	rm -rf proto/gen
	buf generate
	@touch $@

proto: proto/gen/.stamp

services:
	@bash scripts/ensure-services.sh

tools:
	@bash scripts/ensure-tools.sh

migrate: proto services
	tsx scripts/migrate.ts

typecheck: proto
	tsc -p tsconfig.json --noEmit

build: proto
	tsc -p tsconfig.build.json

dev: migrate
	tsx scripts/dev.ts

test: proto services tools lint
	DATABASE_URL=$(TEST_DATABASE_URL) tsx scripts/migrate.ts --fresh
	DATABASE_URL=$(TEST_DATABASE_URL) NODE_ENV=test LOG_LEVEL=$${LOG_LEVEL:-silent} mocha

bench: proto services
	DATABASE_URL=$${BENCH_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/ledgerline_bench} tsx scripts/migrate.ts --fresh
	DATABASE_URL=$${BENCH_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/ledgerline_bench} LOG_LEVEL=warn tsx bench/run.ts
	DATABASE_URL=$${BENCH_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/ledgerline_bench} LOG_LEVEL=warn tsx bench/payments.ts
	DATABASE_URL=$${BENCH_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/ledgerline_bench} LOG_LEVEL=warn tsx bench/risk.ts
	DATABASE_URL=$${BENCH_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/ledgerline_bench} LOG_LEVEL=warn tsx bench/batch.ts

# The failure promises under faults, for minutes (outside CI; the short version runs in `make test`).
chaos: proto services
	DATABASE_URL=$${CHAOS_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/ledgerline_chaos} tsx scripts/migrate.ts --fresh
	DATABASE_URL=$${CHAOS_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/ledgerline_chaos} NODE_ENV=test tsx scripts/chaos.ts

lint: proto
	buf lint
	eslint .
	tsc -p tsconfig.json --noEmit

clean:
	rm -rf dist proto/gen .data node_modules/.install-stamp
