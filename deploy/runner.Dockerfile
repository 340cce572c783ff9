# The image Forge's sandboxes run (`docker` and `kubernetes` runtimes), and Forge itself in
# deploy/kubernetes: Python 3.11, git, Forge with its `kubernetes` extra, a user `forge`
# (1000:1000). Build from the repository root:
#
#   docker build -f deploy/runner.Dockerfile -t forge-runner:latest .
#
# Nothing is written outside /tmp, the workspace and the runner's state directory, so the
# container runs with a read-only root filesystem.
FROM python:3.11-slim

RUN apt-get update \
    && apt-get install -y --no-install-recommends git ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 1000 forge \
    && useradd --uid 1000 --gid 1000 --create-home --shell /bin/bash forge

WORKDIR /opt/forge/src
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install --no-cache-dir ".[kubernetes]" \
    && rm -rf /opt/forge/src

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 1000:1000
WORKDIR /workspace
ENTRYPOINT ["python", "-m", "forge.runner"]
