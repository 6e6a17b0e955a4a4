# The two commands a newcomer needs: `make run` and `make test`.
.PHONY: run test test-js lint fmt build dist bench bench-cluster soak chaos

# Serves the lobby on http://127.0.0.1:3000 (flags: make run ARGS="--grace 10s").
run:
	cargo run --release --bin lobby -- $(ARGS)

# Every test: formatting, lints, the browser client's tests in Node (test-js),
# unit tests, HTTP/SSE integration tests, the cluster tests on a redis-server
# of their own, and the headless-Chromium page test (skipped with a message
# where Chromium is missing, mandatory when CI=true). Then the single-node
# acceptance tests once more, each against three nodes on one Redis with every
# request sent to a node picked at random.
test: lint test-js
	cargo test --all-targets
	LOBBY_TEST_CLUSTER=1 cargo test --test api --test events --test presence_rules --test rooms --test state --test signed

# TypeScript's check of tests/js/example.ts against static/lobby.d.ts, then
# static/lobby.js's state machine in Node, against fakes of the lobby, Web Locks,
# BroadcastChannel and the page (tests/js/*.test.mjs). Needs node (18 or later)
# and npm; the pinned dev dependencies are installed again when the lock file
# changes.
JS := tests/js
test-js: $(JS)/node_modules/.package-lock.json
	$(JS)/node_modules/.bin/tsc -p $(JS)
	node --test $(JS)/*.test.mjs

$(JS)/node_modules/.package-lock.json: $(JS)/package.json $(JS)/package-lock.json
	@command -v node >/dev/null && command -v npm >/dev/null || { \
	  echo "test-js: node or npm is missing; install Debian's packages: apt-get install -y nodejs npm" >&2; exit 1; }
	cd $(JS) && npm ci --no-audit --no-fund

lint:
	cargo fmt --all --check
	cargo clippy --all-targets -- -D warnings

fmt:
	cargo fmt --all

build:
	cargo build --release

# Release build, then for N = 1,000 and 18,000: a fresh lobby, lobby-load
# against it, the lobby stopped. Around the 18,000 run, the C fan-out
# yardstick of ../shared/tools/fanout-yardstick runs just before and just
# after, and lobby's fan-out p99 is given as a ratio to the mean of theirs.
# Then 18,000 subscribers dealt out over BENCH_ROOMS rooms (empty: not run),
# with the probes joining one room, against a fresh lobby.
# Then wrk (Debian's `wrk`) sends GET /healthz and GET /users to a fresh lobby
# and to an axum server written from axum's examples (examples/baseline.rs),
# in turn, BENCH_WRK_RUNS times each; lobby's median requests per second over
# the baseline's is the ratio. Prints the results and writes BENCHMARKS.md.
# (The join timeout is raised so the burst's joiners, who never open a stream,
# cannot time out under load and be counted as failed leaves.)
BENCH_ADDR ?= 127.0.0.1:3999
BENCH_BASELINE_ADDR ?= 127.0.0.1:3998
BENCH_SIZES ?= 1000 18000
BENCH_ROOMS ?= 1000
BENCH_WRK_RUNS ?= 3
# The shared folder sits beside the checkout (e.g. /work/shared beside /work/main).
SHARED ?= $(abspath $(shell git rev-parse --show-toplevel 2>/dev/null || pwd)/../shared)
YARDSTICK := $(SHARED)/tools/fanout-yardstick/yardstick.c
bench:
	@command -v wrk >/dev/null || { echo "bench: wrk is missing; install Debian's package: apt-get install -y wrk" >&2; exit 1; }
	cargo build --release --bin lobby --bin lobby-load --example baseline
	@if [ -f $(YARDSTICK) ]; then cc -O2 -pthread -o target/yardstick $(YARDSTICK); \
	  else echo "bench: no yardstick at $(YARDSTICK) (SHARED=… names the shared folder): the yardstick ratio is left out" >&2; rm -f target/yardstick; fi
	@set -e; out=$$(mktemp -d); pids=; \
	trap 'kill $$pids 2>/dev/null || true' EXIT; \
	serve() { log=$$out/$$1.log; shift; "$$@" >$$log 2>&1 & pid=$$!; pids="$$pids $$pid"; }; \
	ready() { until curl -sf http://$$1/healthz >/dev/null; do \
	  kill -0 $$2 2>/dev/null || { echo "bench: the server for $$1 exited" >&2; exit 1; }; sleep 0.1; done; }; \
	lobby() { serve lobby-$$1 ./target/release/lobby --bind $(BENCH_ADDR) --join-timeout 5m --join-rate 1000000 --join-burst 1000000; \
	  ready $(BENCH_ADDR) $$pid; }; \
	value() { awk -v l="$$2" 'index($$0, l "  ") == 1 { v = substr($$0, length(l) + 1); sub(/^ +/, "", v); print v + 0; exit }' "$$1"; }; \
	yardstick() { if [ -x target/yardstick ]; then target/yardstick 18000 20 | tee $$out/yardstick-$$1.json \
	  | sed -n 's/.*"p99_ms": *\([0-9.]*\).*/yardstick '"$$1"': fan-out p99 \1 ms/p'; fi; }; \
	p99_of() { sed -n 's/.*"p99_ms": *\([0-9.]*\).*/\1/p' $$out/yardstick-$$1.json 2>/dev/null; }; \
	for n in $(BENCH_SIZES); do \
	  [ $$n != 18000 ] || yardstick before; \
	  lobby $$n; echo "== N = $$n"; \
	  ./target/release/lobby-load --url http://$(BENCH_ADDR) --pid $$pid --subscribers $$n | tee $$out/load-$$n.txt; \
	  kill $$pid; wait $$pid || true; \
	  [ $$n != 18000 ] || yardstick after; \
	done; \
	if [ -n "$(BENCH_ROOMS)" ]; then \
	  lobby rooms; echo "== N = 18000 in $(BENCH_ROOMS) rooms"; \
	  ./target/release/lobby-load --url http://$(BENCH_ADDR) --pid $$pid --subscribers 18000 --rooms $(BENCH_ROOMS) \
	    | tee $$out/load-rooms.txt; \
	  kill $$pid; wait $$pid || true; \
	fi; \
	echo "== wrk -t2 -c32 -d5s, lobby and the axum baseline in turn, $(BENCH_WRK_RUNS) runs each"; \
	lobby wrk; \
	serve baseline ./target/release/examples/baseline $(BENCH_BASELINE_ADDR); ready $(BENCH_BASELINE_ADDR) $$pid; \
	for run in $$(seq $(BENCH_WRK_RUNS)); do for route in healthz users; do \
	  for side in lobby:$(BENCH_ADDR) baseline:$(BENCH_BASELINE_ADDR); do \
	    wrk -t2 -c32 -d5s http://$${side#*:}/$$route > $$out/wrk-$${side%%:*}-$$route-$$run.txt; \
	    rps=$$(awk '/^Requests\/sec:/ { print $$2 }' $$out/wrk-$${side%%:*}-$$route-$$run.txt); \
	    echo "$$rps" >> $$out/rps-$${side%%:*}-$$route; \
	    bad=$$(grep -E 'Non-2xx|Socket errors' $$out/wrk-$${side%%:*}-$$route-$$run.txt | xargs || true); \
	    echo "wrk run $$run, GET /$$route, $${side%%:*}: $$rps req/s$${bad:+ ($$bad)}"; \
	  done; \
	done; done; \
	kill $$pids 2>/dev/null || true; wait 2>/dev/null || true; pids=; \
	median() { sort -n $$1 | awk '{ v[NR] = $$1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }; \
	ratio() { awk -v a="$$1" -v b="$$2" 'BEGIN { if (a != "" && b > 0) printf "%.2f", a / b; else printf "n/a" }'; }; \
	{ echo "wrk -t2 -c32 -d5s, plain HTTP, median of $(BENCH_WRK_RUNS) runs each, lobby / axum baseline (examples/baseline.rs):"; \
	  for route in healthz users; do l=$$(median $$out/rps-lobby-$$route); b=$$(median $$out/rps-baseline-$$route); \
	    echo "  GET /$$route: lobby $$l req/s, baseline $$b req/s: $$(ratio $$l $$b)x"; done; \
	  if [ -f $$out/load-18000.txt ]; then \
	    before=$$(p99_of before); after=$$(p99_of after); join=$$(value $$out/load-18000.txt 'fan-out of a join, p99'); \
	    update=$$(value $$out/load-18000.txt 'fan-out of a state update, p99'); \
	    if [ -n "$$before" ] && [ -n "$$after" ]; then \
	      mean=$$(awk -v a=$$before -v b=$$after 'BEGIN { printf "%.2f", (a + b) / 2 }'); \
	      echo "fan-out yardstick (target/yardstick 18000 20): p99 $$before ms before, $$after ms after, mean $$mean ms"; \
	      echo "  lobby's fan-out of a join, p99, N = 18000: $$join ms: $$(ratio $$join $$mean)x the yardstick"; \
	      echo "  lobby's fan-out of a state update, p99, N = 18000: $$update ms: $$(ratio $$update $$mean)x the yardstick"; \
	    else echo "fan-out yardstick: not run (no $(YARDSTICK)): no ratio"; fi; \
	    echo "peak RSS per subscriber (VmHWM after ramp, probes and burst / N), N = 18000: $$(value $$out/load-18000.txt 'server peak RSS per subscriber (VmHWM / N)') KiB"; \
	    echo "settled RSS per subscriber (VmRSS after the idle period / N), N = 18000: $$(value $$out/load-18000.txt 'server settled RSS per subscriber (VmRSS at the end / N)') KiB"; \
	  else echo "N = 18000 was not run (BENCH_SIZES): no yardstick ratio, no memory per subscriber at 18,000"; fi; \
	  if [ -f $$out/load-rooms.txt ]; then rooms=$$out/load-rooms.txt; \
	    echo "18,000 subscribers in $(BENCH_ROOMS) rooms: ramp $$(value $$rooms 'ramp: all N join and subscribe') s,"; \
	    echo "  fan-out of a join into one room p99 $$(value $$rooms 'fan-out of a join, p99') ms,"; \
	    echo "  settled RSS per subscriber $$(value $$rooms 'server settled RSS per subscriber (VmRSS at the end / N)') KiB (rooms included)"; \
	  fi; \
	} > $$out/summary.txt; \
	echo "== summary"; cat $$out/summary.txt; \
	{ echo "# Benchmarks"; echo; \
	  echo "Written by \`make bench\` on $$(date -u '+%Y-%m-%d %H:%M UTC'), $$(nproc) cores ($$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), $$(free -g | awk '/Mem:/ {print $$2}') GiB,"; \
	  echo "release build, lobby-load on the same machine. See docs/performance.md for what each figure means."; \
	  echo; echo "## Against the yardsticks"; echo; echo '```'; cat $$out/summary.txt; echo '```'; \
	  for n in $(BENCH_SIZES); do echo; echo "## N = $$n"; echo; echo '```'; grep -v '^lobby-load:' $$out/load-$$n.txt; echo '```'; done; \
	  if [ -f $$out/load-rooms.txt ]; then echo; echo "## N = 18000 in $(BENCH_ROOMS) rooms"; echo; echo '```'; \
	    grep -v '^lobby-load:' $$out/load-rooms.txt; echo '```'; fi; \
	} > BENCHMARKS.md; \
	echo "wrote BENCHMARKS.md"

