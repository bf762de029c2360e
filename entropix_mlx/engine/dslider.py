"""The reference's last sampler, "dslider" (adaptive Dirichlet; ENTROPIX.md §6), in NumPy float64.

Pure functions over one response's state: `init_state` from the first step's logits, `step`
returns the new state and the chosen token, `wrapper_case` is the reference wrapper's
quadrant. `sampler.DSliderSampler` holds the state of one response and adapts this to the
`Sampler` interface. Units: nats, as in the reference (the rest of the program uses bits).

Departures from the reference (xjdr-alt/entropix 0a7f7bb, dslider*.py and sampler.py), each a
defect fixed or a consequence of our interface; docs/samplers.md has the reasoning:
1. The naked token log-prob is `naked_lp[token]`, not `log(naked_lp[token] + ε)` (the log of a
   log-probability: NaN from the second step on, which silenced the outlier test).
2. The token cross-entropy variances use the deviation (surprisal − its EMWA), not their sum
   (the reference's `(tce − logp)²` with logp < 0 adds them).
3. The Dirichlet log-likelihood has lnΓ(α₀) − Σ lnΓ(αᵢ) (the reference flips both signs), and
   the state starts from −log-likelihood like every update (the reference starts from +).
4. The wrapper keeps the step's new state every step (the reference returned the old state
   unless it resampled, so the EMWAs never moved), and inserts the clarify text at most
   `clarify_max` times (the reference: token 2564 every time HELV fires).
5. State starts from the first generated step's logits (our samplers see one step), not the
   mean over the prompt's positions; every draw uses its own random stream (the reference
   reused one key for all draws of a step, and the same key every step).
6. Halley's second derivative of the entropy in T is −(μ₃ + 3μ₂)/T² (the reference: 2μ₃).
7. The wrapper's resample keeps the first choice out of every branch (in the reference the
   noise floor turns its −inf into ln ε and the outlier temperature can bring it back).
8. `fit_dirichlet` solves the same equations ψ(αᵢ) − ψ(Σα) = tᵢ to 1e-10 with a safeguarded
   Newton iteration on log Σα (Minka's fixed point, inverse digamma per token) instead of
   140 decaying-rate Halley steps; Σα is capped at 1e6 where the targets admit no finite fit
   (Σ e^t ≥ 1). Float64 throughout (the reference kept state and α in bfloat16).
Consequence, stated not hidden: with the default (all-positive) outlier coefficients the outlier
score is > 0 whenever the state is finite, so every token takes the Dirichlet path; the top-k
inlier path only runs with `outlier_bias` < 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

EPS = 1e-8
LN_EPS = math.log(EPS)
MIN_TEMP, MAX_TEMP = 1e-4, 1e4
MAX_ALPHA_SUM = 1e6
BRANCHES = ("ds-argmax", "ds-topk", "ds-dirichlet", "ds-ood")


@dataclass(frozen=True)
class DSliderConfig:
    """`DEFAULT_DS_CONFIG` at 0a7f7bb (ENTROPIX.md §6); the outlier matrices are constant × ones."""

    emwa_logp_base: float = 4.0
    emwa_logp_exp_factor: float = 3.0
    emwa_temp_coeff: float = 0.70
    emwa_dir_ent_coeff: float = 0.70
    emwa_ent_scaffold_coeff: float = 0.70
    emwa_varent_scaffold_coeff: float = 0.70
    emwa_ent_naked_coeff: float = 0.70
    emwa_varent_naked_coeff: float = 0.70
    emwa_topk_ent_naked_coeff: float = 0.70
    token_cross_ent_scaffold_coeff: float = 0.65
    token_cross_ent_naked_coeff: float = 0.65
    token_cross_var_scaffold_coeff: float = 0.75
    token_cross_var_naked_coeff: float = 0.65
    perturb_base_coeff: float = 10.0
    perturb_exp_coeff: float = 1.0
    noise_floor: float = -12.0
    outlier_bilinear: float = 1.3  # × ones(4, 4)
    outlier_state_ent: float = 0.8  # × ones(4)
    outlier_state_std: float = 0.8  # × ones(4)
    outlier_naked_ent: float = 1.2
    outlier_naked_varent: float = 1.2
    outlier_bias: float = 0.0
    outlier_topk: int = 6
    argmax_weight: float = 0.1
    argmax_bias: float = 1.2
    dirichlet_weight: float = 0.1
    dirichlet_bias: float = 1.2
    target_linear: float = 1.0  # × ones(4)
    target_inv_temp: float = 8.0
    target_bias: float = 0.0
    temp_tune_iters: int = 10
    # The wrapper's quadrants on the naked entropy / varentropy, in nats.
    low_ent: float = 0.3
    med_ent: float = 1.2
    high_ent: float = 2.5
    low_vent: float = 1.2
    high_vent: float = 2.5


@dataclass(frozen=True)
class DSState:
    """One response's EMWAs (ENTROPIX.md §6); arrays are over the support (the vocabulary)."""

    emwa_dir: np.ndarray
    emwa_logp_on_supp: np.ndarray
    emwa_temp: float
    emwa_ent_scaffold: float
    emwa_ent_naked: float
    emwa_varent_scaffold: float
    emwa_varent_naked: float
    token_cross_ent_scaffold: float
    token_cross_ent_naked: float
    token_cross_var_scaffold: float
    token_cross_var_naked: float
    emwa_dir_ent: float
    emwa_topk_ent_naked: float


