# The worker image. The hot modules are compiled with mypyc in a build stage that has a
# C compiler; the runtime image only gets the compiled extensions and the sources.
FROM python:3.11 AS native
WORKDIR /app
COPY pyproject.toml README.md ./
COPY pipeline ./pipeline
COPY agents ./agents
COPY schemas ./schemas
RUN pip install --no-cache-dir "mypy>=1.8,<2" && python -m pipeline.build_native

FROM python:3.11-slim
WORKDIR /app
COPY --from=native /app /app
RUN pip install --no-cache-dir . && python -c "import pipeline; print('modules:', pipeline.NATIVE_MODE)"
USER nobody
ENTRYPOINT []
CMD ["cachecast", "worker"]
