# lobby in a container: built as a static binary in Rust's image, then run
# from an empty one (scratch), as an unprivileged user. The image holds the
# binary and the CA certificates (for --webhook over HTTPS), nothing else.
#
#   docker build -t lobby .
#   docker run -p 3000:3000 lobby
#
# It listens on 0.0.0.0:$PORT (3000 here; platforms that set PORT win), so
# give flags as LOBBY_* variables or after the image's name. There is no
# HEALTHCHECK: scratch has no shell and no curl to run one with, so let the
# orchestrator ask GET /healthz itself (200 when up).

FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
# +crt-static links glibc statically. The explicit --target keeps build
# scripts and proc-macros (which run here, at build time) dynamic, as they
# must be. getrandom calls getrandom(2) rather than reading /dev/urandom.
# `make dist` builds the same way.
RUN target="$(uname -m)-unknown-linux-gnu" \
 && RUSTFLAGS='-C target-feature=+crt-static --cfg getrandom_backend="linux_getrandom"' \
    cargo build --release --locked --bin lobby --target "$target" \
 && cp "target/$target/release/lobby" /lobby \
 && strip /lobby \
 && ldd /lobby 2>&1 | grep -qE 'statically linked|not a dynamic executable'

FROM scratch
COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=build /lobby /lobby
# nobody: no shell, no home, no privileges.
USER 65534:65534
ENV PORT=3000
EXPOSE 3000
ENTRYPOINT ["/lobby"]
