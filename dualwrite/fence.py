"""The key of a write fence in a published state's ``overrides``: one name shared by the control plane that
publishes and reads it (dualwrite.control) and the workflow that sets it (workflows.migration).

Its own module because workflow code may import only light modules (dualwrite.control pulls in the stores)."""

from __future__ import annotations

__all__ = ["FENCE"]

FENCE = "fence"
"""Key of the published overrides that fences writes while authority moves between the stores:
``{"all": true}`` (the whole migration) or ``{"tenants": ["acme"]}`` (one tenant's flip)."""
