"""cachecast: a predictive cache warmer for Redis, driven by cache-access events on Kafka."""

from pipeline import _native

__version__ = "0.1.0"

#: ``"compiled"`` when the hot modules run as mypyc extensions, else ``"pure"`` or
#: ``"stale"`` (see :mod:`pipeline._native` and :mod:`pipeline.build_native`).
NATIVE_MODE = _native.install()

__all__ = ["NATIVE_MODE", "__version__"]
