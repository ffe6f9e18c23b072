# Jetson edge image (Orin, JetPack 6.x): `lineside run` on the TensorRT backend. TensorRT, CUDA and
# their Python bindings come from the L4T JetPack base; the plan is built at first start from the
# artifact's ONNX on this very device (plans are specific to the GPU and TensorRT version), cached
# in the state volume, and rebuilt when the artifact's ONNX changes.
#   docker build -f deploy/containers/jetson.Dockerfile -t lineside-jetson .
#   docker run --rm --runtime nvidia -v $PWD/artifact:/artifact:ro -v lineside-state:/var/lib/lineside \
#       -p 5555-5556:5555-5556 lineside-jetson
ARG L4T_BASE=nvcr.io/nvidia/l4t-jetpack:r36.4.0
FROM ${L4T_BASE}
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    LINESIDE_ARTIFACT=/artifact LINESIDE_STATE=/var/lib/lineside
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3-pip python3-venv \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -c "import tensorrt; print('TensorRT', tensorrt.__version__)"
# --system-site-packages: the venv sees JetPack's tensorrt bindings (they are not on PyPI for L4T).
RUN python3 -m venv --system-site-packages /opt/lineside/venv
ENV PATH=/opt/lineside/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY runtime runtime
COPY kernels kernels
RUN pip install ".[runtime]" "pycuda>=2024.1" \
 && ! python -c "import torch" 2>/dev/null
COPY deploy/tensorrt /opt/lineside/deploy/tensorrt
COPY deploy/containers/jetson-entrypoint.sh /usr/local/bin/lineside-jetson-entrypoint
RUN chmod 0755 /usr/local/bin/lineside-jetson-entrypoint && rm -rf /src \
 && useradd --system --uid 10001 --groups video --home-dir /var/lib/lineside --create-home lineside
USER lineside
WORKDIR /var/lib/lineside
VOLUME ["/var/lib/lineside"]
EXPOSE 5555 5556
ENTRYPOINT ["/usr/local/bin/lineside-jetson-entrypoint"]
