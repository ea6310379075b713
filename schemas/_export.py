"""Export the contracts as JSON Schema files for other lab systems."""

from __future__ import annotations

import json
from pathlib import Path

from slidemill.schemas._models import SCHEMA_MODELS


def write_json_schemas(out_dir: Path) -> list[Path]:
    """Write one `<name>.schema.json` per model into `out_dir`; return the paths written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, model in SCHEMA_MODELS.items():
        path = out_dir / f"{name}.schema.json"
        path.write_text(json.dumps(model.model_json_schema(), indent=2) + "\n")
        written.append(path)
    return written
