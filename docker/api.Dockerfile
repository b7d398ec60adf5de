# The s4c API (and the one-off steps: migrations, model fetch, key creation). CPU only:
# the API never loads torch, but the package depends on it, so take the small CPU build.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 S4C_HOME=/data
WORKDIR /app
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0
COPY pyproject.toml README.md alembic.ini ./
COPY s4c_engine ./s4c_engine
COPY jobs ./jobs
COPY api ./api
COPY worker ./worker
COPY migrations ./migrations
COPY s4c ./s4c
RUN pip install .
VOLUME /data
EXPOSE 8000
CMD ["s4c", "api", "--host", "0.0.0.0", "--port", "8000", "--processes", "2", "--threads", "8"]
