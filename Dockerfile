# The tether image: every service runs from it (`tether gateway`, `tether presence-service`,
# `tether notifier`, `tether demo-agent`); settings come from TETHER_* environment
# variables (docs/deploy.md). Runs as an unprivileged user (uid 10001), logs JSON to stderr.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TETHER_LOG_FORMAT=json
WORKDIR /app
COPY pyproject.toml README.md ./
COPY shared ./shared
COPY services ./services
RUN pip install . \
    && rm -rf /app/build /app/*.egg-info \
    && useradd --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin \
       --uid 10001 --user-group tether
# Numeric, so an orchestrator can verify it is not root (runAsNonRoot).
USER 10001:10001
# gateway, presence, notifier and demo agent ops ports (compose.yaml sets them).
EXPOSE 8080 8081 8082 8083
ENTRYPOINT ["tether"]
CMD ["gateway"]
