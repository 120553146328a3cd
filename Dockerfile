# One image for every ringbid program: build on Debian 12, run on a slim Debian 12.
FROM debian:12 AS build
RUN apt-get update && apt-get install -y --no-install-recommends \
      build-essential pkg-config libuv1-dev libnng-dev libmbedtls-dev libprotobuf-c-dev \
      protobuf-c-compiler libpq-dev libsodium-dev libjansson-dev libbsd-dev uthash-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Makefile ./
COPY proto proto
COPY common common
COPY services services
RUN make -j"$(nproc)" all CFLAGS="-O2 -g"

FROM debian:12-slim
RUN apt-get update && apt-get install -y --no-install-recommends \
      libuv1 libnng1 libprotobuf-c1 libpq5 libsodium23 libjansson4 ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home /var/lib/ringbid ringbid \
    && mkdir -p /var/lib/ringbid && chown ringbid /var/lib/ringbid
COPY --from=build /src/bin/ /usr/local/bin/
COPY db /usr/local/db
ENV RINGBID_HOME=/var/lib/ringbid RINGBID_MIGRATIONS=/usr/local/db/migrations
USER ringbid
WORKDIR /var/lib/ringbid
