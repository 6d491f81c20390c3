# OpenDPS in a container: docker build -t opendps . && docker run -p 443:443 -p 8883:8883 -p 5671:5671 -v opendps:/var/lib/opendps opendps
# Settings: mount /etc/opendps/opendps.toml, or pass OPENDPS_SECTION__KEY variables (-e).
# The operator CLI runs in the same container: docker exec <name> opendps dps connection-string

# Build stage: the release binary (OpenSSL linked dynamically, SQLite bundled).
FROM rust:1.95-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends pkg-config libssl-dev && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p opendps \
 && install -m 0755 target/release/opendps /opendps

# Run stage: the binary, OpenSSL, CA roots, a user of its own.
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libssl3 libcap2-bin \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --user-group --home-dir /var/lib/opendps --shell /usr/sbin/nologin opendps \
 && install -d -m 0700 -o opendps -g opendps /var/lib/opendps \
 && install -d -m 0755 /etc/opendps
COPY --from=build /opendps /usr/local/bin/opendps
# Bind 443, 8883 and 5671 as a user that is not root.
RUN setcap cap_net_bind_service=+ep /usr/local/bin/opendps \
 && apt-get purge -y libcap2-bin && apt-get autoremove -y
USER opendps
ENV OPENDPS_DATA_DIR=/var/lib/opendps
# The admin listener (plain HTTP: /metrics, /health/live, /health/ready) on the container's own
# interfaces, so a scraper on the container network reaches it; publish it only to the host's
# loopback, e.g. -p 127.0.0.1:9464:9464 (docs/operations.md).
ENV OPENDPS_ADMIN__ADDRESS=0.0.0.0
VOLUME ["/var/lib/opendps"]
# HTTPS (device + service + management API, MQTT over WebSockets), MQTT over TLS, AMQP over
# TLS, admin.
EXPOSE 443 8883 5671 9464
HEALTHCHECK --interval=30s --timeout=10s --start-period=30s CMD ["opendps", "dps", "show", "-o", "none"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["opendps"]
CMD ["serve"]
