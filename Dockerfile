# syntax=docker/dockerfile:1
# One image per backend for the single `hbac` binary; every pod (coordinator, workers) runs it.
#
#   docker build --target cpu  -t registry.example.com/hbac:0.1.0-cpu  .
#   docker build --target cuda -t registry.example.com/hbac:0.1.0-cuda .
#
# The CUDA build needs no CUDA toolkit: burn-cuda loads the driver (libcuda, from the node via
# the NVIDIA container toolkit) and NVRTC at run time. CUDARC_CUDA_VERSION picks the CUDA API
# the binary is built against and the NVRTC it loads (libnvrtc.so.13 for 13000,
# libnvrtc.so.12 for 12xxx): keep it at or below the nodes' driver version and match it to the
# base image. CUDA 12 nodes:
#   docker build --target cuda --build-arg CUDARC_CUDA_VERSION=12080 \
#     --build-arg CUDA_BASE=nvidia/cuda:12.8.1-devel-ubuntu24.04 -t …:0.1.0-cuda12 .

ARG RUST_VERSION=1.95
# A -devel image, not -runtime: cubecl compiles every kernel at run time with NVRTC, and each
# kernel includes <cuda_runtime.h> (and CCCL's headers), which only the -devel images carry.
# Without them the first kernel compile fails on the worker (`hbac worker` checks this at
# start and says so).
ARG CUDA_BASE=nvidia/cuda:13.0.1-devel-ubuntu24.04

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
ARG CUDARC_CUDA_VERSION=13000
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

# ---- cuda: NVIDIA's devel image (libnvrtc and its builtins, the CUDA headers), non-root.
# Compiled kernels and autotune results are kept in HBAC_KERNEL_CACHE (mount a volume there
# to keep them across pod restarts).
FROM ${CUDA_BASE} AS cuda
ENV NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    CUDA_PATH=/usr/local/cuda \
    LD_LIBRARY_PATH=/usr/local/cuda/lib64 \
    HBAC_KERNEL_CACHE=/tmp/hbac-kernels \
    HOME=/tmp
COPY --from=build-cuda /out/hbac /usr/local/bin/hbac
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/hbac"]
CMD ["--help"]
