"""The capture-method facts the adapter acts on (dualwrite/capture): each method that goes through the
adapter names exactly one thing the adapter does for it, and the facts agree with the older ones."""

from dualwrite.capture import METHODS


def _actions(m: object) -> list[str]:
    facts = ("notes_keys", "writes_before_commit", "mirrors_after_commit", "queues_keys")
    return [f for f in facts if getattr(m, f)]


def test_each_adapter_method_names_exactly_one_adapter_action() -> None:
    for m in METHODS.values():
        assert len(_actions(m)) == (1 if m.through_adapter else 0), m.name


def test_adapter_actions_agree_with_inline_and_key_logs() -> None:
    for m in METHODS.values():
        assert (m.writes_before_commit or m.mirrors_after_commit or m.queues_keys) is m.inline, m.name
        assert m.notes_keys is (m.through_adapter and m.key_log is not None), m.name
        assert m.in_call is (m.inline and not m.queues_keys), m.name
