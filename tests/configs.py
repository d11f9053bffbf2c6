"""The committed configs of tests/data/configs (see make_configs.py there), as the Keras-free
graph-surgery tests read them: ``config(name)``, and ``facts(name)``, what Keras said about
it (``model.twin``: a twin's, kept with its model's facts)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

CONFIGS = Path(__file__).resolve().parent / "data" / "configs"


def config(name: str) -> dict[str, Any]:
    """A fresh copy of config ``name``: tests may change what they are given."""
    return json.loads((CONFIGS / f"{name}.json").read_text())


def facts(name: str) -> dict[str, Any]:
    model, _, twin = name.partition(".")
    found = json.loads((CONFIGS / f"{model}.facts.json").read_text())
    return found["twins"][twin] if twin else found
