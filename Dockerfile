# syntax=docker/dockerfile:1
# Multi-stage build of every Reflex binary: the workers (reflex-router, reflex-enricher,
# reflex-actor), the dead-letter reprocessor (reflex-reprocessor), reflexctl and reflex-registry,
# plus the example configs, topics and schemas.
#
#   docker build -t reflex:local .
#   docker run --rm reflex:local reflexctl --help
#
# The image runs `reflex-router` by default; pick another binary with the command, e.g.
# `reflex-actor --config /opt/reflex/crates/actor/actor.example.toml`. The working directory
# /opt/reflex mirrors the repo layout, so the workers' default paths (rules, bindings, topics/,
# avro/) resolve inside the image.

FROM rust:1.95-bookworm AS build
WORKDIR /src
# Only what the build reads (not target/ or .git): manifests, sources, schemas (include_str!).
COPY Cargo.toml Cargo.lock ./
COPY src src
COPY benches benches
COPY crates crates
COPY avro avro
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --workspace --bins \
    && mkdir -p /out \
    && cp target/release/reflex-router target/release/reflex-enricher target/release/reflex-actor \
          target/release/reflex-reprocessor target/release/reflexctl target/release/reflex-registry /out/

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates libssl3 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 reflex \
    && useradd --system --uid 10001 --gid reflex --no-create-home --shell /usr/sbin/nologin reflex
COPY --from=build /out/ /usr/local/bin/
WORKDIR /opt/reflex
COPY topics topics
COPY avro avro
COPY crates/router/rules crates/router/rules
COPY crates/enricher/enricher.example.toml crates/enricher/enricher.example.toml
COPY crates/actor/actor.example.toml crates/actor/actor.example.toml
# Older compose files and docs use /opt/reflex/rules.
RUN ln -s crates/router/rules /opt/reflex/rules
USER 10001:10001
# Set REFLEX_RUNTIME__HTTP_LISTEN=0.0.0.0:9090 to serve /metrics, /healthz, /readyz here.
EXPOSE 9090
CMD ["reflex-router"]
