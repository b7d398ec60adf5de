# One s4c generation worker per GPU. The compose file gives each container one GPU
# (device_ids), which the container sees as cuda:0, so the command says `--device cuda`.
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 S4C_HOME=/data DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv python3-pip \
 && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /app
# PyPI's Linux torch wheel is the CUDA build
RUN pip install torch==2.13.0
COPY pyproject.toml README.md alembic.ini ./
COPY s4c_engine ./s4c_engine
COPY jobs ./jobs
COPY api ./api
COPY worker ./worker
COPY migrations ./migrations
COPY s4c ./s4c
RUN pip install .
VOLUME /data
CMD ["s4c", "worker", "--device", "cuda"]
