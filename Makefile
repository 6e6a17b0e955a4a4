# The two commands a newcomer needs: `make run` and `make test`.
.PHONY: run test lint fmt build

# Serves the lobby on http://127.0.0.1:3000 (flags: make run ARGS="--grace 10s").
run:
	cargo run --release --bin lobby -- $(ARGS)

# Every test: formatting, lints, unit tests, HTTP/SSE integration tests and the
# headless-Chromium page test (skipped with a message where Chromium is missing,
# mandatory when CI=true).
test: lint
	cargo test --all-targets

lint:
	cargo fmt --all --check
	cargo clippy --all-targets -- -D warnings

fmt:
	cargo fmt --all

build:
	cargo build --release
