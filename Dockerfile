# Multi-stage build of every Reflex binary (workers, reflexctl, reflex-registry).
FROM rust:1.86-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --workspace --bins

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates libssl3 \
    && rm -rf /var/lib/apt/lists/* && useradd --system --uid 10001 reflex
COPY --from=build /src/target/release/reflex-router /src/target/release/reflexctl \
     /src/target/release/reflex-registry /usr/local/bin/
COPY topics /opt/reflex/topics
COPY avro /opt/reflex/avro
COPY crates/router/rules /opt/reflex/rules
WORKDIR /opt/reflex
USER reflex
ENTRYPOINT ["reflex-router"]