@dataclass(frozen=True)
class DSStep:
    """What one step chose and saw."""

    token: int
    branch: str  # one of BRANCHES
    temperature: float  # the inlier top-k temperature, or the outlier's tuned temperature
    naked_ent: float
    naked_varent: float
    outlier_score: float


# ── special functions (vectorised, x > 0) ────────────────────────────────────────────────────


def digamma(x: np.ndarray) -> np.ndarray:
    """ψ(x): recurrence to x + 6, then the asymptotic series (error < 1e-13 there)."""
    x = np.asarray(x, dtype=np.float64)
    acc = -1.0 / x
    for k in range(1, 6):
        acc -= 1.0 / (x + k)
    y = x + 6.0
    inv2 = 1.0 / (y * y)
    series = inv2 * (1 / 12 - inv2 * (1 / 120 - inv2 * (1 / 252 - inv2 * (1 / 240 - inv2 / 132))))
    return acc + np.log(y) - 0.5 / y - series


def trigamma(x: np.ndarray) -> np.ndarray:
    """ψ₁(x), the same way."""
    x = np.asarray(x, dtype=np.float64)
    acc = np.zeros_like(x)
    for k in range(6):
        r = 1.0 / (x + k)
        acc += r * r
    y = x + 6.0
    inv, inv2 = 1.0 / y, 1.0 / (y * y)
    return (
        acc
        + inv
        + 0.5 * inv2
        + inv * inv2 * (1 / 6 - inv2 * (1 / 30 - inv2 * (1 / 42 - inv2 / 30)))
    )


def inv_digamma(y: np.ndarray, x0: np.ndarray | None = None, tol: float = 1e-12) -> np.ndarray:
    """x with ψ(x) = y: Newton from `x0`, else from Minka's starting point, until every residual
    is below `tol` (relative to max(1, |y|); at most 10 steps, ~5 from Minka's start)."""
    y = np.asarray(y, dtype=np.float64)
    if x0 is None:
        gamma = -digamma(np.float64(1.0))
        x0 = np.where(y >= -2.22, np.exp(np.minimum(y, 700.0)) + 0.5, -1.0 / (y + gamma))
    x = x0
    for _ in range(10):
        residual = digamma(x) - y
        if np.max(np.abs(residual) / np.maximum(1.0, np.abs(y))) < tol:
            break
        x = np.maximum(x - residual / trigamma(x), x / 2)
    return x


def lgamma(x: np.ndarray) -> np.ndarray:
    """ln Γ(x): recurrence to x + 6, then Stirling's series (error < 1e-13 there)."""
    x = np.asarray(x, dtype=np.float64)
    shift = np.log(x * (x + 1) * (x + 2) * (x + 3) * (x + 4) * (x + 5))
    y = x + 6.0
    inv, inv2 = 1.0 / y, 1.0 / (y * y)
    series = inv * (1 / 12 - inv2 * (1 / 360 - inv2 * (1 / 1260 - inv2 * (1 / 1680 - inv2 / 1188))))
    return (y - 0.5) * np.log(y) - y + 0.5 * math.log(2 * math.pi) + series - shift


# ── the formulas of the step ───────────────────────────────────────────────────────────────


def normalize(logits: np.ndarray, noise_floor: float) -> np.ndarray:
    """Log-probabilities; those below the noise floor become ln ε (`normalize_logits`)."""
    shifted = logits - np.max(logits)
    finite = shifted[np.isfinite(shifted)]
    lse = np.log(np.sum(np.exp(finite))) + EPS  # logsumexp(shifted + ε) = logsumexp + ε
    lp = shifted - lse
    return np.where(lp < noise_floor, LN_EPS, lp)


