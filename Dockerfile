# imagelb: Caddy with this plugin, running examples/Caddyfile.
#
#   docker build -t imagelb .
#   docker run -p 3000:3000 -p 8001:8001 -v imagelb-data:/data imagelb
#
# The build stage builds the binary with scripts/build.sh, the script .ci/run
# also runs, so the image is built the way CI builds and checks it.

# The Go major.minor of go.mod (.ci/run checks that they match).
FROM golang:1.26-bookworm AS build
# The image sets GOTOOLCHAIN=local; with auto, an image older than go.mod's
# patch release fetches the toolchain go.mod asks for instead of failing.
ENV GOTOOLCHAIN=auto
WORKDIR /src

# Modules first: this layer is rebuilt only when go.mod or go.sum change.
COPY go.mod go.sum ./
RUN go mod download

COPY . .
RUN CGO_ENABLED=0 scripts/build.sh /out/caddy

# The distroless image has no shell to create directories with, so they are made
# here and copied with the owner of the final image's user, nonroot (65532).
RUN mkdir -p /rootfs/data/caddy /rootfs/config/caddy \
	&& chown -R 65532:65532 /rootfs/data /rootfs/config

# distroless static: no shell, no package manager, no libc (the binary is
# static); it runs as nonroot, uid and gid 65532.
FROM gcr.io/distroless/static-debian12:nonroot

COPY --from=build /out/caddy /usr/bin/caddy
COPY --from=build /src/examples/Caddyfile /etc/caddy/Caddyfile

# Caddy's data directory is $XDG_DATA_HOME/caddy: the registry lives in
# /data/caddy/imagelb/registry.db (docs/durability.md). Its config directory
# (autosave.json) is $XDG_CONFIG_HOME/caddy. A new named volume starts as a copy
# of the image's directory, owner included, so nonroot can write to it; a bind
# mount keeps the host directory's owner and must be writable by 65532.
COPY --from=build --chown=65532:65532 /rootfs/data /data
COPY --from=build --chown=65532:65532 /rootfs/config /config
ENV XDG_DATA_HOME=/data XDG_CONFIG_HOME=/config
VOLUME ["/data", "/config"]

# The HEALTHCHECK needs an HTTP client, and the image has none: Caddy has no
# subcommand that makes a GET request, and distroless has neither shell nor curl.
# busybox's musl images are built with CONFIG_STATIC=y, so /bin/busybox runs
# alone, with no libc beside it; /bin/wget in that image is a hard link to it,
# so this copies the whole busybox binary. Busybox picks the applet from the
# name it is run as (argv[0]), so run as /usr/bin/wget it is wget.
COPY --from=busybox:1.36-musl /bin/wget /usr/bin/wget

# 3000: the platform's API and proxy; 8001: image 1's external port. 2019 is
# Caddy's admin API, but the example binds it to localhost:2019, which inside
# the container is the container's own loopback: publishing 2019 reaches
# nothing unless `admin` in the Caddyfile is changed (see docs/getting-started.md, Container
# image). The example's :3001 site and demo containers on :9001-:9004 listen
# too, and are not exposed.
EXPOSE 3000 2019 8001

# /health answers 200 while the site serves requests (a liveness check: it does
# not depend on the containers' health).
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s \
	CMD ["/usr/bin/wget", "-q", "-O", "/dev/null", "http://127.0.0.1:3000/health"]

USER 65532:65532
ENTRYPOINT ["/usr/bin/caddy"]
CMD ["run", "--config", "/etc/caddy/Caddyfile", "--adapter", "caddyfile"]
