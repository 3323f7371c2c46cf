"""A process of the app that dies right after its authoritative commit (the parent SIGKILLs it).

argv: strategy prefix old_url new_url. With ``outbox`` it writes through dualwrite's ORM integration; with
``triggers`` it is the unchanged application (plain ORM, no dualwrite at all). Either way it prints
``COMMITTED <id>`` once the transaction has committed and then waits to be killed, so nothing after the
commit (no in-process mirror, no clean shutdown) can have run.
"""

from __future__ import annotations

import sys
import time

from sqlalchemy.orm import sessionmaker

from app.endpoints import NOW
from app.harness import shop_spec
from app.models import make_models
from dualwrite.adapter import AdapterOptions, DualWriter, install
from dualwrite.config import StoreRef
from dualwrite.store import Store


def main() -> None:
    strategy, prefix, old_url, new_url = sys.argv[1:5]
    models = make_models(prefix)
    old, new = Store(StoreRef("old", old_url)), Store(StoreRef("new", new_url))
    sessions = sessionmaker(bind=old.engine)
    if strategy == "outbox":
        _, spec = shop_spec(prefix, "old", "new", strategy)
        writer = DualWriter(spec, old, new, options=AdapterOptions(background=False))

        def finish(*_args: object) -> None:  # right after the commit: report, then hang until killed
            print(f"COMMITTED {created[0]}", flush=True)
            time.sleep(3600)

        writer.finish = finish  # type: ignore[method-assign]
        install(sessions, writer)
    created: list[int] = []
    with sessions() as s:
        c = models.Customer(tenant="crash", name="survivor", created_at=NOW, version=1)
        s.add(c)
        s.flush()
        created.append(int(c.id))
        s.commit()
    print(f"COMMITTED {created[0]}", flush=True)
    time.sleep(3600)


if __name__ == "__main__":
    main()
