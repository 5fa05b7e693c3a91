"""Online prediction models: which keys will be requested soon, and for how long to keep them.

Pure, synchronous, I/O-free code shared by the Faust agents and the offline
simulator (:mod:`pipeline.sim`), so what is measured offline is what runs online.
Every predictor speaks river's verbs (``learn_one``, ``predict_one``, ``clone``)
and is bounded by a number of tracked keys; :class:`WarmEngine` runs them all.
"""

from pipeline.models.base import Key, Predictor, deep_sizeof, stable_hash
from pipeline.models.engine import Candidate, EngineConfig, Reason, WarmEngine
from pipeline.models.ensemble import FEATURES, WarmScorer
from pipeline.models.frequency import DecayedFrequency
from pipeline.models.horizon import CacheHorizon
from pipeline.models.recency import InterArrival, KeyRhythm
from pipeline.models.rules import PrefetchRules
from pipeline.models.similarity import CoAccess, SequenceReplay, UserAffinity
from pipeline.models.temporal import TimeProfile, is_wall_clock
from pipeline.models.ttl import NewKeyReuse, SmartTTL

__all__ = [
    "FEATURES",
    "CacheHorizon",
    "Candidate",
    "CoAccess",
    "DecayedFrequency",
    "EngineConfig",
    "InterArrival",
    "Key",
    "KeyRhythm",
    "NewKeyReuse",
    "Predictor",
    "PrefetchRules",
    "Reason",
    "SequenceReplay",
    "SmartTTL",
    "TimeProfile",
    "UserAffinity",
    "WarmEngine",
    "WarmScorer",
    "deep_sizeof",
    "is_wall_clock",
    "stable_hash",
]