def ent_varent(logp: np.ndarray) -> tuple[float, float]:
    """Entropy and varentropy in nats of p = exp(logp) (not renormalised, as the reference)."""
    p = np.exp(logp)
    ent = -np.sum(p * logp)
    return float(ent), float(np.sum(p * (logp + ent) ** 2))


def emwa(new: float | np.ndarray, old: float | np.ndarray, coeff: float) -> float | np.ndarray:
    return coeff * new + (1.0 - coeff) * old


def outlier_score(
    state_ent: np.ndarray, state_std: np.ndarray, ent: float, varent: float, cfg: DSliderConfig
) -> float:
    """entᵀ·B·std + a·ent + b·std + c·H + d·V + bias, with B, a, b constant (× ones)."""
    bilinear = cfg.outlier_bilinear * state_ent.sum() * state_std.sum()
    return float(
        bilinear
        + cfg.outlier_state_ent * state_ent.sum()
        + cfg.outlier_state_std * state_std.sum()
        + cfg.outlier_naked_ent * ent
        + cfg.outlier_naked_varent * varent
        + cfg.outlier_bias
    )


def _ent_grad_hess(logits: np.ndarray, T: float) -> tuple[float, float, float]:
    """Entropy of softmax(logits / T) and its first two derivatives in T (`ent_grad_hess`)."""
    z = logits / T
    z = z - z.max()
    e = np.exp(z)
    total = np.sum(e)
    p, log_p = e / total, z - np.log(total)
    mu1 = np.sum(p * log_p)
    diff = log_p - mu1
    p_diff2 = p * diff * diff
    mu2, mu3 = np.sum(p_diff2), np.sum(p_diff2 * diff)
    return float(-mu1), float(mu2 / T), float(-(mu3 + 3 * mu2) / (T * T))  # fix 6: μ3, not 2μ3


def temp_tune(logits: np.ndarray, target: float, iters: int = 10, lr: float = 0.1) -> float:
    """The temperature whose entropy matches `target`: Halley, else Newton, else a gradient step,
    each clipped to ±T/2, T never below half of itself (`temp_tune`, T₀ = 1, tol 1e-6)."""
    T = 1.0
    for _ in range(iters):
        ent, grad, hess = _ent_grad_hess(logits, T)
        error = ent - target
        if abs(error) < 1e-6:
            break
        denom = 2 * grad * grad - error * hess
        if abs(grad) < 1e-8:
            delta = lr * T if error > 0 else -lr * T
        elif abs(denom) < 1e-8:
            delta = error / grad
        else:
            delta = 2 * error * grad / denom
        delta = min(max(delta, -0.5 * T), 0.5 * T)
        T = max(T - delta, T / 2)
    return T


def fit_dirichlet(target: np.ndarray, init: np.ndarray | None = None) -> np.ndarray:
    """α with ψ(αᵢ) − ψ(Σα) = targetᵢ (the Dirichlet whose mean log p is `target`).

    Given S = Σα, αᵢ = ψ⁻¹(ψ(S) + tᵢ); solve log Σᵢ αᵢ(S) = log S by Newton on u = log S, kept
    inside a bisection bracket. Each inverse digamma starts from the last one when S moved
    little (or from `init`, the previous step's α), else from scratch.
    """
    t = np.asarray(target, dtype=np.float64)
    lo, hi = math.log(1e-6), math.log(MAX_ALPHA_SUM)

    def alphas(u: float, x0: np.ndarray | None) -> tuple[np.ndarray, float]:
        a = inv_digamma(digamma(np.float64(math.exp(u))) + t, x0)
        return a, float(np.log(np.sum(a)) - u)

    a, h = alphas(hi, None)
    if h >= 0:  # Σ e^t ≥ 1: the fit runs off to infinity; stop at the cap
        return a
    if init is not None and lo < math.log(float(np.sum(init))) < hi:
        u, a = math.log(float(np.sum(init))), init
    else:
        u, a = 0.5 * (lo + hi), None
    for _ in range(100):
        a, h = alphas(u, a)
        if abs(h) < 1e-11:
            break
        lo, hi = (u, hi) if h > 0 else (lo, u)
        S = math.exp(u)
        slope = (
            S * float(trigamma(np.float64(S))) * float(np.sum(1.0 / trigamma(a))) / float(np.sum(a))
            - 1.0
        )
        nxt = u - h / slope if slope < 0 else 0.5 * (lo + hi)
        nxt = nxt if lo < nxt < hi else 0.5 * (lo + hi)
        if abs(nxt - u) > 0.5:
            a = None  # a long way off: the last α is no better a start than Minka's
        if hi - lo < 1e-13:
            break
        u = nxt
    return a


