"""Compare a recipe's Megatron model flags with the downloaded model's config.json.

The converter does not check them and turns wrong flags into silently bad weights (slime#1059).
"""
from __future__ import annotations

from slimeflow.recipes import HF_CONFIG_KEYS, Recipe


def _same(flag_value: str, config_value) -> bool:
    try:
        return float(flag_value) == float(config_value)
    except (TypeError, ValueError):
        return str(flag_value) == str(config_value)


def mismatches(recipe: Recipe, config: dict) -> list:
    """[(flag, recipe value, config key, config value)] for every flag that disagrees."""
    # some configs nest the text model (multimodal wrappers)
    cfg = config.get("text_config") if isinstance(config.get("text_config"), dict) else config
    out = []
    for flag, key in HF_CONFIG_KEYS.items():
        ours = recipe.model_flag(flag)
        if ours is None or key not in cfg:
            continue
        if not _same(ours, cfg[key]):
            out.append((flag, ours, key, cfg[key]))
    experts = cfg.get("num_experts", cfg.get("n_routed_experts"))
    if recipe.model_flag("--num-experts") is None and experts:
        out.append(("--num-experts", None, "num_experts", experts))
    return out


def explain(recipe: Recipe, config_path: str, config: dict) -> str | None:
    bad = mismatches(recipe, config)
    if not bad:
        return None
    parts = "; ".join(f"{flag} {ours} vs {key}={theirs}" for flag, ours, key, theirs in bad)
    return (f"recipe {recipe.name}'s model args do not match {config_path} ({parts}); the "
            f"converter would silently write bad weights, so fix the recipe or point hf_repo at "
            f"the model the recipe was written for.")
