"""The crosscoder lens's Result: every latent's class, the model-specific latents' contexts and
tokens, and the token rankings the diffing benchmark reads.

The contract of this lens:

* ``to_frame()`` - one row per latent (norms, Δ, decoder cosine, Latent Scaling betas and
  ratios, class and why);
* ``top_tokens(k, source="tuned_only")`` - token ids the method surfaces, best first (the
  interface every diffing lens offers; see docs/diffing.md);
* ``summary()`` - class counts, reconstruction quality, the tuned-only latents with their tokens
  and a ``"sentence"``;
* ``plot()`` - the relative decoder norm histogram by class and the decoder cosine against Δ.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import pandas as pd
from torch import Tensor

from shiftlens.errors import ShiftlensError
from shiftlens.lenses.crosscoder import plots
from shiftlens.lenses.crosscoder.core import CLASSES
from shiftlens.result import Result

__all__ = ["CrosscoderResult", "SOURCES"]

#: The token readouts of :meth:`CrosscoderResult.top_tokens`.
SOURCES: tuple[str, ...] = ("tuned_only", "changed")

_LATENT_COLUMNS = ("latent", "frequency", "mean_act", "max_act", "norm_base", "norm_tuned",
                   "delta_norm", "cos_dec", "change", "own", "beta_err_base", "beta_err_tuned",
                   "beta_rec_base", "beta_rec_tuned", "nu_err", "nu_rec", "norm_class", "cls",
                   "reason")
_TOKEN_COLUMNS = ("latent", "kind", "order", "rank", "token_id", "token", "logit")
_CTX_COLUMNS = ("latent", "kind", "order", "rank", "activation", "row", "text", "pos",
                "token_id", "token", "context")


def _require(df: Any, columns: tuple[str, ...], what: str) -> None:
    if not isinstance(df, pd.DataFrame):
        raise ShiftlensError(f"{what} is a {type(df).__name__}, not a DataFrame")
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ShiftlensError(f"{what} lacks the columns {missing}")


@dataclass(eq=False, repr=False)
class CrosscoderResult(Result):
    """A BatchTopK crosscoder's latents on one layer of a base/tuned pair, classified.

    Attributes:
        latents: One row per latent: ``frequency`` (fraction of rows where it is active),
            ``mean_act``, ``max_act``, decoder norms ``norm_base``/``norm_tuned`` (normalised
            units), ``delta_norm`` (Δ: 0 base-only ... 1 tuned-only), ``cos_dec`` (cosine of its
            two decoder vectors), ``change`` (mean activation x ``||d_tuned - d_base||`` in model
            units), ``own`` (the model whose decoder is its direction), the Latent Scaling betas
            ``beta_err_*``/``beta_rec_*`` and ratios ``nu_err``/``nu_rec`` (other model over own),
            ``norm_class`` (by Δ alone), ``cls`` (final: tuned_only, base_only, shared, other,
            dead) and ``reason`` (why Latent Scaling rejected a candidate).
        contexts: For each tuned-only and base-only latent (``kind``; ``order`` by mean
            activation), its top activating rows: ``activation``, ``row``, ``text``, ``pos``,
            ``token_id``, ``token`` and ``context`` (tokens around it, the token in ⟦ ⟧).
        tokens: Logit-lens tokens (``rank``, ``token_id``, ``token``, ``logit``) of each
            tuned-only latent's tuned decoder, each base-only latent's base decoder, the
            decoder change ``d_tuned - d_base`` of the most changed latents (``kind ==
            "changed"``, ``order`` by ``change``), and the first tokens of the tuned-only readout
            (``kind == "readout"``, ``latent == -1``, ``logit`` = its score).
        token_scores: ``[d_vocab]`` the tuned-only readout: the logit lens of
            ``Σ_j mean_act_j d_j^tuned`` over the tuned-only latents (zeros when there are none).
        training: The training log (one row per logged step).
        meta: Models, seed, params (layer, hook, config, thresholds, ...), ``n_rows``, ``fvu``
            per model, ``l0``, ``d_vocab``, ``n_latents``, ``k``, ``threshold``, ``scale``,
            ``training`` (steps, seconds, rows/s, device, dtype) and ``source`` (the store's
            record).

    Example:
        >>> res = crosscoder_diff(pair, texts, layer=2)  # doctest: +SKIP
        >>> res.to_frame().query("cls == 'tuned_only'")  # doctest: +SKIP
        >>> res.top_tokens(20)  # doctest: +SKIP
    """

    latents: pd.DataFrame
    contexts: pd.DataFrame
    tokens: pd.DataFrame
    token_scores: Tensor
    training: pd.DataFrame
    meta: dict[str, Any] = field(default_factory=dict)

    #: What benchmarks/diffing_table.py runs for the methods x organisms table, and its readouts.
    diffing_runner: ClassVar[str] = "shiftlens.lenses.crosscoder.compare:organism_crosscoder"
    diffing_sources: ClassVar[tuple[str, ...]] = ("tuned_only", "changed")

    # ------------------------------------------------------------------ contract
    def to_frame(self) -> pd.DataFrame:
        """One row per latent (see :attr:`latents`).

        Example:
            >>> res.to_frame().cls.value_counts()  # doctest: +SKIP
        """
        return self.latents.copy()

    def model_specific(self, kind: str = "tuned_only") -> pd.DataFrame:
        """The tuned-only (or base-only) latents, most active first, with their top tokens.

        Example:
            >>> res.model_specific()[["latent", "delta_norm", "nu_err", "top_tokens"]]  # doctest: +SKIP
        """
        if kind not in ("tuned_only", "base_only"):
            raise ShiftlensError(f"kind must be 'tuned_only' or 'base_only', got {kind!r}")
        df = self.latents[self.latents.cls == kind].sort_values("mean_act", ascending=False,
                                                                kind="stable")
        t = self.tokens[self.tokens.kind == kind]
        words = t.sort_values(["latent", "rank"]).groupby("latent")["token"].apply(
            lambda s: " | ".join(s))
        return df.assign(top_tokens=df.latent.map(words).fillna("")).reset_index(drop=True)

    def top_tokens(self, k: int = 20, source: str = "tuned_only") -> list[int]:
        """Token ids the method surfaces, best first (the diffing lenses' common interface).

        Args:
            k: How many.
            source: ``"tuned_only"`` (default; the crosscoder method): the vocabulary ranked by
                :attr:`token_scores`, empty when no latent is tuned-only. ``"changed"`` (a
                shiftlens extension): the logit-lens rankings of the most changed latents'
                decoder change, interleaved by rank (every latent's first token, heaviest latent
                first, then every latent's second, ...), repeats dropped.

        Example:
            >>> from shiftlens.zoo.organisms import organism_score
            >>> organism_score(res.top_tokens(20), "topic")  # doctest: +SKIP
        """
        from shiftlens.checks import check_int

        k = check_int("k", k, minimum=1)
        if source == "tuned_only":
            if not bool((self.latents.cls == "tuned_only").any()):
                return []
            order = np.argsort(-self.token_scores.double().numpy(), kind="stable")
            return [int(i) for i in order[:k]]
        if source == "changed":
            t = self.tokens[self.tokens.kind == "changed"].sort_values(["rank", "order"],
                                                                       kind="stable")
            out: list[int] = []
            for i in t.token_id.tolist():
                if int(i) not in out:
                    out.append(int(i))
                if len(out) == k:
                    break
            return out
        raise ShiftlensError(f"source must be one of {SOURCES}, got {source!r}")

    def summary(self) -> dict[str, Any]:
        """Class counts, reconstruction quality, the tuned-only latents and a sentence.

        Returns:
            ``counts`` (per class), ``rejected`` (candidates Latent Scaling turned down),
            ``fvu`` per model, ``l0``, ``n_rows``, ``tuned_only`` (each latent with Δ, ν_ε,
            ν_r, frequency and its top tokens), ``top_tokens`` (tuned-only readout, texts),
            ``changed_tokens`` (the changed readout, texts) and ``sentence``.

        Example:
            >>> print(res.summary()["sentence"])  # doctest: +SKIP
        """
        df = self.latents
        counts = {c: int((df.cls == c).sum()) for c in CLASSES}
        rejected = int(((df.norm_class.isin(["tuned_only", "base_only"]))
                        & (df.norm_class != df.cls)).sum())
        fvu = dict(self.meta.get("fvu") or {})
        spec = self.model_specific("tuned_only")
        tuned = [dict(latent=int(r.latent), delta_norm=float(r.delta_norm),
                      nu_err=float(r.nu_err), nu_rec=float(r.nu_rec),
                      frequency=float(r.frequency), tokens=r.top_tokens)
                 for r in spec.itertuples()]

        names = self.tokens.drop_duplicates("token_id").set_index("token_id")["token"]

        def words(ids: list[int]) -> list[str]:
            return [str(names.get(i, f"#{i}")) for i in ids]

        top = self.top_tokens(20)
        changed = self.top_tokens(20, source="changed")
        n_live = len(df) - counts["dead"]
        p = self.meta.get("params") or {}
        where = (f"blocks.{p.get('layer')}.hook_{p.get('hook')}" if p.get("layer") is not None
                 else "one layer")
        fit = (f"FVU {100 * fvu.get('base', float('nan')):.1f}% (base) and "
               f"{100 * fvu.get('tuned', float('nan')):.1f}% (tuned)")
        s = (f"A BatchTopK crosscoder ({self.meta.get('n_latents')} latents, k = "
             f"{self.meta.get('k')}) on {where} over {self.meta.get('n_rows')} token positions "
             f"reconstructs both models with {fit}; of its {n_live} live latents "
             f"{counts['tuned_only']} are tuned-only, {counts['base_only']} base-only, "
             f"{counts['shared']} shared and {counts['other']} in between")
        s += (f" ({rejected} norm-based candidate{'s' if rejected != 1 else ''} rejected by "
              "Latent Scaling)." if rejected else ".")
        if tuned:
            shown = "; ".join(f"latent {t['latent']}: {token_list(t['tokens'].split(' | ')[:4])}"
                              for t in tuned[:3])
            s += f" Tuned-only latents write: {shown}."
        else:
            s += (" No latent is tuned-only: the fine-tuning shows as changed decoders of shared "
                  "latents (median decoder cosine "
                  f"{float(df.cos_dec[df.cls != 'dead'].median()):.2f}); the most changed ones "
                  f"raise {token_list(words(changed[:5]))}.")
        return {
            "models": self.model_names, "counts": counts, "rejected": rejected, "fvu": fvu,
            "l0": self.meta.get("l0"), "n_rows": self.meta.get("n_rows"), "tuned_only": tuned,
            "top_tokens": words(top), "changed_tokens": words(changed), "sentence": s,
        }

    def plot(self) -> Any:
        """The relative decoder norm histogram by class, and decoder cosine against Δ.

        Example:
            >>> fig = res.plot()  # doctest: +SKIP
        """
        return plots.crosscoder_figure(self)

    def validate(self) -> None:
        """Refuse inconsistent fields (columns, classes, one row per latent, vocabulary size).

        Example:
            >>> res.validate()  # doctest: +SKIP
        """
        _require(self.latents, _LATENT_COLUMNS, "CrosscoderResult.latents")
        _require(self.tokens, _TOKEN_COLUMNS, "CrosscoderResult.tokens")
        _require(self.contexts, _CTX_COLUMNS, "CrosscoderResult.contexts")
        if not isinstance(self.training, pd.DataFrame):
            raise ShiftlensError("CrosscoderResult.training is not a DataFrame")
        n = self.meta.get("n_latents")
        if n is not None and len(self.latents) != int(n):
            raise ShiftlensError(f"CrosscoderResult: {len(self.latents)} latent rows, meta says "
                                 f"{n} latents")
        if list(self.latents.latent) != list(range(len(self.latents))):
            raise ShiftlensError("CrosscoderResult: latents are not listed 0..n-1 in order")
        bad = sorted(set(self.latents.cls) - set(CLASSES))
        if bad:
            raise ShiftlensError(f"CrosscoderResult: unknown classes {bad}")
        if not isinstance(self.token_scores, Tensor) or self.token_scores.dim() != 1:
            raise ShiftlensError("CrosscoderResult.token_scores must be a 1-d tensor")
        dv = self.meta.get("d_vocab")
        if dv is not None and self.token_scores.shape[0] != int(dv):
            raise ShiftlensError(f"CrosscoderResult: token_scores has {self.token_scores.shape[0]}"
                                 f" entries, the vocabulary {dv}")
        for frame, what in ((self.tokens, "tokens"), (self.contexts, "contexts")):
            kinds = set(frame.kind) - {"tuned_only", "base_only", "changed", "readout"}
            if kinds:
                raise ShiftlensError(f"CrosscoderResult.{what}: unknown kinds {sorted(kinds)}")
            for kind in ("tuned_only", "base_only"):
                lat = set(frame.latent[frame.kind == kind])
                cls = set(self.latents.latent[self.latents.cls == kind])
                if not lat <= cls:
                    raise ShiftlensError(f"CrosscoderResult.{what} lists {kind} latents "
                                         f"{sorted(lat - cls)[:5]} not classified so")


def token_list(tokens: list[str]) -> str:
    """Tokens for a sentence: each quoted as :func:`shiftlens.tokens.display_token` shows it.

    Example:
        >>> token_list([" moon", "moons", "\\n"])
        "' moon', 'moons', '⏎'"
    """
    from shiftlens.tokens import display_token

    return ", ".join(f"'{display_token(t)}'" for t in tokens)