def dirichlet_log_likelihood(logp: np.ndarray, alpha: np.ndarray) -> float:
    """log Dir(p | α) = lnΓ(α₀) − Σ lnΓ(αᵢ) + Σ (αᵢ − 1) ln pᵢ (the reference flips the Γ signs)."""
    log_norm = math.lgamma(float(np.sum(alpha))) - float(np.sum(lgamma(alpha)))
    return float(log_norm + np.sum((alpha - 1.0) * logp))


def _topk(naked: np.ndarray, k: int) -> np.ndarray:
    """Ids of the k largest, most likely first (ties: lower id first)."""
    k = min(k, naked.size)
    ids = np.argpartition(-naked, k - 1)[:k]
    return ids[np.lexsort((ids, -naked[ids]))]


def init_state(logits: np.ndarray, cfg: DSliderConfig) -> DSState:
    """The state before the first step, from that step's logits (`initialize_state`, 1 position)."""
    lp = normalize(np.asarray(logits, dtype=np.float64), cfg.noise_floor)
    ent, varent = ent_varent(lp)
    top = _topk(lp, cfg.outlier_topk)
    topk_ent, _ = ent_varent(normalize(lp[top], cfg.noise_floor))
    alpha = fit_dirichlet(lp)
    return DSState(
        emwa_dir=alpha,
        emwa_logp_on_supp=lp,
        emwa_temp=1.0,
        emwa_ent_scaffold=ent,
        emwa_ent_naked=ent,
        emwa_varent_scaffold=0.0,
        emwa_varent_naked=varent,
        token_cross_ent_scaffold=ent,
        token_cross_ent_naked=float(-lp[top].mean()),
        token_cross_var_scaffold=0.0,
        token_cross_var_naked=float(lp[top].var()),
        emwa_dir_ent=-dirichlet_log_likelihood(lp, alpha),
        emwa_topk_ent_naked=topk_ent,
    )


def _categorical(logp: np.ndarray, rng: np.random.Generator) -> int:
    """An exact draw from softmax(logp) (Gumbel-max; −inf never drawn)."""
    return int(np.argmax(logp - np.log(-np.log(rng.random(logp.shape)))))


