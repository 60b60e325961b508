# Cluster image for diffinv (Run:AI / Kubernetes): the CUDA build of PyTorch from the official image, the
# project installed editable at /workspace/diffinv (the path scripts/runai/submit.py expects).
#   docker build -t <registry>/diffinv:<tag> .
#   docker run --gpus all --rm <registry>/diffinv:<tag> diffinv predict --help
ARG BASE_IMAGE=pytorch/pytorch:2.7.1-cuda12.8-cudnn9-runtime
FROM ${BASE_IMAGE}

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MPLBACKEND=Agg

WORKDIR /workspace/diffinv

# dependencies first (cached while only the code changes); the image's CUDA torch is pinned so that pip
# never replaces it with another build; requirements-no-deps.txt (taming, whose metadata pulls torchvision,
# which the project never imports) goes in without dependencies
COPY pyproject.toml README.md LICENSE requirements-no-deps.txt ./
RUN python -c "import torch; print(f'torch=={torch.__version__}')" > /tmp/constraints.txt \
 && mkdir -p diffinv lightning_modules datamodules \
 && touch diffinv/__init__.py lightning_modules/__init__.py datamodules/__init__.py \
 && pip install -c /tmp/constraints.txt -e ".[test,blackhole]" \
 && pip install --no-deps -r requirements-no-deps.txt

COPY . .
RUN pip install -c /tmp/constraints.txt --no-deps -e . \
 && python -c "import diffinv, lightning_modules.cli, datamodules.base; print('diffinv ok')"

CMD ["diffinv", "--help"]
