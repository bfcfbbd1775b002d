"""Status blocks derived from specs (what `moxin models` shows beside each Model document)."""

from __future__ import annotations

from typing import Any

from orchestrator.estimate.parameters import count_parameters, weight_bytes
from orchestrator.spec.formats import FORMATS
from orchestrator.spec.model import Model


def model_status(model: Model) -> dict[str, Any]:
    arch = model.spec.architecture
    assert arch is not None, "the loader resolves configFile into an architecture"
    params = count_parameters(arch)
    variants = []
    for v in model.spec.variants:
        served = weight_bytes(arch, v, include_mtp=False)
        variants.append({
            "name": v.name,
            "weightsBytes": served,
            # An online-quantized variant is stored as its 16-bit source checkpoint.
            "checkpointBytes": weight_bytes(arch, v.model_copy(update={"formats": {"default": v.vector_format}})
                                            if v.quantize_on_load else v),
            "bitsPerWeight": round(served * 8 / params.total, 3),
            "formats": {k: f"{f} ({FORMATS[f].bits_per_weight:g} bits)" for k, f in v.formats.items()},
        })
    return {"parameters": params.to_json(), "variants": variants}
