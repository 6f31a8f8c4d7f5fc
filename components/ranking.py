"""The ranking models relayrec trains, gates and serves, behind one loader.

Two families share one scoring interface — ``score(user_ids, item_ids, hour, position[,
history])`` → higher is better, and ``temperature`` for the Plackett–Luce policy:

- :class:`components.training.TrainedRanker` — the supervised multi-task ranker (behaviour
  cloning, Wide & Deep, DeepFM); saved as ``model.pt`` + ``ranker.json``;
- :class:`components.agents.TrainedAgents` — the MMRF ranking agents, their ablations and
  TSCAC; saved as ``agents.pt`` + ``agents.json``; they also read the session so far.

:func:`load_ranking_model` tells them apart by the files in the directory, so a registered
model needs no side information to be gated or served.
"""

from __future__ import annotations

from pathlib import Path

from components.agents import TrainedAgents
from components.training import META_FILE, TrainedRanker

RankingModel = TrainedRanker | TrainedAgents

KIND_RANKER = "multitask_ranker"
KIND_AGENTS = "ranking_agents"


def model_kind(model: RankingModel) -> str:
    """``multitask_ranker`` or ``ranking_agents`` (the registry's ``kind`` label)."""
    return KIND_AGENTS if isinstance(model, TrainedAgents) else KIND_RANKER


def method_name(model: RankingModel) -> str:
    """The method a model implements: the agents' variant (``mmrf``, ``mmrf_co``, …,
    ``tscac``) or the ranker's architecture (``mlp`` is behaviour cloning)."""
    if isinstance(model, TrainedAgents):
        return model.name
    return "bc" if model.config.architecture == "mlp" else model.config.architecture


def uses_history(model: RankingModel) -> bool:
    """Whether the model's scores depend on the session so far (``features.HISTORY_COLUMNS``)."""
    return isinstance(model, TrainedAgents)


def load_ranking_model(path: str | Path) -> RankingModel:
    """Load the ranking model saved in ``path`` (either family, by its meta file)."""
    path = Path(path)
    if (path / "agents.json").exists():
        return TrainedAgents.load(path)
    if (path / META_FILE).exists():
        return TrainedRanker.load(path)
    found = sorted(p.name for p in path.iterdir()) if path.is_dir() else []
    raise FileNotFoundError(
        f"{path} holds no saved ranking model: expected {META_FILE} (TrainedRanker.save) or "
        f"agents.json (TrainedAgents.save); found {found or 'nothing'}"
    )
