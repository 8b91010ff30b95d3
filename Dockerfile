# The tether image: every service runs from it (`tether gateway`, `tether demo-agent`, ...).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY shared ./shared
COPY services ./services
RUN pip install . && useradd --create-home --uid 10001 tether
USER tether
EXPOSE 8080
ENTRYPOINT ["tether"]
CMD ["gateway"]
