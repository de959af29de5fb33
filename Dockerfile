# syntax=docker/dockerfile:1
# One image per backend for the single `hbac` binary; every pod (coordinator, workers) runs it.
#
#   docker build --target cpu  -t registry.example.com/hbac:0.1.0-cpu  .
#   docker build --target cuda -t registry.example.com/hbac:0.1.0-cuda .
#
# The CUDA build needs no CUDA toolkit: burn-cuda loads the driver (libcuda, from the node via
# the NVIDIA container toolkit) and NVRTC (from the CUDA runtime base below) at run time.
# CUDARC_CUDA_VERSION picks the CUDA API the binary is built against; keep it at or below the
# nodes' driver version (12.8 → 12080).

ARG RUST_VERSION=1.95
ARG CUDA_BASE=nvidia/cuda:12.8.1-runtime-ubuntu24.04

# ---- build: the release binary, one stage per backend (dependencies cached between builds)
FROM rust:${RUST_VERSION}-slim-bookworm AS build-base
WORKDIR /src
COPY . .

FROM build-base AS build-cpu
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin hbac \
 && install -D -m 0755 target/release/hbac /out/hbac

FROM build-base AS build-cuda
ARG CUDARC_CUDA_VERSION=12080
ENV CUDARC_CUDA_VERSION=${CUDARC_CUDA_VERSION}
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --features cuda --bin hbac \
 && install -D -m 0755 target/release/hbac /out/hbac

# ---- cpu: distroless (glibc, libgcc, CA certificates), no shell, non-root
FROM gcr.io/distroless/cc-debian12:nonroot AS cpu
COPY --from=build-cpu /out/hbac /usr/local/bin/hbac
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/hbac"]
CMD ["--help"]

# ---- cuda: NVIDIA's runtime image (libnvrtc, libcudart), non-root
FROM ${CUDA_BASE} AS cuda
ENV NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    HOME=/tmp
COPY --from=build-cuda /out/hbac /usr/local/bin/hbac
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/hbac"]
CMD ["--help"]
