# syntax=docker/dockerfile:1
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY app ./app
COPY migrations ./migrations
RUN python -m venv /opt/tidings \
 && /opt/tidings/bin/pip install --no-cache-dir --disable-pip-version-check .

FROM python:3.11-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends tini \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /data --create-home tidings
COPY --from=build /opt/tidings /opt/tidings
COPY hypercorn.toml /etc/tidings/hypercorn.toml
ENV PATH=/opt/tidings/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    TIDINGS_DATABASE_URL=sqlite+aiosqlite:////data/tidings.db
USER tidings
WORKDIR /data
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=3s CMD python -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2)" || exit 1
ENTRYPOINT ["/usr/bin/tini", "--"]
# API, worker and scheduler in one process; set TIDINGS_SECRET_KEY (and a PostgreSQL URL to scale out).
CMD ["tidings", "serve", "--host", "0.0.0.0", "--port", "8080"]