def step(
    state: DSState, logits: np.ndarray, cfg: DSliderConfig, rng: np.random.Generator
) -> tuple[DSState, DSStep]:
    """One `adaptive_dirichlet_step` (ENTROPIX.md §6 steps 1–5) for one row."""
    s = state
    logits = np.asarray(logits, dtype=np.float64)
    banned = ~np.isfinite(logits)  # fix 7: a token masked to −inf stays out of every choice
    naked = normalize(logits, cfg.noise_floor)
    naked_ent, naked_varent = ent_varent(naked)
    state_ent = np.array(
        [s.token_cross_ent_scaffold, s.token_cross_ent_naked, s.emwa_ent_scaffold, s.emwa_ent_naked]
    )
    state_std = np.sqrt(
        [
            s.token_cross_var_scaffold,
            s.token_cross_var_naked,
            s.emwa_varent_scaffold,
            s.emwa_varent_naked,
        ]
    )
    score = outlier_score(state_ent, state_std, naked_ent, naked_varent, cfg)
    outlier = score > 0

    # Inliers: top-k, argmax when concentrated, else entropy-matched temperature.
    top = _topk(np.where(banned, -np.inf, naked), cfg.outlier_topk)
    topk_lp = normalize(naked[top], cfg.noise_floor)
    topk_ent, _ = ent_varent(topk_lp)
    argmax_now = (
        not outlier and topk_ent < cfg.argmax_weight * s.emwa_topk_ent_naked + cfg.argmax_bias
    )
    inlier_temp = temp_tune(topk_lp, s.emwa_topk_ent_naked, cfg.temp_tune_iters)
    inlier_token = int(
        top[_categorical(np.where(banned[top], -np.inf, topk_lp / inlier_temp), rng)]
    )

    # Outliers: tune the temperature to a target entropy, move the EMWA of log p, refit α.
    target = (
        cfg.target_linear * state_ent.sum() + cfg.target_inv_temp / s.emwa_temp + cfg.target_bias
    )
    temp = temp_tune(naked, target, cfg.temp_tune_iters)
    tuned = normalize(naked / min(max(temp, MIN_TEMP), MAX_TEMP), cfg.noise_floor)
    on_supp = normalize(tuned, cfg.noise_floor)
    kl = float(np.sum(np.exp(on_supp) * (on_supp - s.emwa_logp_on_supp)))
    logp_coeff = cfg.emwa_logp_base ** (-cfg.emwa_logp_exp_factor / (kl + EPS))
    new_logp = emwa(on_supp, s.emwa_logp_on_supp, logp_coeff)
    new_dir = fit_dirichlet(new_logp, s.emwa_dir)
    neg_loglik = -dirichlet_log_likelihood(on_supp, s.emwa_dir)
    use_dirichlet = (
        outlier and neg_loglik < cfg.dirichlet_weight * s.emwa_dir_ent + cfg.dirichlet_bias
    )
    gammas = rng.gamma(new_dir)
    dir_probs = gammas / gammas.sum()
    kl_dir = float(np.sum(dir_probs * (np.log(dir_probs + EPS) - on_supp)))
    perturb = 1.0 - cfg.perturb_base_coeff ** (-cfg.perturb_exp_coeff / (kl_dir + EPS))
    q = perturb * dir_probs + (1.0 - perturb) * np.exp(on_supp)  # π → 1 as the draw nears p

    if not outlier:
        token, branch = (int(top[0]), "ds-argmax") if argmax_now else (inlier_token, "ds-topk")
        used_temp = 0.0 if argmax_now else inlier_temp
    elif use_dirichlet:
        token, branch, used_temp = int(np.argmax(np.where(banned, -1.0, q))), "ds-dirichlet", temp
    else:
        ood = np.where(banned, -np.inf, np.log(dir_probs + EPS))
        token, branch, used_temp = _categorical(ood, rng), "ds-ood", temp

    log_q = np.log(q + EPS)
    scaffold_ent, scaffold_varent = ent_varent(log_q)
    scaffold_lp, naked_lp = float(log_q[token]), float(naked[token])  # fix 1: no log of a log
    tce_s = emwa(-scaffold_lp, s.token_cross_ent_scaffold, cfg.token_cross_ent_scaffold_coeff)
    tce_n = emwa(-naked_lp, s.token_cross_ent_naked, cfg.token_cross_ent_naked_coeff)
    new = replace(
        s,
        emwa_dir=new_dir,
        emwa_logp_on_supp=new_logp,
        emwa_temp=emwa(temp, s.emwa_temp, cfg.emwa_temp_coeff),
        emwa_ent_scaffold=emwa(scaffold_ent, s.emwa_ent_scaffold, cfg.emwa_ent_scaffold_coeff),
        emwa_ent_naked=emwa(naked_ent, s.emwa_ent_naked, cfg.emwa_ent_naked_coeff),
        emwa_varent_scaffold=emwa(
            scaffold_varent, s.emwa_varent_scaffold, cfg.emwa_varent_scaffold_coeff
        ),
        emwa_varent_naked=emwa(naked_varent, s.emwa_varent_naked, cfg.emwa_varent_naked_coeff),
        token_cross_ent_scaffold=tce_s,
        token_cross_ent_naked=tce_n,
        # fix 2: the deviation of the surprisal from its EMWA, squared
        token_cross_var_scaffold=emwa(
            (-scaffold_lp - tce_s) ** 2,
            s.token_cross_var_scaffold,
            cfg.token_cross_var_scaffold_coeff,
        ),
        token_cross_var_naked=emwa(
            (-naked_lp - tce_n) ** 2, s.token_cross_var_naked, cfg.token_cross_var_naked_coeff
        ),
        emwa_dir_ent=emwa(neg_loglik, s.emwa_dir_ent, cfg.emwa_dir_ent_coeff),
        emwa_topk_ent_naked=emwa(topk_ent, s.emwa_topk_ent_naked, cfg.emwa_topk_ent_naked_coeff),
    )
    return new, DSStep(token, branch, used_temp, naked_ent, naked_varent, score)


def wrapper_case(naked_ent: float, naked_varent: float, cfg: DSliderConfig) -> str:
    """The reference wrapper's case on the naked H, V (nats): the first true of LELV, HELV, LEHV,
    HEHV, and LELV when none is (its `argmax` over four zeros)."""
    cases = (
        ("LELV", naked_ent < cfg.low_ent and naked_varent < cfg.low_vent),
        ("HELV", naked_ent > cfg.high_ent and naked_varent < cfg.low_vent),
        ("LEHV", naked_ent < cfg.high_ent and naked_varent > cfg.high_vent),
        ("HEHV", naked_ent > cfg.med_ent and naked_varent > cfg.high_vent),
    )
    return next((name for name, hit in cases if hit), "LELV")
