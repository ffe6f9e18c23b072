# x86 edge image: `lineside run` on CPU (ONNX Runtime), no torch in the image.
#   docker build -f deploy/containers/edge.Dockerfile -t lineside-edge .
#   docker run --rm -v $PWD/artifact:/artifact:ro -v lineside-state:/var/lib/lineside -p 5555-5556:5555-5556 \
#       lineside-edge run --artifact /artifact --ingress tcp://0.0.0.0:5555 --verdicts tcp://0.0.0.0:5556 ...
#   docker exec CONTAINER lineside status --to ipc:///var/lib/lineside/control.sock   # control: inside only
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY runtime runtime
COPY kernels kernels
# Only the edge packages go into the wheel; teacher/ and distill/ are not copied.
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update \
 && apt-get install -y --no-install-recommends libgomp1 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /var/lib/lineside --create-home lineside
COPY --from=build /wheels /wheels
# The `runtime` extra only: numpy, opencv-headless, pyzmq, onnxruntime, pydantic, prometheus-client, rich,
# cryptography (artifact signatures).
RUN pip install "$(ls /wheels/lineside-*.whl)[runtime]" && rm -rf /wheels \
 && python -c "import runtime.protocol, runtime.manifest, kernels.dispatch" \
 && ! python -c "import torch" 2>/dev/null
USER lineside
WORKDIR /var/lib/lineside
VOLUME ["/var/lib/lineside"]
# ingress, verdicts, Prometheus metrics
EXPOSE 5555 5556 9100
ENTRYPOINT ["lineside"]
# Off loopback the daemon refuses to bind without CURVE: mount the keys made by `lineside keys`
# (deploy/OPERATIONS.md) at /etc/lineside/keys, or pass --insecure for a closed trial network.
CMD ["run", "--artifact", "/artifact", "--ingress", "tcp://0.0.0.0:5555", "--verdicts", "tcp://0.0.0.0:5556", \
     "--control", "ipc:///var/lib/lineside/control.sock", "--journal", "/var/lib/lineside/journal.sqlite", "--metrics-port", "9100", "--metrics-host", "0.0.0.0", \
     "--ingress-secret", "/etc/lineside/keys/edge.key_secret", "--verdicts-secret", "/etc/lineside/keys/edge.key_secret", \
     "--allowed-keys", "/etc/lineside/keys/allowed"]
