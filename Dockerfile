# syntax=docker/dockerfile:1
# Fjord's image: `fjord` and `fjordctl` on a slim Debian, run as a non-root user. The Helm chart
# (helm/fjord) runs it with its ConfigMap's fjord.toml; alone, it is a single node:
#   docker build -t fjord . && docker run -p 9092:9092 -p 9644:9644 fjord

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# Only the two binaries and what they link: not the bench's or the tests' clients.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p fjord-broker -p fjord-cli --bins \
    && cp target/release/fjord target/release/fjordctl /usr/local/bin/

FROM debian:bookworm-slim
# The uid the chart's securityContext runs as.
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/fjord --shell /usr/sbin/nologin fjord \
    && mkdir -p /var/lib/fjord \
    && chown fjord:fjord /var/lib/fjord
COPY --from=build /usr/local/bin/fjord /usr/local/bin/fjordctl /usr/local/bin/
USER 10001:10001
VOLUME /var/lib/fjord
EXPOSE 9092 9192 9644
ENTRYPOINT ["/usr/local/bin/fjord"]
CMD ["--listen", "0.0.0.0:9092", "--advertised-listener", "localhost:9092", "--admin-listen", "0.0.0.0:9644", "--data-dir", "/var/lib/fjord/data"]
