# One image for every ringbid program: built on Debian 12, run on a slim Debian 12.
#
#   docker build -t ringbid:latest .
#   docker run --rm ringbid:latest ringbid-broker --help
#
# The image holds ringbid-{broker,auction,presence,billing,agent}, the `ringbid` CLI and the
# database migrations; which program a container runs is its command. Configuration comes from
# the environment (docs/delivery.md, deploy/README.md).

FROM debian:12 AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
       build-essential pkg-config make libuv1-dev libnng-dev libmbedtls-dev libprotobuf-c-dev \
       protobuf-c-compiler libpq-dev libsodium-dev libjansson-dev libbsd-dev uthash-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# .dockerignore lets through only what the build reads: Makefile, proto/, common/, services/,
# db/ and mk/ (optional rule fragments).
COPY . .
# CFLAGS is left to the Makefile: setting it here would drop the warnings and include paths the
# Makefile appends.
RUN make -j"$(nproc)" all \
    && strip --strip-unneeded bin/*

FROM debian:12-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
       libuv1 libnng1 libprotobuf-c1 libpq5 libsodium23 libjansson4 ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 ringbid \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/ringbid --no-create-home \
       --shell /usr/sbin/nologin ringbid \
    && mkdir -p /var/lib/ringbid/broker /etc/ringbid/tls \
    && chown -R ringbid:ringbid /var/lib/ringbid
COPY --from=build /src/bin/ /usr/local/bin/
# `ringbid db migrate` looks for <its directory>/../db/migrations: /usr/local/db/migrations.
COPY --from=build /src/db/migrations/ /usr/local/db/migrations/
# The broker's journal lives under RINGBID_HOME (/var/lib/ringbid/broker/journal): mount a
# volume there so that calls and unacknowledged CDRs survive the container.
ENV RINGBID_HOME=/var/lib/ringbid \
    RINGBID_MIGRATIONS=/usr/local/db/migrations
USER 10001:10001
WORKDIR /var/lib/ringbid
# Call API, service links, agents (TLS), CDRs; admin HTTP (/healthz, /readyz, /metrics).
EXPOSE 7101 7102 7103 7104 7105 7106 7181 7182 7183 7184
STOPSIGNAL SIGTERM
CMD ["ringbid", "--help"]
