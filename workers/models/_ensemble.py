"""The `ensemble` MIL head: K trained heads of one kind, their class probabilities averaged.

`slidemill train` writes one bundle per cross-validation fold and one `ensemble` bundle whose head
holds every fold's head (weights under `head.members.<k>.`), so a single bundle runs all of them.
The members' settings travel in the manifest's `head_kwargs` like any head's: `member` (the
registered head name), `member_kwargs` (its hyper-parameters as a JSON object, since
`head_kwargs` values must be scalars) and `n_members`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from slidemill.workers.models._heads import HEADS, MILOutput, check_bag

ENSEMBLE = "ensemble"
"""The registered name of the ensemble head."""


def member_kwargs_json(kwargs: Mapping[str, int | float | str | bool]) -> str:
    """A member's hyper-parameters as canonical JSON (sorted keys), for `head_kwargs`."""
    return json.dumps(dict(kwargs), sort_keys=True, separators=(",", ":"))


class EnsembleMIL(nn.Module):
    """The mean of K MIL heads' class probabilities (a probability-averaging ensemble).

    With p_k = softmax(logits_k) the K members' slide probabilities, the ensemble's slide logits
    are log((1/K) Σ_k p_k), so softmax(logits) is exactly the mean probability; per-tile logits
    are likewise the log of the mean per-tile probability; attention is the mean of the members'
    attention (still a distribution over tiles). Members that report every attention branch
    (CLAM-MB) have theirs averaged too.

    forward: (N, in_dim) → MILOutput(logits (C,), attention (N,), tile_logits (N, C),
    attention_all (K_branches, N) when every member gives one, else None).
    """

    def __init__(
        self,
        in_dim: int,
        n_classes: int,
        member: str = "abmil_gated",
        n_members: int = 2,
        member_kwargs: str = "{}",
    ) -> None:
        super().__init__()
        if member == ENSEMBLE:
            raise ValueError("an ensemble's members cannot themselves be ensembles")
        if n_members < 1:
            raise ValueError(f"n_members must be at least 1, got {n_members}")
        try:
            kwargs = json.loads(member_kwargs)
        except json.JSONDecodeError as err:
            raise ValueError(f"member_kwargs is not JSON: {err}") from err
        if not isinstance(kwargs, dict):
            raise ValueError(f"member_kwargs must be a JSON object, got {member_kwargs!r}")
        self.in_dim = in_dim
        self.n_classes = n_classes
        self.members = nn.ModuleList(
            HEADS.build(member, in_dim=in_dim, n_classes=n_classes, **kwargs)
            for _ in range(n_members)
        )

    def forward(self, features: torch.Tensor) -> MILOutput:
        check_bag(features, self.in_dim)
        outs: list[MILOutput] = [m(features) for m in self.members]
        log_k = math.log(len(outs))
        slide = torch.stack([torch.log_softmax(o.logits, dim=-1) for o in outs])  # (K, C)
        tiles = torch.stack([torch.log_softmax(o.tile_logits, dim=-1) for o in outs])  # (K, N, C)
        attention = torch.stack([o.attention for o in outs]).mean(dim=0)  # (N,)
        branches = [o.attention_all for o in outs]
        attention_all = None
        if all(b is not None for b in branches):
            stacked = [b for b in branches if b is not None]
            if len({tuple(b.shape) for b in stacked}) == 1:
                attention_all = torch.stack(stacked).mean(dim=0)
        return MILOutput(
            logits=torch.logsumexp(slide, dim=0) - log_k,
            attention=attention,
            tile_logits=torch.logsumexp(tiles, dim=0) - log_k,
            attention_all=attention_all,
        )


def ensemble_of(
    heads: Sequence[nn.Module],
    *,
    in_dim: int,
    n_classes: int,
    member: str,
    member_kwargs: Mapping[str, int | float | str | bool],
) -> EnsembleMIL:
    """An `EnsembleMIL` whose members carry copies of `heads`' weights (all of kind `member`)."""
    with torch.random.fork_rng(devices=[]):  # the throwaway initialisation leaves no trace
        ensemble = EnsembleMIL(
            in_dim, n_classes, member, len(heads), member_kwargs_json(member_kwargs)
        )
    for target, source in zip(ensemble.members, heads, strict=True):
        target.load_state_dict(source.state_dict(), strict=True)
    return ensemble.eval()


@HEADS.register(ENSEMBLE)
def _ensemble(
    in_dim: int,
    n_classes: int,
    member: str = "abmil_gated",
    n_members: int = 2,
    member_kwargs: str = "{}",
) -> nn.Module:
    return EnsembleMIL(in_dim, n_classes, member, n_members, member_kwargs)