# Release build, then a cluster on this machine: a redis-server of its own (no
# persistence, in a temporary directory), three lobby nodes on it, and one
# lobby-load per node with 6,000 subscribers each. Load process 0 sends the
# probes and prints the figures of the whole cluster (the `cluster:` rows).
# Prints every table and writes BENCHMARKS-cluster.md beside the single-node
# figures of BENCHMARKS.md (N = 18000). Everything it started is stopped on the
# way out, failure or not. Redis and the nodes listen on the first free ports
# from 6390 and 3101 unless CLUSTER_REDIS_PORT and CLUSTER_PORTS say otherwise.
# More lobby-load flags go in CLUSTER_LOAD_ARGS (e.g. "--idle 2s" for a quick try).
CLUSTER_NODES ?= 3
CLUSTER_REDIS_PORT ?=
CLUSTER_PORTS ?=
CLUSTER_SUBSCRIBERS ?= 6000
CLUSTER_PROBES ?= 10
CLUSTER_LOAD_ARGS ?=
bench-cluster:
	cargo build --release --bin lobby --bin lobby-load
	@set -e; out=$$(mktemp -d); pids=; keep=; \
	trap 'kill $$pids 2>/dev/null || true; wait 2>/dev/null || true; \
	  if [ -n "$$keep" ]; then echo "bench-cluster: logs kept in $$out" >&2; else rm -rf $$out; fi' EXIT; \
	trap 'keep=1; exit 1' INT TERM; \
	fail() { keep=1; echo "bench-cluster: $$1" >&2; [ -z "$$2" ] || tail -n 20 "$$2" >&2; exit 1; }; \
	cpu() { awk -v t=$$(getconf CLK_TCK) '{ printf "%.2f", ($$14 + $$15) / t }' /proc/$$1/stat; }; \
	free_port() { p=$$1; while awk -v p=":$$(printf %04X $$p)" '$$2 ~ p "$$" && $$4 == "0A" { found = 1 } \
	  END { exit !found }' /proc/net/tcp /proc/net/tcp6; do p=$$((p + 1)); done; echo $$p; }; \
	redis_port=$(CLUSTER_REDIS_PORT); redis_port=$${redis_port:-$$(free_port 6390)}; \
	ports="$(CLUSTER_PORTS)"; [ -n "$$ports" ] || { p=3101; for n in $$(seq $(CLUSTER_NODES)); do \
	  p=$$(free_port $$p); ports="$$ports $$p"; p=$$((p + 1)); done; }; \
	! redis-cli -p $$redis_port ping >/dev/null 2>&1 || fail "port $$redis_port is taken: make bench-cluster CLUSTER_REDIS_PORT=…"; \
	redis-server --port $$redis_port --bind 127.0.0.1 --save '' --appendonly no \
	  --dir $$out --logfile $$out/redis.log & redis=$$!; pids="$$pids $$redis"; \
	until redis-cli -p $$redis_port ping 2>/dev/null | grep -q PONG; do \
	  kill -0 $$redis 2>/dev/null || fail "redis-server exited" $$out/redis.log; sleep 0.1; done; \
	nodes=; for port in $$ports; do \
	  ! curl -s -o /dev/null http://127.0.0.1:$$port/ || fail "port $$port is taken: make bench-cluster CLUSTER_PORTS=…"; \
	  ./target/release/lobby --bind 127.0.0.1:$$port --join-timeout 5m --join-rate 1000000 --join-burst 1000000 \
	    --redis redis://127.0.0.1:$$redis_port/ 2>$$out/lobby-$$port.log & pid=$$!; \
	  pids="$$pids $$pid"; nodes="$$nodes $$port:$$pid"; \
	  until curl -sf http://127.0.0.1:$$port/healthz >/dev/null; do \
	    kill -0 $$pid 2>/dev/null || fail "the lobby node on port $$port exited" $$out/lobby-$$port.log; sleep 0.1; done; \
	done; \
	size=$$(echo $$nodes | wc -w); redis_cpu=$$(cpu $$redis); started=$$(date +%s); \
	commit=$$(git describe --always --dirty 2>/dev/null || echo 'an unknown commit'); \
	echo "== $$size nodes on redis-server :$$redis_port, $(CLUSTER_SUBSCRIBERS) subscribers each"; \
	i=0; loads=; for node in $$nodes; do \
	  ./target/release/lobby-load --url http://127.0.0.1:$${node%:*} --pid $${node#*:} \
	    --subscribers $(CLUSTER_SUBSCRIBERS) --probes $(CLUSTER_PROBES) $(CLUSTER_LOAD_ARGS) \
	    --cluster-dir $$out/meet --cluster-size $$size --cluster-index $$i >$$out/load-$$i.txt & \
	  loads="$$loads $$!"; pids="$$pids $$!"; i=$$((i + 1)); \
	done; \
	status=0; for load in $$loads; do wait $$load || status=1; done; [ $$status = 0 ] || keep=1; \
	redis_cpu=$$(echo "$$(cpu $$redis) $$redis_cpu" | awk '{ printf "%.2f", $$1 - $$2 }'); \
	warnings=$$(cat $$out/lobby-*.log | grep -c -E ' (WARN|ERROR) ' || true); \
	[ $$warnings = 0 ] || { echo "== the nodes logged $$warnings warnings and errors; the first:"; \
	  grep -h -m 5 -E ' (WARN|ERROR) ' $$out/lobby-*.log; }; \
	i=0; for node in $$nodes; do echo "== load process $$i, node :$${node%:*}"; cat $$out/load-$$i.txt; i=$$((i + 1)); done; \
	grep -q '^result ' $$out/load-0.txt || fail "load process 0 printed no figures"; \
	sed -n '/^## N = 18000/,/^## /p' BENCHMARKS.md > $$out/single.txt; \
	value() { awk -v l="$$2" 'index($$0, l "  ") == 1 { v = substr($$0, length(l) + 1); sub(/^ +/, "", v); print v; exit }' "$$1"; }; \
	{ echo "# Benchmarks: a cluster"; echo; \
	  echo "Written by \`make bench-cluster\` on $$(date -u '+%Y-%m-%d %H:%M UTC'), $$(nproc) cores ($$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), $$(free -g | awk '/Mem:/ {print $$2}') GiB,"; \
	  echo "release build of $$commit:"; \
	  echo "$$size lobby nodes on one redis-server ($$(redis-server --version | sed 's/.*v=\([^ ]*\).*/\1/'), no persistence) and one lobby-load per node"; \
	  echo "with $(CLUSTER_SUBSCRIBERS) subscribers, all on this machine. Load process 0 sends $(CLUSTER_PROBES) probes, one after"; \
	  echo "another, to its node; every process times their arrival on its subscribers on the wall"; \
	  echo "clock. The burst's joins and leaves are shared out, each process sending its share to"; \
	  echo "its own node. The single-node figures are those of BENCHMARKS.md at N = 18000 (one"; \
	  echo "probe). See docs/performance.md for what each figure means."; \
	  echo; echo "redis-server CPU while the load ran: $$redis_cpu s over $$(( $$(date +%s) - started )) s. The nodes logged"; \
	  echo "$$warnings warnings and errors."; \
	  echo; echo "| figure | one node, N = 18000 | cluster, all nodes |"; echo "| --- | --- | --- |"; \
	  for row in \
	    'subscribers|cluster: subscribers, all nodes' \
	    'ramp: all N join and subscribe|cluster: ramp: all N join and subscribe, slowest' \
	    'fan-out of a join, p50|cluster: fan-out of a join, p50' \
	    'fan-out of a join, p99|cluster: fan-out of a join, p99' \
	    'fan-out of a join, max|cluster: fan-out of a join, max' \
	    'fan-out of a join, missing|cluster: fan-out of a join, missing' \
	    '|cluster: fan-out of a join, p50, node by node' \
	    '|cluster: fan-out of a join, p99, node by node' \
	    'fan-out of a leave, p50|cluster: fan-out of a leave, p50' \
	    'fan-out of a leave, p99|cluster: fan-out of a leave, p99' \
	    'fan-out of a leave, missing|cluster: fan-out of a leave, missing' \
	    'burst: joins, then as many leaves|cluster: burst: joins, then as many leaves' \
	    'burst: until every stream has every event|cluster: burst: until every stream has every event' \
	    'burst: deliveries per second|cluster: burst: deliveries per second' \
	    '|cluster: burst: joins and leaves answered per second' \
	    'burst: streams missing events|cluster: burst: streams missing events' \
	    'burst: failed requests|cluster: burst: failed requests' \
	    'violations (streams)|cluster: violations (streams)' \
	    'result|result'; do \
	    one=$$(value $$out/single.txt "$${row%%|*}"); all=$$(value $$out/load-0.txt "$${row#*|}"); \
	    label=$${row%%|*}; label=$${label:-$${row#*|cluster: }}; \
	    echo "| $$label | $${one:-–} | $${all:-–} |"; \
	  done; \
	  i=0; for node in $$nodes; do \
	    echo; echo "## Load process $$i, node :$${node%:*}"; echo; echo '```'; cat $$out/load-$$i.txt; echo '```'; i=$$((i + 1)); \
	  done; \
	} > BENCHMARKS-cluster.md; \
	echo "wrote BENCHMARKS-cluster.md"; exit $$status

# A statically linked Linux binary, target/dist/lobby, for a machine with no
# Rust and no libraries: glibc linked in by +crt-static (the musl target's
# standard library cannot be installed from the registries this machine
# reaches). The explicit --target keeps build scripts and proc-macros, which
# run at build time, dynamic; target/dist keeps these flags from rebuilding
# target/release. getrandom is told to call getrandom(2) through libc: linked
# statically it cannot look the function up, and would read /dev/urandom,
# which a bare chroot lacks. Then tests/hosting.rs checks it: ldd and file say
# static, it answers /healthz, and it reaches a redis-server by the name localhost.
DIST_TARGET ?= $(shell uname -m)-unknown-linux-gnu
DIST_RUSTFLAGS = -C target-feature=+crt-static --cfg getrandom_backend="linux_getrandom"
dist:
	RUSTFLAGS='$(DIST_RUSTFLAGS)' CARGO_TARGET_DIR=target/dist \
	  cargo build --release --locked --bin lobby --target $(DIST_TARGET)
	cp target/dist/$(DIST_TARGET)/release/lobby target/dist/lobby
	strip target/dist/lobby
	LOBBY_DIST_BINARY=$(CURDIR)/target/dist/lobby cargo test --test hosting -- --include-ignored --nocapture
	@ls -l target/dist/lobby

# A churn soak against a release build: a thousand clients join, subscribe,
# drop, reconnect and leave at random for SOAK_SECS, then every view must equal
# GET /users and the server's memory must be back. Prints its figures.
# (make test runs the same test for 10 s on a debug build.)
SOAK_SECS ?= 120
soak:
	LOBBY_SOAK_SECS=$(SOAK_SECS) cargo test --release --test soak -- --nocapture

# The cluster's chaos test (tests/chaos.rs) on a release build, CHAOS_SECS long:
# a redis-server and three lobby nodes, each reaching Redis through a proxy the
# test controls; twenty clients joining, streaming, resuming and leaving on
# random nodes; and overlapping faults, one every 0.4 to 2.6 s (a node SIGKILLed
# and restarted or SIGSTOPped, Redis restarted empty or from its append-only
# file or SIGSTOPped, a node's link to Redis cut). Prints the seed, each fault,
# each check and a report; fails on any broken invariant, keeping the logs.
# LOBBY_CHAOS_SEED=N replays a run's choices. Then the rolling restart: the nodes
# restarted one by one, no join or leave heard. make test runs both, 60 s of faults.
CHAOS_SECS ?= 600
chaos:
	LOBBY_CHAOS_SECS=$(CHAOS_SECS) cargo test --release --test chaos -- --nocapture --test-threads=1
