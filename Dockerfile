# Image for the ELS batch-registration worker (also runs the migrations).
#   docker compose up --build --wait     # see compose.yaml
#   docker build -t els-worker . && docker run --rm els-worker python worker.py --help
# PYTHON_IMAGE: the base; make test-compose builds on an offline stand-in of it.
ARG PYTHON_IMAGE=python:3.11-slim
FROM ${PYTHON_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Runtime dependencies first (from pyproject.toml), so code edits reuse this layer.
COPY pyproject.toml ./
RUN python -c "import subprocess, sys, tomllib; \
deps = tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']; \
subprocess.check_call([sys.executable, '-m', 'pip', 'install', *deps])"

COPY els_migrate.py worker.py ./
COPY els_worker ./els_worker
COPY migrations ./migrations
COPY sql ./sql

# Not root: the worker needs no privilege inside its container.
RUN useradd --system --uid 10001 --home-dir /app els
USER 10001

EXPOSE 9095
# /healthz on the metrics port (ELS_METRICS_PORT): 200 while the consumer loop and the
# database answer (README, "HTTP"); anything else, or no answer, is unhealthy.
HEALTHCHECK --interval=5s --timeout=5s --start-period=10s --retries=12 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('ELS_METRICS_PORT', '9095'), timeout=3)"]
# Exec form: python is PID 1 and gets SIGTERM itself on `docker stop` (clean shutdown:
# the micro-batch in hand and its offsets are committed, README "Shutdown").
CMD ["python", "worker.py", "run"]
