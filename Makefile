# The two commands a newcomer needs: `make run` and `make test`.
.PHONY: run test lint fmt build bench soak

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

# Release build, then for N = 1,000 and 18,000: a fresh lobby, lobby-load
# against it, the lobby stopped. Prints the results and writes BENCHMARKS.md.
# (The join timeout is raised so the burst's joiners, who never open a stream,
# cannot time out under load and be counted as failed leaves.)
BENCH_ADDR ?= 127.0.0.1:3999
BENCH_SIZES ?= 1000 18000
bench:
	cargo build --release --bin lobby --bin lobby-load
	@set -e; out=$$(mktemp -d); \
	for n in $(BENCH_SIZES); do \
	  ./target/release/lobby --bind $(BENCH_ADDR) --join-timeout 5m --join-rate 1000000 --join-burst 1000000 2>$$out/lobby-$$n.log & pid=$$!; \
	  trap 'kill $$pid 2>/dev/null || true' EXIT; \
	  until curl -sf http://$(BENCH_ADDR)/healthz >/dev/null; do sleep 0.1; done; \
	  echo "== N = $$n"; \
	  ./target/release/lobby-load --url http://$(BENCH_ADDR) --pid $$pid --subscribers $$n | tee $$out/load-$$n.txt; \
	  kill $$pid; wait $$pid || true; \
	done; \
	{ echo "# Benchmarks"; echo; \
	  echo "Written by \`make bench\` on $$(date -u '+%Y-%m-%d %H:%M UTC'), $$(nproc) cores ($$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), $$(free -g | awk '/Mem:/ {print $$2}') GiB,"; \
	  echo "release build, lobby-load on the same machine. See the README's Performance section for what each figure means."; \
	  for n in $(BENCH_SIZES); do echo; echo "## N = $$n"; echo; echo '```'; grep -v '^lobby-load:' $$out/load-$$n.txt; echo '```'; done; \
	} > BENCHMARKS.md; \
	echo "wrote BENCHMARKS.md"

# A churn soak against a release build: a thousand clients join, subscribe,
# drop, reconnect and leave at random for SOAK_SECS, then every view must equal
# GET /users and the server's memory must be back. Prints its figures.
# (make test runs the same test for 10 s on a debug build.)
SOAK_SECS ?= 120
soak:
	LOBBY_SOAK_SECS=$(SOAK_SECS) cargo test --release --test soak -- --nocapture
