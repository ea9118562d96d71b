# flow-agent container image.
#
#   docker build -t flow-agent .
#   docker run -d --name flow-agent --read-only --tmpfs /tmp \
#     -v flow-agent-state:/var/lib/flow-agent \
#     -v "$PWD/pairing-token:/run/secrets/flow-agent/pairing-token:ro" \
#     -e FLOW_AGENT_PAIRING_TOKEN_FILE=/run/secrets/flow-agent/pairing-token \
#     --stop-timeout 30 flow-agent
#
# See docs/deploy.md ("Container").

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- builder: a wheel of the project, installed into a venv at its final path
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY agent ./agent
COPY controlplane ./controlplane
# The venv is built at /opt/flow-agent, the path it runs from: a venv is not
# relocatable. pip byte-compiles every module here, in the builder, because
# the runtime's root filesystem is read-only. pip itself is not needed at
# run time, so it leaves the venv.
RUN python -m pip wheel --no-deps --wheel-dir /wheels . \
    && python -m venv /opt/flow-agent \
    && /opt/flow-agent/bin/pip install --no-cache-dir /wheels/*.whl \
    && /opt/flow-agent/bin/python -m pip uninstall --yes pip \
    && /opt/flow-agent/bin/flow-agent --version

# ---- runtime
FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="flow-agent" \
      org.opencontainers.image.description="Self-hosted runtime agent for flow/v1 flows" \
      org.opencontainers.image.licenses="Apache-2.0"

# A fixed UID/GID (10001) so volume ownership and Kubernetes runAsUser agree.
# The state directory is the only place the agent writes (besides /tmp).
RUN groupadd --system --gid 10001 flow-agent \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
       --home-dir /var/lib/flow-agent --shell /usr/sbin/nologin flow-agent \
    && install -d -m 0700 -o 10001 -g 10001 /var/lib/flow-agent \
    && install -d -m 0755 /etc/flow-agent

COPY --from=builder /opt/flow-agent /opt/flow-agent
COPY packaging/agent.toml /etc/flow-agent/agent.toml

# PYTHONDONTWRITEBYTECODE: the root filesystem is read-only; everything was
# byte-compiled in the builder. FLOW_AGENT_STATE_DIR: the volume below (the
# agent's own default for a non-root user would be under $HOME).
ENV PATH=/opt/flow-agent/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONFAULTHANDLER=1 \
    FLOW_AGENT_CONFIG=/etc/flow-agent/agent.toml \
    FLOW_AGENT_STATE_DIR=/var/lib/flow-agent

VOLUME ["/var/lib/flow-agent"]
WORKDIR /var/lib/flow-agent
USER 10001:10001

# The local API stays on 127.0.0.1:8355 unless FLOW_AGENT_API_LISTEN says
# otherwise (any other address requires an API token).
EXPOSE 8355

HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["flow-agent", "health"]

# The agent is PID 1 and handles SIGTERM itself: it drains running runs for
# up to drain_timeout (20 s), persists the rest and exits 0. It starts no
# child processes, so no init (tini) is needed to reap zombies. Give it time:
# docker stop --time 30 / --stop-timeout 30 (Docker's default is 10 s).
STOPSIGNAL SIGTERM

# `flow-agent run` pairs on its first start from FLOW_AGENT_PAIRING_TOKEN or
# FLOW_AGENT_PAIRING_TOKEN_FILE and ignores them once paired (the identity is
# on the volume), so restarts are idempotent. Other commands run the same
# way: docker run --rm -v flow-agent-state:/var/lib/flow-agent IMAGE status
ENTRYPOINT ["flow-agent"]
CMD ["run"]
