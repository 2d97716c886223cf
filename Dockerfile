# Tasktracker: one image for the web server (uvicorn), the Celery worker, beat and migrations.
# docker-compose.yml runs each of them from it; the default command is the web server.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    STATIC_ROOT=/app/staticfiles \
    STATIC_MANIFEST=1

RUN groupadd --system --gid 1000 app \
    && useradd --system --uid 1000 --gid app --create-home --home-dir /home/app app

WORKDIR /app

# Runtime dependencies only (not requirements-dev.txt), in a layer of their own that stays
# cached while only the code changes.
COPY requirements.txt .
RUN pip install -r requirements.txt

COPY . .

# collectstatic runs without DATABASE_URL, so the settings take the embedded default: a
# built-in SECRET_KEY that never reaches the image's environment, and nothing is connected
# to. STATIC_MANIFEST=1 writes hashed, compressed files that ServeStatic serves at run time.
# .run/ (SQLite's directory in that default, beat's schedule here) belongs to the app user;
# static/ is made in case a checkout has no files there yet (git keeps no empty directory).
RUN mkdir -p static \
    && python manage.py collectstatic --noinput \
    && rm -rf .run && mkdir .run && chown app:app .run

USER app

EXPOSE 8000

# uvicorn in WEB_CONCURRENCY processes (uvicorn reads it for --workers; about one per core
# the web server may use): one Python process serves one request at a time. The same flags
# as `make run` (tasktracker/embedded.py, web_server_command): Channels rejects the lifespan
# scope, and X-Forwarded-Proto is Django's to trust (TRUST_X_FORWARDED_PROTO), not uvicorn's.
ENV WEB_CONCURRENCY=2
CMD ["uvicorn", "tasktracker.asgi:application", "--host", "0.0.0.0", "--port", "8000", \
     "--lifespan", "off", "--no-proxy-headers"]
