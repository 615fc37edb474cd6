# avatarbot on a CUDA machine: the bot, a worker, or both in one (embedded mode).
#
#   docker build -t avatarbot .
#   docker run --gpus all --env-file bot.env \
#     -v avatarbot-hf:/var/lib/avatarbot/hf -v avatarbot-data:/var/lib/avatarbot/data \
#     avatarbot run
#
# (embedded mode: the bot renders too. A worker gets worker.env, without the Discord token:
# deploy/worker.env.example.)
#
# The weights (HF_HOME) and the data (SQLite database, AVATARBOT_DATA_DIR) live in volumes;
# download the weights into the first once (see README, "Deploying"). Secrets (the Discord
# token, the data key, the database password) come from the environment, never the image.
FROM nvidia/cuda:12.8.1-runtime-ubuntu22.04

ARG PYTHON=python3.11
# torch is installed first, from PyTorch's index for this CUDA version; the rest of the
# dependencies come pinned from constraints.txt (the versions CI tests).
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cu128
ARG EXTRAS=faces,postgres

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/avatarbot/venv \
    PATH=/opt/avatarbot/venv/bin:$PATH

# Python 3.11 from the deadsnakes PPA (Ubuntu 22.04 ships 3.10).
RUN apt-get update \
 && apt-get install -y --no-install-recommends software-properties-common gpg-agent \
 && add-apt-repository -y ppa:deadsnakes/ppa \
 && apt-get update \
 && apt-get install -y --no-install-recommends ${PYTHON} ${PYTHON}-venv libgomp1 \
 && apt-get purge -y software-properties-common gpg-agent && apt-get autoremove -y \
 && rm -rf /var/lib/apt/lists/* \
 && ${PYTHON} -m venv ${VIRTUAL_ENV}

WORKDIR /opt/avatarbot/src
COPY constraints.txt pyproject.toml README.md ./
RUN pip install --upgrade pip \
 && pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX}"
COPY bot ./bot
COPY engine ./engine
COPY db ./db
COPY kinds ./kinds
COPY migrations ./migrations
COPY deploy/healthcheck.py /opt/avatarbot/healthcheck.py
RUN pip install -c constraints.txt ".[${EXTRAS}]" \
 && avatarbot --help >/dev/null

# A non-root user owning only the two volumes.
RUN useradd --system --create-home --home-dir /var/lib/avatarbot --uid 10001 avatarbot \
 && mkdir -p /var/lib/avatarbot/hf /var/lib/avatarbot/data \
 && chown -R avatarbot:avatarbot /var/lib/avatarbot
USER avatarbot
WORKDIR /var/lib/avatarbot
# A real profile (the code's default too, said here so the image's choice is visible);
# random-weight ones render noise and `run`/`worker` refuse them without --allow-noise.
ENV HF_HOME=/var/lib/avatarbot/hf \
    AVATARBOT_DATA_DIR=/var/lib/avatarbot/data \
    AVATARBOT_ENGINE__PROFILE=sd15-ip-adapter-plus-face \
    AVATARBOT_OPS__LISTEN=0.0.0.0:9108
VOLUME ["/var/lib/avatarbot/hf", "/var/lib/avatarbot/data"]
# /healthz, /readyz and /metrics (Prometheus).
EXPOSE 9108

HEALTHCHECK --interval=30s --timeout=10s --start-period=120s --retries=3 \
  CMD ["python", "/opt/avatarbot/healthcheck.py"]

# SIGTERM stops claiming, hands running jobs back and exits 0 (give it time: stop_grace_period).
STOPSIGNAL SIGTERM
ENTRYPOINT ["avatarbot"]
CMD ["run"]
