"""Engines and sessionmakers: the web app's sessions are dual-written, the nightly job's are not."""

from __future__ import annotations

import os

import sqlalchemy as sa
from sqlalchemy.orm import scoped_session, sessionmaker

from dualwrite.adapter import DualWriter, install
from dualwrite.spec import load_spec

engine = sa.create_engine(os.environ.get("APP_DATABASE_URL", "sqlite://"))

SessionLocal = sessionmaker(bind=engine, expire_on_commit=False)
"""The web application's sessions: installed below."""

web_session = scoped_session(SessionLocal)

NightlySession = sessionmaker(bind=engine)
"""The nightly job's sessions: nobody installed dualwrite on them (the bug the audit finds)."""


def start() -> DualWriter:
    writer = DualWriter.from_resolver(load_spec(os.path.join(os.path.dirname(__file__), "spec.yaml")))
    install(SessionLocal, writer)
    return writer
