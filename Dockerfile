# Image for the ELS batch-registration worker (also runs the migrations).
#   docker compose up            # see compose.yaml
#   docker build -t els-worker . && docker run --rm els-worker python worker.py --help
FROM python:3.11-slim

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

RUN useradd --system --uid 10001 --home-dir /app els
USER els

EXPOSE 9095
CMD ["python", "worker.py", "run"]
