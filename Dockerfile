# The worker image. The hot modules are compiled with mypyc at build time (setup.py) in a
# build stage that has a C compiler; the runtime image installs the resulting wheel.
FROM python:3.11 AS build
WORKDIR /app
COPY pyproject.toml setup.py README.md ./
COPY pipeline ./pipeline
COPY agents ./agents
COPY schemas ./schemas
RUN pip wheel --no-cache-dir --no-deps -w /dist .

FROM python:3.11-slim
COPY --from=build /dist /dist
RUN pip install --no-cache-dir /dist/*.whl \
    && python -c "import pipeline.models.engine as e; assert not e.__file__.endswith('.py'), e.__file__; print('compiled:', e.__file__)"
USER nobody
ENTRYPOINT []
CMD ["cachecast", "worker"]
