# imagejob-operator: one image for all roles (`controller`, `worker`, `facade`, `run`).
# Multi-stage: build with the Rust toolchain, run on a small distroless base as non-root.
# (It cannot be built on the project's development machines, which have no Docker engine.)

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
RUN cargo build --release --locked --bin imagejob-operator \
 && strip target/release/imagejob-operator

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/imagejob-operator /usr/local/bin/imagejob-operator
# distroless "nonroot" is uid/gid 65532, matching the chart's podSecurityContext.
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/imagejob-operator"]
CMD ["--help"]
