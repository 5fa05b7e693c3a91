"""Offline trace simulator: replay real cache traces through LRU with cachecast's warming.

It imports the very same model classes as the Faust agents
(:class:`pipeline.models.WarmEngine`), so what is measured offline is what runs online.
"""

from pipeline.sim.cache import ReplayCounts, RuleSource, WarmPolicy, replay_belady, replay_lru
from pipeline.sim.policies import POLICIES, CachecastWarmer, SuccessorWarmer
from pipeline.sim.runner import DEFAULT_SIZES, DEFAULT_SWEEP, SimResult, run, sweep
from pipeline.sim.traces import (
    CsvMapping,
    Trace,
    TraceFormat,
    next_access_of,
    read_csv,
    read_jsonl,
    read_oracle_general,
    read_trace,
)

__all__ = [
    "DEFAULT_SIZES",
    "DEFAULT_SWEEP",
    "POLICIES",
    "CachecastWarmer",
    "CsvMapping",
    "ReplayCounts",
    "RuleSource",
    "SimResult",
    "SuccessorWarmer",
    "Trace",
    "TraceFormat",
    "WarmPolicy",
    "next_access_of",
    "read_csv",
    "read_jsonl",
    "read_oracle_general",
    "read_trace",
    "replay_belady",
    "replay_lru",
    "run",
    "sweep",
]
