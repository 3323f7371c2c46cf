"""The worker shadow sample's activity name and its argument / result (pydantic, no I/O).

With ``triggers`` no application adapter reads both stores, so before a cutover gate is evaluated the
workflow asks the worker to sample rows itself (``activities/sample.py``). The result holds counts only;
the samples reach the gate through ``dualwrite_stats`` like every application instance's statistics.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from workflows.models import SpecCarrier

SAMPLE_SHADOW = "sample_shadow"


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore")


class ShadowSampleInput(SpecCarrier):
    samples: int = Field(default=0, ge=0, description="rows to compare over all tables; 0: the gate's "
                                                     "min_shadow_samples (at least 100)")
    wait_seconds: float = Field(default=10.0, ge=0, description="how long recently changed keys may wait for "
                                                                "the relay before they are compared anyway")


class ShadowSampleResult(_Model):
    compared: int = 0
    match: int = 0
    mismatch: dict[str, int] = Field(default_factory=dict, description="by class: missing, extra, "
                                                                       "field_different")
    in_flight: int = Field(default=0, description="differing rows whose key waits in a key log again")
    recent: int = Field(default=0, description="recently changed keys among those compared")
    exhaustive: bool = Field(default=False, description="every row of every table was compared (the tables "
                                                        "hold fewer rows than the sample size)")
    relay_lag_seconds: float | None = Field(default=None, description="age of the oldest change-log entry")
    seconds: float = 0.0
