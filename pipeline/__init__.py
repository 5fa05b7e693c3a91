"""cachecast: a predictive cache warmer for Redis, driven by cache-access events on Kafka."""

__version__ = "0.1.0"

__all__ = ["__version__"]
