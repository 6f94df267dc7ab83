"""The static plan of the nested and crossed (level-2) random-effects factors.

A model's random terms are grouped by grouping factor.  Terms on the subject of the residual
covariance term are *level 1*: they enter each subject's ``V_i = Z_i G Z_i' + R_i``.  Every
other factor is *level 2*: its effects couple subjects (or, without a covariance term, rows)
and are integrated out by penalised least squares (:mod:`jaxlmm.pls`).

Writing ``Lambda_f`` for a factor's ``k_f x k_f`` factor of ``G_f = Lambda_f Lambda_f'`` and
``Z~`` for the level-1-whitened data, the level-2 system is

    M = Lambda' Z~' Z~ Lambda + I,

ordered factor by factor, with ``[X~ y~]`` appended as a final block.  Its Cholesky factor is
built block by block, and the plan fixes a storage kind for every block from the data, once:

* the factor with the most levels comes first; its diagonal block is block-diagonal (one
  ``k x k`` block per level: a row, or a subject, belongs to one level of each factor);
* a factor that the last chained factor is nested in (every level of the last one lies in
  one level of it) is *chained*: eliminating a nested factor fills nothing in the diagonal
  block of its parent, so it stays block-diagonal ("nested in a parent, no fill-in");
* the remaining (crossed) factors form the *dense tail*: one dense matrix over all their
  levels ("crossed: fill-in"), factored by a dense Cholesky after the chain is eliminated.

The chain is used when it is cheaper than a dense tail over all factors (a flop count of one
evaluation, :func:`_cost`): always for deep hierarchies, for crossed designs only when the
factor with the most levels is large (thousands of students, hundreds of lecturers).

Between a chained factor ``c`` and a tail factor ``r`` the coupling is stored per observed
pair of levels ``(l_c, l_r)``; the fill-in of the tail from eliminating ``c`` is a sum over
*quads*, the pairs of pairs that share ``l_c``.  All index arrays (levels per row, pairs,
quads, ancestor maps) are computed here once, on the host; the plan itself holds only
shapes and roles and is hashable (a static argument under ``jit``).  Level counts are padded
to buckets, so datasets of similar size share a compiled program; padded levels carry zero
data (their diagonal block is the identity), padded pairs and quads point at a zero slot.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

__all__ = ["FactorPlan", "Level2Plan", "Level2Index", "plan_level2", "nested_in", "DENSE_LIMIT", "pad_levels"]

#: the largest dense tail (sum of levels x columns of the crossed factors) this machine factors;
#: one evaluation of the deviance costs ``m^3 / 3`` flops for a tail of ``m`` columns
DENSE_LIMIT = 6000

def pad_levels(n: int, fine: bool = False) -> int:
    """Padded level count: at least ``n + 1`` (one zero slot), rounded up to a bucket of four
    (``fine``: eight) steps per power of two."""
    n = int(n) + 1
    if n <= 8:
        return 8
    base = 2 ** int(math.floor(math.log2(n)))
    step = max(base // (8 if fine else 4), 1)
    return int(math.ceil(n / step) * step)


@dataclass(frozen=True)
class FactorPlan:
    """One level-2 grouping factor: its ``k`` columns come from ``blocks`` (indices into the
    model's random-effect blocks, concatenated); ``n_levels`` real and ``n_pad`` padded levels."""

    name: str
    k: int
    blocks: tuple[int, ...]
    n_levels: int
    n_pad: int
    chained: bool


@dataclass(frozen=True)
class Level2Plan:
    """Static description of the level-2 system.  ``factors`` are in elimination order: the
    ``n_chain`` chained factors (finest first), then the tail.  ``z_offsets`` are the column
    offsets of each factor in the level-2 design ``Z2``; ``tail_offsets`` the row offsets of
    the tail factors in the dense tail of size ``m_tail``."""

    factors: tuple[FactorPlan, ...]
    n_chain: int

    @property
    def q(self) -> int:
        return sum(f.k for f in self.factors)

    @property
    def z_offsets(self) -> tuple[int, ...]:
        out, o = [], 0
        for f in self.factors:
            out.append(o)
            o += f.k
        return tuple(out)

    @property
    def tail(self) -> tuple[int, ...]:
        return tuple(range(self.n_chain, len(self.factors)))

    @property
    def tail_offsets(self) -> tuple[int, ...]:
        out, o = [], 0
        for j in self.tail:
            out.append(o)
            o += self.factors[j].n_pad * self.factors[j].k
        return tuple(out)

    @property
    def m_tail(self) -> int:
        return sum(self.factors[j].n_pad * self.factors[j].k for j in self.tail)

    def pair_keys(self):
        """(chained c, tail r) pairs with a coupling table, as ``"c.r"`` keys."""
        return [f"{c}.{r}" for c in range(self.n_chain) for r in self.tail]

    def quad_keys(self):
        return [f"{c}.{r}.{s}" for c in range(self.n_chain) for r in self.tail for s in self.tail if r <= s]


class Level2Index(NamedTuple):
    """Dynamic index arrays of the level-2 system (int32; a pytree).

    * ``lev`` [S, F]: level of each super-row (subject or row) in each factor;
    * ``anc``: per chained factor c, [n_pad_c, n_chain - c - 1] levels of the later chained
      factors that each level of c lies in;
    * ``pid``: per ``"c.r"``, [S] the pair each super-row belongs to;
    * ``plev``: per ``"c.r"``, [n_pairs_pad, 2] the levels ``(l_c, l_r)`` of each pair;
    * ``pmap``: per ``"c.r"``, [n_pairs_pad, n_chain - c - 1] the pair ``(anc(l_c), l_r)`` in
      the table of each later chained factor;
    * ``quad``: per ``"c.r.s"``, [n_quads_pad, 2] the pairs ``(a, b)`` of tables ``c.r`` and
      ``c.s`` that share the level of ``c``.
    """

    lev: np.ndarray
    anc: tuple
    pid: dict
    plev: dict
    pmap: dict
    quad: dict


def nested_in(inner: np.ndarray, outer: np.ndarray) -> bool:
    """True when every level of ``inner`` (codes) occurs with exactly one level of ``outer``."""
    inner, outer = np.asarray(inner), np.asarray(outer)
    if len(inner) == 0:
        return True
    first = np.full(int(inner.max()) + 1, -1, dtype=np.int64)
    first[inner[::-1]] = outer[::-1]  # the outer level of each inner level's first row
    return bool(np.all(first[inner] == outer))


def _pairs(a: np.ndarray, b: np.ndarray):
    """Distinct (a, b) code pairs, sorted by a then b, and the pair of each row."""
    nb = int(b.max()) + 1 if len(b) else 1
    key = a.astype(np.int64) * nb + b
    uk, inv = np.unique(key, return_inverse=True)
    return np.stack([uk // nb, uk % nb], axis=1), np.asarray(inv).reshape(-1)


def _parent_map(inner, outer, n_inner):
    out = np.zeros(n_inner, dtype=np.int64)
    out[inner] = outer
    return out


def plan_level2(factors, S_pad: int, chain: bool | None = None):
    """Order, chain and index the level-2 factors.

    ``factors``: list of ``(name, codes [S], n_levels, block_indices, k)`` with ``codes`` the
    level of each (real) super-row.  ``chain``: None (the cheaper of a chain and an all-dense
    tail), True (chain whatever the cost) or False (all dense).  Returns ``(Level2Plan,
    Level2Index)`` with numpy index arrays padded to ``S_pad`` super-rows."""
    order = sorted(range(len(factors)), key=lambda j: -factors[j][2])
    use_chain = chain
    chain = [order[0]]
    rest = [j for j in order if j != order[0]]
    while rest:
        last = factors[chain[-1]][1]
        cands = [j for j in rest if nested_in(last, factors[j][1])]
        if not cands:
            break
        nxt = max(cands, key=lambda j: factors[j][2])
        chain.append(nxt)
        rest.remove(nxt)
    if use_chain is False or (use_chain is None and _cost(factors, chain) >= _cost(factors, [])):
        chain = []
    tail = [j for j in order if j not in chain]
    elim = chain + tail
    fps = []
    for pos, j in enumerate(elim):
        name, codes, n, blocks, k = factors[j]
        fps.append(FactorPlan(name=name, k=int(k), blocks=tuple(int(b) for b in blocks), n_levels=int(n),
                              n_pad=pad_levels(n, fine=pos >= len(chain)), chained=pos < len(chain)))
    plan = Level2Plan(factors=tuple(fps), n_chain=len(chain))
    codes = [np.asarray(factors[j][1], dtype=np.int64) for j in elim]
    S = len(codes[0]) if codes else 0

    lev = np.zeros((S_pad, len(elim)), dtype=np.int32)
    for i, c in enumerate(codes):
        lev[:S, i] = c
    a = plan.n_chain
    anc = []
    for c in range(a):
        n_c = plan.factors[c].n_pad
        cols = [_parent_map(codes[c], codes[d], n_c) for d in range(c + 1, a)]
        anc.append(np.stack(cols, axis=1).astype(np.int32) if cols else np.zeros((n_c, 0), np.int32))

    pid, plev, pmap, quad = {}, {}, {}, {}
    pair_tables = {}
    for c in range(a):
        for r in plan.tail:
            key = f"{c}.{r}"
            uniq, inv = _pairs(codes[c], codes[r])  # sorted by l_c, then l_r
            n_pairs = len(uniq)
            n_pad = pad_levels(n_pairs)
            pl = np.zeros((n_pad, 2), np.int32)
            pl[:n_pairs] = uniq
            p = np.full(S_pad, n_pad - 1, np.int32)
            p[:S] = np.asarray(inv).reshape(-1)
            pid[key], plev[key] = p, pl
            pair_tables[key] = (uniq, n_pad)
    for c in range(a):
        for r in plan.tail:
            key = f"{c}.{r}"
            uniq, n_pad = pair_tables[key]
            cols = []
            for d in range(c + 1, a):
                up = anc[c][uniq[:, 0], d - c - 1]
                tgt_uniq, tgt_pad = pair_tables[f"{d}.{r}"]
                nb = int(max(tgt_uniq[:, 1].max(), uniq[:, 1].max())) + 1
                col = np.full(n_pad, tgt_pad - 1, np.int32)
                # tgt_uniq is sorted by its integer key: find each (anc(l_c), l_r) there
                col[: len(uniq)] = np.searchsorted(tgt_uniq[:, 0] * nb + tgt_uniq[:, 1], up * nb + uniq[:, 1])
                cols.append(col)
            pmap[key] = np.stack(cols, axis=1) if cols else np.zeros((n_pad, 0), np.int32)
        for r in plan.tail:
            for s in plan.tail:
                if s < r:
                    continue
                ur, pad_r = pair_tables[f"{c}.{r}"]
                us, pad_s = pair_tables[f"{c}.{s}"]
                quad[f"{c}.{r}.{s}"] = _quads(ur[:, 0], us[:, 0], plan.factors[c].n_pad, pad_r, pad_s, upper=r == s)
    return plan, Level2Index(lev=lev, anc=tuple(anc), pid=pid, plev=plev, pmap=pmap, quad=quad)


#: cost of one quad (a scattered k x k update) in flops of a dense factorisation, as measured
#: on CPU for values, gradients and Hessians (gathers and scatters are memory-bound)
QUAD_COST = 1000.0


def _cost(factors, chain) -> float:
    """Flop-equivalents of one evaluation: the dense tail ``m^3 / 3`` plus the quads of the
    chain's fill-in (and a little per chained level)."""
    tail = [j for j in range(len(factors)) if j not in chain]
    m = sum(factors[j][2] * factors[j][4] for j in tail)
    cost = m**3 / 3.0
    for c in chain:
        codes_c, n_c, k_c = factors[c][1], factors[c][2], factors[c][4]
        cost += 50.0 * n_c * k_c**3
        counts = []
        for r in tail:
            pairs, _ = _pairs(np.asarray(codes_c), np.asarray(factors[r][1]))
            counts.append((np.bincount(pairs[:, 0], minlength=n_c).astype(float), factors[r][4]))
        for i, (ca, ka) in enumerate(counts):
            for cb, kb in counts[i:]:
                cost += QUAD_COST * ka * kb * float(np.dot(ca, cb))
    return cost


def _quads(lev_r, lev_s, n_c, pad_r, pad_s, upper=False):
    """All (a, b) with pair a of table r and pair b of table s on the same chained level
    (pairs are sorted by that level, then by the tail level), padded with the zero slots
    ``(pad_r - 1, pad_s - 1)``.  ``upper`` (r = s): only ``a <= b``, the upper triangle and
    the diagonal of the symmetric fill-in."""
    cnt_r = np.bincount(lev_r, minlength=n_c)
    cnt_s = np.bincount(lev_s, minlength=n_c)
    st_r = np.concatenate([[0], np.cumsum(cnt_r)[:-1]])
    st_s = np.concatenate([[0], np.cumsum(cnt_s)[:-1]])
    nq = cnt_r * cnt_s
    total = int(nq.sum())
    a = b = np.zeros(0, np.int64)
    if total:
        lv = np.repeat(np.arange(n_c), nq)
        w = np.arange(total) - np.repeat(np.cumsum(nq) - nq, nq)
        a = st_r[lv] + w // cnt_s[lv]
        b = st_s[lv] + w % cnt_s[lv]
        if upper:
            keep = a <= b
            a, b = a[keep], b[keep]
    n_pad = pad_levels(len(a))
    out = np.empty((n_pad, 2), np.int32)
    out[:, 0], out[:, 1] = pad_r - 1, pad_s - 1
    out[: len(a), 0], out[: len(a), 1] = a, b
    return out


# ------------------------------------------------------------------------------------------
# grouping factors from data columns (host side)
# ------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Factor:
    """A grouping factor of the used rows: ``codes`` [n] in 0..n_levels-1 and a label per level
    (``"a:A"`` for an interaction of columns, in the order of ``columns``)."""

    name: str
    columns: tuple[str, ...]
    codes: np.ndarray
    labels: tuple
    values: tuple  # per level: the value (one column) or the tuple of values (interaction)

    @property
    def n_levels(self) -> int:
        return len(self.labels)


def make_factor(df, name: str, columns, levels_of, label_of) -> Factor:
    """The grouping factor ``name`` of the columns ``columns`` of ``df`` (one level per observed
    combination; level order: the columns' own level orders, lexicographically)."""
    import pandas as pd

    comp_codes, comp_levels = [], []
    for c in columns:
        lv = levels_of(df[c])
        comp_levels.append(lv)
        comp_codes.append(pd.Categorical(df[c], categories=lv).codes.astype(np.int64))
    if len(columns) == 1:
        codes = comp_codes[0]
        used = np.unique(codes)
        remap = np.full(len(comp_levels[0]), -1)
        remap[used] = np.arange(len(used))
        vals = tuple(comp_levels[0][i] for i in used)
        return Factor(name, tuple(columns), remap[codes], tuple(label_of(v) for v in vals), vals)
    stacked = np.stack(comp_codes, axis=1)
    uniq, inv = np.unique(stacked, axis=0, return_inverse=True)
    vals = tuple(tuple(comp_levels[j][u[j]] for j in range(len(columns))) for u in uniq)
    labels = tuple(":".join(label_of(v) for v in t) for t in vals)
    return Factor(name, tuple(columns), np.asarray(inv).reshape(-1), labels, vals)


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """True when two code vectors group the rows identically."""
    return nested_in(a, b) and nested_in(b, a)
