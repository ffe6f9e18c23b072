# GPU fallback server image: `teacher serve` (torch + diffusers, CUDA wheels from the PyTorch index).
#   docker build -f deploy/containers/server.Dockerfile -t lineside-teacher .
#   docker run --rm --gpus all -v $PWD/teacher:/checkpoint:ro -p 5560:5560 lineside-teacher \
#       serve --checkpoint /checkpoint --bind tcp://0.0.0.0:5560 --curve-secret ... --allowed-keys ...
FROM python:3.11-slim
ARG TORCH_INDEX=https://download.pytorch.org/whl/cu128
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 HF_HUB_OFFLINE=1
RUN apt-get update \
 && apt-get install -y --no-install-recommends libgomp1 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /var/lib/lineside-teacher --create-home lineside
# torch first, from the CUDA index, at the version pyproject pins; then the teacher extra.
RUN pip install --index-url "$TORCH_INDEX" "torch==2.13.0"
WORKDIR /src
COPY pyproject.toml README.md ./
COPY runtime runtime
COPY kernels kernels
COPY teacher teacher
RUN pip install ".[teacher]" && rm -rf /src
USER lineside
WORKDIR /var/lib/lineside-teacher
EXPOSE 5560 9101
ENTRYPOINT ["teacher"]
# Off loopback the server refuses to bind without CURVE: mount keys (deploy/OPERATIONS.md) and add
# --curve-secret/--allowed-keys, or --insecure on a closed trial network (deploy/compose.yaml).
CMD ["serve", "--checkpoint", "/checkpoint", "--bind", "tcp://0.0.0.0:5560", "--metrics-port", "9101", "--metrics-host", "0.0.0.0", \
     "--curve-secret", "/etc/lineside/keys/teacher.key_secret", "--allowed-keys", "/etc/lineside/keys/allowed"]
