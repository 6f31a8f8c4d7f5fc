"""The per-impression feedback model: correlated multi-aspect responses and play time.

Given the affinity ``a`` of a user (in a session state) for a video, a hidden per-impression
match ``ε ~ N(0, 1)`` makes every aspect move together (the collaborative relation MMRF builds
on):

    e = a + s·ε                                                 engagement
    P(click)   = σ(b_click + e + β_bait·b_i)
    P(like)    = σ(b_like + κ_like·e + appeal_like_i)           (comment, follow, forward alike)
    P(hate)    = σ(b_hate + κ_hate·e + γ_bait·b_i)              κ_hate < 0
    logit f    = w0 + w_e·e + w_b·b_i + w_d·log(dur_i/20 s) + w_c·comment + w_l·like + σ_w·ξ
    play_ms    = dur_i · cap · σ(logit f),       ξ ~ N(0, 1)
    long_view  = play_ms ≥ min(dur_i, 18 s)

Commenting and liking raise the watch fraction, so a model that predicts them predicts watch
time better. :func:`exact_probabilities` integrates ε and ξ out (Gauss–Hermite quadrature and
the normal CDF) to give each impression's true aspect probabilities and expected play time —
the Bayes-optimal predictor given the world's state, against which learned simulators are
measured.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import expit, logit, ndtr

from components.world.config import FeedbackParams

ASPECTS = ("click", "like", "follow", "comment", "forward", "hate")


@dataclass(frozen=True)
class ItemTraits:
    """Latent traits of the candidates, arrays broadcastable against the affinity."""

    bait: np.ndarray
    appeal: np.ndarray  # (..., 4): like, comment, follow, forward
    duration_ms: np.ndarray


@dataclass(frozen=True)
class Feedback:
    """Sampled responses, each an array of the affinity's shape."""

    click: np.ndarray
    like: np.ndarray
    follow: np.ndarray
    comment: np.ndarray
    forward: np.ndarray
    hate: np.ndarray
    long_view: np.ndarray
    play_ms: np.ndarray
    watch_fraction: np.ndarray


def _aspect_logits(e: np.ndarray, t: ItemTraits, p: FeedbackParams) -> dict[str, np.ndarray]:
    return {
        "click": p.click_bias + e + p.bait_click * t.bait,
        "like": p.like_bias + p.like_slope * e + t.appeal[..., 0],
        "comment": p.comment_bias + p.comment_slope * e + t.appeal[..., 1],
        "follow": p.follow_bias + p.follow_slope * e + t.appeal[..., 2],
        "forward": p.forward_bias + p.forward_slope * e + t.appeal[..., 3],
        "hate": p.hate_bias + p.hate_slope * e + p.bait_hate * t.bait,
    }


def _watch_mean(
    e: np.ndarray, t: ItemTraits, p: FeedbackParams, comment: np.ndarray, like: np.ndarray
) -> np.ndarray:
    return (
        p.watch_bias
        + p.watch_slope * e
        + p.watch_bait * t.bait
        + p.watch_duration * np.log(t.duration_ms / 20_000.0)
        + p.watch_comment * comment
        + p.watch_like * like
    )


def sample_feedback(
    affinity: np.ndarray, traits: ItemTraits, params: FeedbackParams, rng: np.random.Generator
) -> Feedback:
    """Draw one response per (user, video) pair of ``affinity``'s shape."""
    e = affinity + params.noise_scale * rng.standard_normal(affinity.shape)
    logits = _aspect_logits(e, traits, params)
    draws = {k: (rng.random(affinity.shape) < expit(v)).astype(np.int64) for k, v in logits.items()}
    mu = _watch_mean(e, traits, params, draws["comment"], draws["like"])
    frac = params.watch_cap * expit(mu + params.watch_noise * rng.standard_normal(affinity.shape))
    play = frac * traits.duration_ms
    long_view = (play >= np.minimum(traits.duration_ms, params.long_view_ms)).astype(np.int64)
    return Feedback(**draws, long_view=long_view, play_ms=play, watch_fraction=frac)


def exact_probabilities(
    affinity: np.ndarray, traits: ItemTraits, params: FeedbackParams, nodes: int = 10
) -> dict[str, np.ndarray]:
    """True ``P(aspect)``, ``P(long_view)`` and ``E[play_ms]`` given the affinity.

    ε is integrated with ``nodes``-point Gauss–Hermite quadrature; given ε the comment and
    like draws are enumerated (4 cases) and ξ is integrated in closed form for
    ``P(long_view) = Φ((μ − logit(θ/cap))/σ_w)`` with ``θ = min(dur, 18 s)/dur``, and by a
    second quadrature for ``E[cap·σ(μ + σ_w·ξ)]``.
    """
    x, w = np.polynomial.hermite_e.hermegauss(nodes)  # probabilists': weight exp(-x²/2)
    w = w / w.sum()
    out = {k: np.zeros_like(affinity, dtype=np.float64) for k in (*ASPECTS, "long_view", "play_ms")}
    theta = np.minimum(traits.duration_ms, params.long_view_ms) / traits.duration_ms
    threshold = logit(theta / params.watch_cap)
    xi, wxi = np.polynomial.hermite_e.hermegauss(6)
    wxi = wxi / wxi.sum()
    xi_shape = (-1,) + (1,) * affinity.ndim
    for xk, wk in zip(x, w, strict=True):
        e = affinity + params.noise_scale * xk
        probs = {k: expit(v) for k, v in _aspect_logits(e, traits, params).items()}
        for k in ASPECTS:
            out[k] += wk * probs[k]
        for c in (0, 1):
            pc = probs["comment"] if c else 1.0 - probs["comment"]
            for lk in (0, 1):
                pl = probs["like"] if lk else 1.0 - probs["like"]
                mu = _watch_mean(e, traits, params, np.float64(c), np.float64(lk))
                weight = wk * pc * pl
                out["long_view"] += weight * ndtr((mu - threshold) / params.watch_noise)
                frac = params.watch_cap * np.tensordot(
                    wxi, expit(mu + params.watch_noise * xi.reshape(xi_shape)), axes=1
                )
                out["play_ms"] += weight * frac * traits.duration_ms
    return out
