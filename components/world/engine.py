"""The world's engine: sessions of requests through the funnel, vectorised over sessions.

One simulated day: every active user starts one session at an hour drawn from the daily
traffic curve ``load(h) = 1 + 0.7·cos(2π(h − 20.5)/24)`` (mean 1, evening peak). All sessions
of the day advance together, one request per step, until every user has left.

One request of user u in state (h, f) — interest vector and fatigue:

    pool      R distinct videos (recall)
    a_ui      = α·u·v_i + q_i + w_h·h·v_i − f           true affinity, state included (|u|=|v|=1)
    quotas    (q_match, q_pre) ← policy.allocate
    matching  keeps the top q_match of policy.match_scores over the pool
    pre-rank  keeps the top q_pre of policy.prerank_scores over the matched
    ranking   slate of K ← policy.rank over the pre-ranked (propensities logged)
    feedback  per shown video, components.world.feedback
    live      policy.live decides; the user enters with
              P = σ(b_enter + log ℓ_u + c·u·w_j) and watches
              60·m·ℓ_u·LogNormal(0, s) seconds; a skipped injection annoys (A = 1)
    cost      c_match·R + c_pre·q_match + c_rank·q_pre                 compute units
    state     f ← max(0, f + φ0 + φ_b·Σ b_i + φ_h·Σ hate − φ_s·Σ interactions)
              h ← ρ·h + (1 − ρ)·Σ_i frac_i·v_i / Σ_i frac_i
    leave     P = σ(β0 + β_a·act_u + β_f·f + β_w·(mean frac − ½) + β_i·Σ interactions
                    + β_h·Σ hate + β_l·A), forced after max_requests

After the session, the user returns the next day with
``P = σ(r0 + r_a·act_u + r_w·log(1 + watch minutes) + r_l·annoy rate + r_h·hate rate)``;
a user absent today returns with ``σ(r_idle + act_u)``. Retention is scored by this
probability (its expectation), not by a coin flip, so A/B comparisons are low-variance.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.special import expit

from components.world.config import WorldConfig, find_kuairand_dir
from components.world.feedback import ItemTraits, exact_probabilities, sample_feedback
from components.world.policies import Observation, Policy
from components.world.population import Population, build_population

ASPECT_COLUMNS = ("click", "like", "follow", "comment", "forward", "hate", "long_view")


def traffic_curve() -> np.ndarray:
    """Relative request load per hour of day (mean 1), peaking in the evening."""
    h = np.arange(24)
    return 1.0 + 0.7 * np.cos(2.0 * np.pi * (h - 20.5) / 24.0)


@dataclass
class RolloutResult:
    """True online metrics of a policy (a simulated A/B arm).

    ``sessions`` has one row per session (user_id, live_watch_3w, n_requests, watch_s,
    app_s, live_s, return_p, compute_cost and one column per aspect total);
    ``hourly_cost`` the compute units spent per (day, hour).
    """

    policy: str
    sessions: pd.DataFrame
    hourly_cost: pd.DataFrame

    def summary(self) -> dict[str, float]:
        s = self.sessions
        out = {
            "sessions": float(len(s)),
            "session_watch_time_s": float(s["watch_s"].mean()),
            "depth": float(s["n_requests"].mean()),
            "app_time_s": float(s["app_s"].mean()),
            "live_watch_time_s": float(s["live_s"].mean()),
            "retention": float(s["return_p"].mean()),
            "compute_cost_per_request": float(s["compute_cost"].sum() / s["n_requests"].sum()),
            "peak_hourly_cost": float(self.hourly_cost["cost"].max()),
        }
        for a in ASPECT_COLUMNS:
            out[f"{a}_per_session"] = float(s[a].mean())
        return out


@dataclass
class _Recorder:
    """Collects per-step arrays when a simulation is written out as a data set."""

    columns: dict[str, dict[str, list[np.ndarray]]] = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(list))
    )

    def add(self, table: str, **cols: np.ndarray) -> None:
        for k, v in cols.items():
            self.columns[table][k].append(np.asarray(v))

    def frame(self, table: str) -> pd.DataFrame:
        out = {}
        for k, parts in self.columns.get(table, {}).items():
            a = np.concatenate(parts)
            out[k] = list(a) if a.ndim == 2 else a  # 2-D: one list per row (pools)
        return pd.DataFrame(out)


class World:
    """A seeded simulated platform: population (fixed by the seed) and its dynamics."""

    def __init__(
        self, config: WorldConfig, seed: int = 0, kuairand_dir: Path | str | None = "auto"
    ) -> None:
        """``kuairand_dir``: real KuaiRand-Pure feature files; ``"auto"`` finds them
        (:func:`find_kuairand_dir`), ``None`` synthesises features."""
        if kuairand_dir == "auto":
            kuairand_dir = find_kuairand_dir()
        self.config = config
        self.seed = seed
        pop_seq, sim_seq = np.random.SeedSequence(seed).spawn(2)
        self._sim_seed = sim_seq
        self.pop: Population = build_population(
            config, np.random.default_rng(pop_seq), kuairand_dir
        )
        self.hour_load = traffic_curve()
        steps = np.arange(1, self.pop.n_videos)
        self._strides = steps[np.gcd(steps, self.pop.n_videos) == 1]
        self._traits = ItemTraits(
            bait=self.pop.bait, appeal=self.pop.appeal, duration_ms=self.pop.duration_ms
        )

    # ------------------------------------------------------------------ public API
    def rollout(self, policy: Policy, seed: int = 0, days: int | None = None) -> RolloutResult:
        """Run ``policy`` online for ``days`` and return its true metrics (a simulated A/B arm).

        The same ``seed`` gives every policy the same first-day visitors and start hours
        (common random numbers); later days depend on the policy through retention.
        """
        rng = np.random.default_rng([seed, 7919])
        sessions, hourly = self._simulate(policy, rng, days or self.config.days, recorder=None)
        return RolloutResult(policy.name, sessions, hourly)

    def generate(
        self, policy: Policy | None = None, days: int | None = None
    ) -> tuple[dict[str, pd.DataFrame], RolloutResult]:
        """Simulate the logging policy (or ``policy``) and return the raw logged tables."""
        policy = policy or Policy()
        rng = np.random.default_rng(self._sim_seed)
        recorder = _Recorder()
        sessions, hourly = self._simulate(policy, rng, days or self.config.days, recorder)
        self.last_sessions = sessions
        tables = {name: recorder.frame(name) for name in recorder.columns}
        return tables, RolloutResult(policy.name, sessions, hourly)

    def production_scores(
        self, stage: str, user_idx: np.ndarray, items: np.ndarray, rng: np.random.Generator
    ) -> np.ndarray:
        """The simulated platform's production model at ``stage`` (match, pre, rank).

        ``s = α·u'·v + q + bias_stage·b + noise_stage·N(0, 1)``: it knows the video's quality
        and the user's static taste ``u'`` (``u`` itself unless
        ``funnel.production_taste_share`` < 1, then only part of the taste that the user
        features do not explain) with stage-dependent error, not the session state, and the
        pre-ranking and ranking models over-rate clickbait (they learnt from clicks).
        """
        f = self.config.funnel
        noise, bait_bias = {
            "match": (f.match_noise, 0.0),
            "pre": (f.pre_noise, 0.5 * f.rank_bait_bias),
            "rank": (f.rank_noise, f.rank_bait_bias),
        }[stage]
        static = self._static_affinity(user_idx, items, self.pop.production_pref)
        return static + bait_bias * self.pop.bait[items] + noise * rng.standard_normal(items.shape)

    def true_affinity(
        self, user_idx: np.ndarray, items: np.ndarray, interest: np.ndarray, fatigue: np.ndarray
    ) -> np.ndarray:
        """``a_ui = α·u·v_i + q_i + w_h·h·v_i − f`` for a batch (B,) × (B, n)."""
        w = self.config.session.interest_weight
        v = self.pop.video_vec[items]
        return (
            self._static_affinity(user_idx, items)
            + w * np.einsum("bd,bnd->bn", interest, v)
            - fatigue[:, None]
        )

    # ------------------------------------------------------------------ internals
    def _static_affinity(
        self, user_idx: np.ndarray, items: np.ndarray, pref: np.ndarray | None = None
    ) -> np.ndarray:
        """``α·u·v + q`` with the users' true taste (or ``pref``, e.g. the production one)."""
        u = (self.pop.user_pref if pref is None else pref)[user_idx]
        v = self.pop.video_vec[items]
        scale = self.config.affinity_scale
        return scale * np.einsum("bd,bnd->bn", u, v) + self.pop.quality[items]

    def _pools(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """R distinct videos per request: a random arithmetic progression modulo n_videos.

        With a stride coprime to n_videos, ``(start + stride·k) mod n`` never repeats, so
        pools are duplicate-free without a per-row sampling loop; video ids are a random
        draw of the catalogue, so the progression carries no meaning.
        """
        n_videos, r = self.pop.n_videos, self.config.funnel.pool_size
        start = rng.integers(0, n_videos, size=(n, 1))
        stride = rng.choice(self._strides, size=(n, 1))
        return (start + stride * np.arange(r)[None, :]) % n_videos

    def _simulate(
        self,
        policy: Policy,
        rng: np.random.Generator,
        days: int,
        recorder: _Recorder | None,
    ) -> tuple[pd.DataFrame, pd.DataFrame]:
        sp = self.config.session
        act = self.pop.activity
        active = rng.random(self.config.n_users) < expit(act)
        session_rows: list[pd.DataFrame] = []
        hourly_rows: list[pd.DataFrame] = []
        next_session_id = 0
        next_request_id = [0]
        for day in range(days):
            users = np.flatnonzero(active)
            start_hour = rng.choice(24, size=len(users), p=self.hour_load / self.hour_load.sum())
            sess, hourly_cost = self._run_day(
                policy, rng, day, users, start_hour, next_session_id, next_request_id, recorder
            )
            hourly_rows.append(
                pd.DataFrame({"day": day, "hour": np.arange(24), "cost": hourly_cost})
            )
            next_session_id += len(users)
            returned_p = sess["return_p"].to_numpy()
            idle_p = expit(sp.idle_return_bias + act)
            p_next = idle_p.copy()
            p_next[users] = returned_p
            active = rng.random(self.config.n_users) < p_next
            sess["returned_next_day"] = active[users].astype(np.int64)
            session_rows.append(sess)
        sessions = pd.concat(session_rows, ignore_index=True)
        hourly = pd.concat(hourly_rows, ignore_index=True)
        return sessions, hourly

    def _run_day(
        self,
        policy: Policy,
        rng: np.random.Generator,
        day: int,
        users: np.ndarray,
        start_hour: np.ndarray,
        first_session_id: int,
        next_request_id: list[int],
        recorder: _Recorder | None,
    ) -> tuple[pd.DataFrame, np.ndarray]:
        cfg, f, sp, lp = self.config, self.config.funnel, self.config.session, self.config.live
        n = len(users)
        d = cfg.dim
        session_id = first_session_id + np.arange(n)
        interest = np.zeros((n, d))
        fatigue = np.zeros(n)
        clock_s = start_hour * 3600.0 + rng.uniform(0, 3600, size=n)
        alive = np.ones(n, dtype=bool)
        stats = {k: np.zeros(n) for k in ("n_requests", "watch_s", "app_s", "live_s", "cost")}
        stats |= {k: np.zeros(n) for k in ASPECT_COLUMNS}
        stats["annoy"] = np.zeros(n)
        history = np.zeros((n, 6))
        hourly = np.zeros(24)
        position = 0
        while alive.any():
            idx = np.flatnonzero(alive)
            b = len(idx)
            u = users[idx]
            hour = (clock_s[idx] // 3600).astype(np.int64) % 24
            st_interest, st_fatigue = interest[idx], fatigue[idx]

            def truth(items: np.ndarray, u=u, hi=st_interest, fa=st_fatigue) -> np.ndarray:
                return self.true_affinity(u, items, hi, fa)

            obs = Observation(
                user_id=u,
                day=day,
                hour=hour,
                position=np.full(b, position),
                history=history[idx].copy(),
                live_watch_3w=self.pop.users["live_watch_3w"].to_numpy()[u],
                hour_load=self.hour_load[hour],
                truth=truth,
            )
            pool = self._pools(b, rng)
            quotas = policy.allocate(obs, self, rng)
            _check_quotas(quotas.q_match, quotas.q_pre, f.pool_size, f.slate_size)
            rows = np.arange(b)[:, None]

            # matching: top q_match of the pool
            m_scores = policy.match_scores(obs, pool, self, rng)
            m_rank = _ranks(m_scores)
            matched = m_rank < quotas.q_match[:, None]
            # pre-ranking: top q_pre of the matched
            p_scores = policy.prerank_scores(obs, pool, self, rng)
            p_rank = _ranks(np.where(matched, p_scores, -np.inf))
            preranked = p_rank < quotas.q_pre[:, None]
            # ranking over the pre-ranked, packed into (b, max q_pre) columns
            width = int(quotas.q_pre.max())
            cand_cols = np.argsort(p_rank, axis=1, kind="stable")[:, :width]
            cand_mask = np.arange(width)[None, :] < quotas.q_pre[:, None]
            cand_items = pool[rows, cand_cols]
            decision = policy.rank(obs, cand_items, cand_mask, self, rng)
            shown_items = cand_items[rows, decision.slate]

            affinity = truth(shown_items)
            traits = self._traits_of(shown_items)
            fb = sample_feedback(affinity, traits, cfg.feedback, rng)

            # live slot
            live_items = rng.integers(0, cfg.n_live, size=b)
            live = policy.live(obs, live_items, self, rng)
            match = np.einsum("bd,bd->b", self.pop.user_pref[u], self.pop.live_vec[live_items])
            ell = self.pop.live_affinity[u]
            p_enter = expit(lp.enter_bias + np.log(ell) + lp.enter_match * match)
            entered = live.inject & (rng.random(b) < p_enter)
            minutes = np.minimum(
                lp.watch_minutes * ell * rng.lognormal(0.0, lp.watch_sigma, size=b),
                lp.max_watch_minutes,
            )
            live_s = np.where(entered, 60.0 * minutes, np.where(live.inject, lp.skip_seconds, 0.0))
            annoyed = live.inject & ~entered

            # accounting
            watch_s = fb.play_ms.sum(axis=1) / 1000.0
            app_s = watch_s + live_s + sp.seconds_between_requests
            cost = (
                f.cost_match * f.pool_size
                + f.cost_pre * quotas.q_match
                + f.cost_rank * quotas.q_pre
            )
            np.add.at(hourly, hour, cost)
            interactions = (fb.like + fb.comment + fb.follow + fb.forward).sum(axis=1)
            hates = fb.hate.sum(axis=1)
            mean_frac = fb.watch_fraction.mean(axis=1)

            # state transition and leaving
            bait_sum = self.pop.bait[shown_items].sum(axis=1)
            fatigue[idx] = np.maximum(
                0.0,
                st_fatigue
                + sp.fatigue_step
                + sp.fatigue_bait * bait_sum
                + sp.fatigue_hate * hates
                - sp.fatigue_relief * interactions,
            )
            w = fb.watch_fraction[:, :, None]
            watched_vec = (w * self.pop.video_vec[shown_items]).sum(axis=1) / w.sum(axis=1)
            interest[idx] = sp.interest_decay * st_interest + (1 - sp.interest_decay) * watched_vec
            p_leave = expit(
                sp.leave_bias
                + sp.leave_activity * self.pop.activity[u]
                + sp.leave_fatigue * fatigue[idx]
                + sp.leave_watch * (mean_frac - 0.5)
                + sp.leave_interactions * interactions
                + sp.leave_hate * hates
                + sp.leave_live_annoy * annoyed
            )
            leaves = (rng.random(b) < p_leave) | (position + 1 >= sp.max_requests)

            if recorder is not None:
                self._record(
                    recorder,
                    next_request_id,
                    session_id[idx],
                    u,
                    day,
                    hour,
                    position,
                    pool,
                    m_scores,
                    p_scores,
                    matched,
                    preranked,
                    cand_cols,
                    cand_items,
                    cand_mask,
                    decision,
                    shown_items,
                    fb,
                    affinity,
                    quotas,
                    cost,
                    live,
                    live_items,
                    live_s,
                    app_s,
                    ~leaves,
                    obs,
                    rng,
                )

            stats["n_requests"][idx] += 1
            stats["watch_s"][idx] += watch_s
            stats["app_s"][idx] += app_s
            stats["live_s"][idx] += np.where(entered, live_s, 0.0)
            stats["cost"][idx] += cost
            stats["annoy"][idx] += annoyed
            for a in ASPECT_COLUMNS:
                stats[a][idx] += getattr(fb, a).sum(axis=1)
            history[idx] += np.stack(
                [watch_s, np.zeros(b), interactions, hates, entered, annoyed], axis=1
            )
            history[idx, 1] = mean_frac
            clock_s[idx] += app_s
            alive[idx[leaves]] = False
            position += 1

        nreq = stats["n_requests"]
        return_p = expit(
            sp.return_bias
            + sp.return_activity * self.pop.activity[users]
            + sp.return_watch * np.log1p(stats["watch_s"] / 60.0)
            + sp.return_live_annoy * stats["annoy"] / nreq
            + sp.return_hate * stats["hate"] / nreq
        )
        sessions = pd.DataFrame(
            {
                "session_id": session_id,
                "user_id": users,
                "day": day,
                "start_hour": start_hour,
                "live_watch_3w": self.pop.users["live_watch_3w"].to_numpy()[users],
                "n_requests": nreq.astype(np.int64),
                "watch_s": stats["watch_s"],
                "app_s": stats["app_s"],
                "live_s": stats["live_s"],
                "compute_cost": stats["cost"],
                "return_p": return_p,
                **{a: stats[a] for a in ASPECT_COLUMNS},
            }
        )
        return sessions, hourly

    def _traits_of(self, items: np.ndarray) -> ItemTraits:
        return ItemTraits(
            bait=self.pop.bait[items],
            appeal=self.pop.appeal[items],
            duration_ms=self.pop.duration_ms[items],
        )

    def _record(
        self,
        rec: _Recorder,
        next_request_id: list[int],
        session_id: np.ndarray,
        u: np.ndarray,
        day: int,
        hour: np.ndarray,
        position: int,
        pool: np.ndarray,
        m_scores: np.ndarray,
        p_scores: np.ndarray,
        matched: np.ndarray,
        preranked: np.ndarray,
        cand_cols: np.ndarray,
        cand_items: np.ndarray,
        cand_mask: np.ndarray,
        decision: object,
        shown_items: np.ndarray,
        fb: object,
        affinity: np.ndarray,
        quotas: object,
        cost: np.ndarray,
        live: object,
        live_items: np.ndarray,
        live_s: np.ndarray,
        app_s: np.ndarray,
        continues: np.ndarray,
        obs: Observation,
        rng: np.random.Generator,
    ) -> None:
        cfg, f = self.config, self.config.funnel
        b, k = shown_items.shape
        rid = next_request_id[0] + np.arange(b)
        next_request_id[0] += b
        rows = np.arange(b)[:, None]

        rec.add(
            "requests",
            request_id=rid,
            session_id=session_id,
            user_id=u,
            day=np.full(b, day),
            hour=hour,
            position_in_session=np.full(b, position),
            q_match=quotas.q_match,
            q_pre=quotas.q_pre,
            quota_propensity=quotas.propensity,
            compute_cost=cost,
            live_injected=live.inject.astype(np.int64),
            live_item_id=self.pop.n_videos + live_items,
            live_propensity=live.propensity,
            live_play_time_ms=1000.0 * live_s,
            app_time_ms=1000.0 * app_s,
            session_continues=continues.astype(np.int64),
            is_random=decision.is_random.astype(np.int64),
        )
        stage = matched.astype(np.int64) + preranked
        stage[rows, cand_cols[rows, decision.slate]] = 3
        rec.add(
            "pools",
            request_id=rid,
            item_ids=pool,
            match_score=m_scores,
            pre_score=p_scores,
            stage=stage,
        )
        truth = exact_probabilities(affinity, self._traits_of(shown_items), cfg.feedback)
        rec.add(
            "impressions",
            request_id=np.repeat(rid, k),
            user_id=np.repeat(u, k),
            item_id=shown_items.ravel(),
            position=np.tile(np.arange(k), b),
            propensity=decision.propensity.ravel(),
            is_click=fb.click.ravel(),
            is_like=fb.like.ravel(),
            is_follow=fb.follow.ravel(),
            is_comment=fb.comment.ravel(),
            is_forward=fb.forward.ravel(),
            is_hate=fb.hate.ravel(),
            long_view=fb.long_view.ravel(),
            play_time_ms=fb.play_ms.ravel(),
            duration_ms=self.pop.duration_ms[shown_items].ravel(),
        )
        _add_truth(rec, np.repeat(rid, k), shown_items.ravel(), 1, affinity.ravel(), truth)

        # non-impressions: ranked but not shown, a random sample per request
        shown_mask = np.zeros_like(cand_mask)
        shown_mask[rows, decision.slate] = True
        unshown = cand_mask & ~shown_mask
        noise = np.where(unshown, rng.random(unshown.shape), np.inf)
        n_keep = min(f.non_impressions_per_request, unshown.shape[1])
        pick = np.argsort(noise, axis=1)[:, :n_keep]
        valid = np.take_along_axis(unshown, pick, axis=1)
        r_idx = np.broadcast_to(rows, pick.shape)[valid]
        cols = pick[valid]
        scores = decision.scores
        logging_rank = _ranks(np.where(cand_mask, scores, -np.inf))
        ni_items = cand_items[r_idx, cols]
        rec.add(
            "non_impressions",
            request_id=rid[r_idx],
            item_id=ni_items,
            logging_score=scores[r_idx, cols],
            rank=logging_rank[r_idx, cols],
        )
        ni_aff = obs.truth(cand_items)[r_idx, cols]
        ni_truth = exact_probabilities(ni_aff, self._traits_of(ni_items), cfg.feedback)
        _add_truth(rec, rid[r_idx], ni_items, 0, ni_aff, ni_truth)


def _add_truth(
    rec: _Recorder,
    request_id: np.ndarray,
    item_id: np.ndarray,
    shown: int,
    affinity: np.ndarray,
    probs: dict[str, np.ndarray],
) -> None:
    rec.add(
        "truth",
        request_id=request_id,
        item_id=item_id,
        shown=np.full(len(item_id), shown),
        affinity=affinity,
        **{f"p_{k}": v.ravel() for k, v in probs.items() if k != "play_ms"},
        expected_play_ms=probs["play_ms"].ravel(),
    )


def _ranks(scores: np.ndarray) -> np.ndarray:
    """0-based descending rank of every column within its row (ties by column order)."""
    order = np.argsort(-scores, axis=1, kind="stable")
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(scores.shape[1])[None, :], axis=1)
    return ranks


def _check_quotas(q_match: np.ndarray, q_pre: np.ndarray, pool_size: int, k: int) -> None:
    bad = (q_match > pool_size) | (q_pre > q_match) | (q_pre < k)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"quotas must satisfy pool_size ({pool_size}) >= q_match >= q_pre >= K ({k}); "
            f"got q_match={q_match[i]}, q_pre={q_pre[i]} (request {i} of the batch)"
        )
