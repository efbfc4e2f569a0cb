"""Per-token losses of many sequences: length-bucketed, no-grad, LM head only on scored tokens.

A :class:`Unit` is one token sequence with a boolean mask of the tokens to score
(token t's loss is predicted from position t-1). :func:`unit_losses` runs the
model's trunk (the decoder without its LM head; its output has the final norm
applied) over batches of units and calls :func:`thresher.ops.token_loss` on the
hidden states of the scored positions only, so the [tokens x vocab] logits are
never materialised and prompt tokens cost only the trunk.

Batching (``mode``):

* ``"bucket"`` (default): units sorted by length (longest first), cut into
  buckets whose padded size ``rows x longest`` stays under ``batch_tokens``.
  Length sorting keeps padding minimal. Right padding needs no attention mask at
  all (causal attention never lets a real token see the pads that follow it),
  so the fast causal attention path is used; left padding passes the mask and
  position ids. Both give the same scores as one sequence at a time.
* ``"pack"``: units concatenated into rows of at most ``batch_tokens`` tokens
  with position ids restarting at 0 per unit and no attention mask:
  transformers then builds a block-diagonal causal mask (packed sequences), so
  no compute is spent on padding in the linear layers, at the price of a
  dense [row x row] attention mask on backends without varlen attention.
* ``"row"``: one unit per forward, no shared prefix, padded after its last token
  to a multiple of 4 tokens only. A unit's computation then has the same shapes
  whichever units share its call, so its losses are the same bits under every
  shard layout, engine and thread count. Bucket and pack agree with it to float32
  rounding: a unit's bits there depend on its batch's padded length and prefix
  split. Slower: no batching.

Every mode pads a batch until rows x tokens is a multiple of
:data:`~thresher.ops.BLAS_ROW_TILE` (MKL rounds other products with the thread
count: :mod:`thresher.ops.blas`), and a shared prefix is cut to a multiple of it.

The batching choices and per-token extras travel in one :class:`LossOptions`
(``unit_losses(lm, units, LossOptions(...))`` or its fields as keywords).

Every unit is cut after its last scored token (later tokens cannot change
earlier positions' losses under causal attention).

Shared prefixes (``share_prefix``, bucket mode, right padding): units are first
partitioned by their first ``min_prefix`` tokens (partitions smaller than
``min_partition`` are pooled), so units rendered with the same template land
in the same buckets; within a bucket the longest common token prefix (the
template's boilerplate, e.g. Alpaca's preamble) runs through the trunk ONCE,
its KV cache is repeated over the rows, and only the remainders run batched.
Causal attention makes this exact (up to float rounding).
"""

from __future__ import annotations

import copy
import inspect
from dataclasses import dataclass, field, replace
from typing import Any, Iterator, Optional, Sequence

import numpy as np
import torch

from ..ops import BLAS_ROW_TILE, tiled_width, token_loss
from ..progress import advance
from .loader import to_device

MODES = ("bucket", "pack", "row")
PADDING_SIDES = ("right", "left")


@dataclass
class Unit:
    """One sequence to run: token ``ids`` and the per-token ``score`` mask (same length)."""

    ids: Sequence[int]
    score: Sequence[bool]


@dataclass
class UnitLoss:
    """Per scored token of one unit, in sequence order (float64 arrays; rank int64)."""

    nll: np.ndarray
    entropy: Optional[np.ndarray] = None
    el2n: Optional[np.ndarray] = None
    rank: Optional[np.ndarray] = None


def _check_units(units: Sequence[Unit]) -> None:
    for i, u in enumerate(units):
        if len(u.ids) != len(u.score):
            raise ValueError(f"units[{i}]: ids ({len(u.ids)}) and score ({len(u.score)}) differ in length")


def _effective(u: Unit) -> tuple[list[int], list[int]]:
    """(ids cut after the last scored token, scored positions)."""
    pos = [t for t, s in enumerate(u.score) if s and t > 0]
    if not pos:
        return [], []
    return list(u.ids[: pos[-1] + 1]), pos


BUCKET_OVERHEAD_TOKENS = 64  # cost of one extra forward call, in padded tokens (DP bucketing)
MAX_BUCKET_ROWS = 256


def plan_buckets(
    lengths: Sequence[int], batch_tokens: int, *, overhead: int = BUCKET_OVERHEAD_TOKENS, shared: int = 0
) -> list[list[int]]:
    """Indices grouped into buckets of length-sorted units (longest first).

    Each bucket's ``rows x longest`` stays <= ``batch_tokens`` (a single longer
    unit gets its own bucket). Among such contiguous splits of the sorted order,
    dynamic programming picks the one minimising padded tokens + ``overhead`` per
    bucket, so a bucket is cut where the next unit is much shorter than its
    longest instead of being filled with padding. ``shared``: a token prefix
    common to all units, computed once per bucket (its savings enter the cost).
    O(n * MAX_BUCKET_ROWS).
    """
    order = [i for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)) if lengths[i] > 0]
    n = len(order)
    if n == 0:
        return []
    L = [lengths[i] for i in order]
    INF = float("inf")
    best = [INF] * (n + 1)
    cut = [0] * (n + 1)
    best[n] = 0.0
    for s in range(n - 1, -1, -1):  # bucket starts at s (its longest unit is L[s])
        cap = max(1, min(MAX_BUCKET_ROWS, batch_tokens // L[s]))
        top = min(n, s + cap)
        b = INF
        arg = s + 1
        for e in range(s + 1, top + 1):
            cp = min(shared, L[e - 1] - 1)
            c = (e - s) * L[s] - (e - s - 1) * cp + overhead + best[e]
            if c < b:
                b, arg = c, e
        best[s], cut[s] = b, arg
    out = []
    s = 0
    while s < n:
        out.append(order[s : cut[s]])
        s = cut[s]
    return out


def plan_packs(lengths: Sequence[int], batch_tokens: int) -> list[list[int]]:
    """First-fit-decreasing packing of units into rows of at most ``batch_tokens`` tokens."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    rows: list[list[int]] = []
    room: list[int] = []
    for i in order:
        n = lengths[i]
        if n == 0:
            continue
        for r in range(len(rows)):
            if room[r] >= n:
                rows[r].append(i)
                room[r] -= n
                break
        else:
            rows.append([i])
            room.append(batch_tokens - n)
    return rows


def one_per_batch(lengths: Sequence[int]) -> list[list[int]]:
    """``mode="row"``: each non-empty unit alone, longest first (ties by position)."""
    return [[i] for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)) if lengths[i] > 0]


def trunk_hidden(
    lm: Any, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor], position_ids: Optional[torch.Tensor]
) -> torch.Tensor:
    """Last hidden states [B, L, H] (final norm applied) of the decoder without the LM head."""
    out = lm.trunk()(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False)
    return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]


def plan_groups(
    effs: Sequence[Sequence[int]],
    batch_tokens: int,
    *,
    share_prefix: bool = True,
    min_prefix: int = 8,
    min_partition: int = 4,
) -> list[list[int]]:
    """Buckets (see :func:`plan_buckets`) formed within partitions of units that share
    their first ``min_prefix`` tokens (small partitions pooled), when ``share_prefix``."""
    lengths = [len(e) for e in effs]
    if not share_prefix:
        return plan_buckets(lengths, batch_tokens)
    parts: dict = {}
    for i, e in enumerate(effs):
        if len(e) > min_prefix:
            parts.setdefault(tuple(e[:min_prefix]), []).append(i)
    pooled = [i for i, e in enumerate(effs) if len(e) <= min_prefix]
    groups: list[list[int]] = []
    for members in parts.values():
        if len(members) < min_partition:
            pooled.extend(members)
            continue
        g_shared = common_prefix([effs[i] for i in members])
        sub = plan_buckets([lengths[i] for i in members], batch_tokens, shared=g_shared)
        groups.extend([[members[j] for j in g] for g in sub])
    pooled.sort()
    sub = plan_buckets([lengths[i] for i in pooled], batch_tokens)
    groups.extend([[pooled[j] for j in g] for g in sub])
    return groups


def common_prefix(seqs: Sequence[Sequence[int]]) -> int:
    """Length of the longest common prefix of the sequences."""
    if not seqs:
        return 0
    first = seqs[0]
    n = min(len(s) for s in seqs)
    k = 0
    while k < n and all(s[k] == first[k] for s in seqs):
        k += 1
    return k


def _cache_kw(trunk: Any) -> str:
    return "cache" if "cache" in inspect.signature(trunk.forward).parameters else "past_key_values"


def _prefix_cache(trunk: Any, ids: torch.Tensor) -> tuple[Any, Any]:
    """(trunk output, its KV cache) of one prefix run with ``use_cache=True``. A prefix of ``n`` tokens runs
    as its first ``n - n % BLAS_ROW_TILE`` tokens, then the other 1-3 against their cache (products of rows
    a multiple of the tile, or fewer than it: bits that do not follow the thread count, :mod:`thresher.ops.blas`)."""
    n = ids.shape[1]
    head = n - n % BLAS_ROW_TILE
    pre = trunk(input_ids=ids[:, :head] if 0 < head < n else ids, use_cache=True)
    cache = getattr(pre, "cache", None)
    cache = cache if cache is not None else pre.past_key_values
    if 0 < head < n:
        pre = trunk(input_ids=ids[:, head:], use_cache=True, **{_cache_kw(trunk): cache})
    return pre, cache


def trunk_hidden_shared(lm: Any, ids_t: torch.Tensor, cp: int) -> torch.Tensor:
    """Like :func:`trunk_hidden` for right-padded rows that share their first ``cp`` tokens:
    the prefix runs once and its KV cache is repeated over the rows. -> [B, L, H]."""
    trunk = lm.trunk()
    B = ids_t.shape[0]
    pre, cache = _prefix_cache(trunk, ids_t[:1, :cp])
    cache.batch_repeat_interleave(B)
    rest = trunk(input_ids=ids_t[:, cp:], use_cache=True, **{_cache_kw(trunk): cache})
    h0 = pre.last_hidden_state.expand(B, -1, -1)
    return torch.cat([h0, rest.last_hidden_state], dim=1)


@dataclass(frozen=True)
class LossOptions:
    """How :func:`unit_losses` batches units and what it computes besides the loss.

    ``batch_tokens``: padded-token budget of one batch (``mode="pack"``: tokens of one
    row); ``mode``: ``bucket`` | ``pack``; ``padding_side``: ``right`` | ``left``
    (bucket mode); ``backend``: force a :func:`thresher.ops.token_loss` backend;
    ``share_prefix``/``min_prefix``: run a bucket's common token prefix once when it
    is at least ``min_prefix`` tokens (bucket mode, right padding); ``entropy``,
    ``el2n``, ``rank``: per-token extras; ``trunk_only``: run the batches without the
    loss (benchmark ceiling; the results are then empty)."""

    batch_tokens: int = 4096
    mode: str = "bucket"
    padding_side: str = "right"
    backend: Optional[str] = None
    share_prefix: bool = True
    min_prefix: int = 8
    entropy: bool = False
    el2n: bool = False
    rank: bool = False
    trunk_only: bool = False

    def __post_init__(self) -> None:
        bt = self.batch_tokens
        if not isinstance(bt, int) or isinstance(bt, bool) or bt <= 0:
            raise ValueError(f"batch_tokens: expected a positive int, got {bt!r}")
        if self.mode not in MODES:
            raise ValueError(f"mode: {self.mode!r} not one of {MODES}")
        if self.padding_side not in PADDING_SIDES:
            raise ValueError(f"padding_side: {self.padding_side!r} not one of {PADDING_SIDES}")

    @property
    def shares(self) -> bool:
        """Shared prefixes apply: bucket mode with right padding."""
        return self.share_prefix and self.mode == "bucket" and self.padding_side == "right"


STAT_KEYS = ("forward_tokens", "real_tokens", "scored_tokens", "batches", "shared_prefix_tokens")


@dataclass
class _Batch:
    """One forward call: the token tensors and, per scored token, where its predictor sits."""

    ids: torch.Tensor
    attention_mask: Optional[torch.Tensor] = None
    position_ids: Optional[torch.Tensor] = None
    rows: list[int] = field(default_factory=list)
    cols: list[int] = field(default_factory=list)
    targets: list[int] = field(default_factory=list)
    seg: list[tuple[int, int]] = field(default_factory=list)  # (unit, scored count) in gather order
    shared: int = 0  # common prefix length run once (0: none)
    forward_tokens: int = 0
    real_tokens: int = 0

    def add(self, unit: int, ids: list[int], pos: list[int], row: int, off: int) -> None:
        self.rows.extend([row] * len(pos))
        self.cols.extend(off + t - 1 for t in pos)
        self.targets.extend(ids[t] for t in pos)
        self.seg.append((unit, len(pos)))


def _bucket_batch(grp: list[int], eff: list, pad_id: int, opts: LossOptions) -> _Batch:
    lengths = [len(eff[i][0]) for i in grp]
    B, cp = len(grp), _shared_prefix(grp, eff, opts)
    L = cp + tiled_width(B, max(lengths) - cp)  # every product B x (L - cp) rows: a multiple of the tile
    left = opts.padding_side == "left"
    bt = _Batch(torch.full((B, L), pad_id, dtype=torch.long), shared=cp)
    am = torch.zeros((B, L), dtype=torch.long) if left else None
    for b, i in enumerate(grp):
        ids, pos = eff[i]
        off = L - len(ids) if left else 0
        bt.ids[b, off : off + len(ids)] = torch.as_tensor(ids, dtype=torch.long)
        if am is not None:
            am[b, off:] = 1
        bt.add(i, ids, pos, b, off)
    if am is not None:
        bt.attention_mask, bt.position_ids = am, (am.cumsum(-1) - 1).clamp(min=0)
    bt.forward_tokens = B * L - (B - 1) * bt.shared
    bt.real_tokens = sum(lengths)
    return bt


def _shared_prefix(grp: list[int], eff: list, opts: LossOptions) -> int:
    """The bucket's common prefix run once (0: none): at most every unit's length - 1, cut to a multiple of
    the BLAS row tile (its forward is one row of that many tokens), at least ``min_prefix``."""
    if not opts.shares or len(grp) < 2:
        return 0
    cp = min(common_prefix([eff[i][0] for i in grp]), min(len(eff[i][0]) for i in grp) - 1)
    cp -= cp % BLAS_ROW_TILE
    return cp if cp >= opts.min_prefix else 0


def _pack_batch(grp: list[int], eff: list, pad_id: int) -> _Batch:
    real = sum(len(eff[i][0]) for i in grp)
    L = tiled_width(1, real)  # the padding after the last unit: a sequence of its own (positions from 0)
    bt = _Batch(torch.full((1, L), pad_id, dtype=torch.long), position_ids=torch.empty((1, L), dtype=torch.long))
    bt.position_ids[0, real:] = torch.arange(L - real)
    off = 0
    for i in grp:
        ids, pos = eff[i]
        n = len(ids)
        bt.ids[0, off : off + n] = torch.as_tensor(ids, dtype=torch.long)
        bt.position_ids[0, off : off + n] = torch.arange(n)
        bt.add(i, ids, pos, 0, off)
        off += n
    bt.forward_tokens, bt.real_tokens = L, real
    return bt


def _forward(lm: Any, bt: _Batch, device: torch.device) -> torch.Tensor:
    """The trunk on one batch; its tensors reach the device through pinned, non-blocking copies."""
    ids = to_device(bt.ids, device)
    if bt.shared > 0:
        return trunk_hidden_shared(lm, ids, bt.shared)
    am = to_device(bt.attention_mask, device) if bt.attention_mask is not None else None
    pos = to_device(bt.position_ids, device) if bt.position_ids is not None else None
    return trunk_hidden(lm, ids, am, pos)


#: Hidden states of scored tokens gathered on the device before ONE token_loss call (and
#: at the end of every unit_losses call): fewer, larger loss calls and no per-batch sync.
LOSS_FLUSH_BYTES = 128 << 20
_EXTRAS = ("entropy", "el2n", "rank")


class _LossQueue:
    """Scored tokens' hidden states and targets gathered on the device, their losses computed per
    flush and kept on the device; :meth:`host` copies everything to the host once."""

    def __init__(self, weight: torch.Tensor, opts: LossOptions) -> None:
        self.weight, self.opts = weight, opts
        self.hs: list[torch.Tensor] = []
        self.tg: list[torch.Tensor] = []
        self.seg: list[tuple[int, int]] = []
        self.nbytes = 0
        self.done: list[dict] = []

    def add(self, hidden: torch.Tensor, bt: _Batch) -> None:
        idx = to_device(torch.as_tensor(np.array([bt.rows, bt.cols, bt.targets], dtype=np.int64)), hidden.device)
        hs = hidden[idx[0], idx[1]]  # [M, H]: a copy, so the batch's hidden states can be freed
        self.hs.append(hs)
        self.tg.append(idx[2])
        self.seg.extend(bt.seg)
        self.nbytes += hs.numel() * hs.element_size()
        if self.nbytes >= LOSS_FLUSH_BYTES:
            self.flush()

    def flush(self) -> None:
        if not self.hs:
            return
        hs = self.hs[0] if len(self.hs) == 1 else torch.cat(self.hs)
        tg = self.tg[0] if len(self.tg) == 1 else torch.cat(self.tg)
        o = self.opts
        tl = token_loss(hs, self.weight, tg, entropy=o.entropy, el2n=o.el2n, rank=o.rank, backend=o.backend)
        self.done.append({"nll": tl.nll, "entropy": tl.entropy, "el2n": tl.el2n, "rank": tl.rank})
        self.hs, self.tg, self.nbytes = [], [], 0

    def host(self) -> dict:
        """Every flushed result on the host (one copy per quantity): float64, rank int64."""
        self.flush()
        want = {"nll": True, "entropy": self.opts.entropy, "el2n": self.opts.el2n, "rank": self.opts.rank}
        out: dict = {}
        for k, on in want.items():
            if not on or not self.done:
                out[k] = None
                continue
            parts = [d[k] for d in self.done]
            t = parts[0] if len(parts) == 1 else torch.cat(parts)
            out[k] = t.cpu().numpy() if k == "rank" else t.double().cpu().numpy()
        return out

    def scatter(self, results: list) -> None:
        """One UnitLoss per gathered unit, in ``results`` at the unit's input position."""
        got = self.host()
        k = 0
        for unit, cnt in self.seg:
            sl = slice(k, k + cnt)
            results[unit] = UnitLoss(*(got[q][sl] if got[q] is not None else None for q in ("nll",) + _EXTRAS))
            k += cnt


def _empty_loss(opts: LossOptions) -> UnitLoss:
    empty = np.zeros(0, dtype=np.float64)
    return UnitLoss(
        empty,
        empty if opts.entropy else None,
        empty if opts.el2n else None,
        np.zeros(0, dtype=np.int64) if opts.rank else None,
    )


def iter_batches(lm: Any, units: Sequence[Unit], opts: LossOptions) -> Iterator[tuple[list[int], _Batch]]:
    """The batches :func:`unit_losses` runs, in order: (unit indices, host tensors). Benchmarks time
    the bare trunk on exactly these."""
    _check_units(units)
    eff = [_effective(u) for u in units]
    pad_id = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
    if opts.mode == "bucket":
        groups = plan_groups(
            [e[0] for e in eff], opts.batch_tokens, share_prefix=opts.shares, min_prefix=opts.min_prefix
        )
    elif opts.mode == "row":
        groups = one_per_batch([len(e[0]) for e in eff])
    else:
        groups = plan_packs([len(e[0]) for e in eff], opts.batch_tokens)
    for grp in groups:
        bt = _pack_batch(grp, eff, pad_id) if opts.mode == "pack" else _bucket_batch(grp, eff, pad_id, opts)
        yield grp, bt


def unit_losses(
    lm: Any, units: Sequence[Unit], options: Optional[LossOptions] = None, *, stats: Optional[dict] = None, **kw: Any
) -> list[UnitLoss]:
    """Per-token losses for every unit (see the module doc). ``lm`` is a
    :class:`thresher.models.LoadedLM`; ``options`` a :class:`LossOptions`, or its fields
    as keywords (keywords override ``options``). Units with nothing to score get empty
    arrays. ``stats`` (a dict) receives :data:`STAT_KEYS`: ``forward_tokens`` (incl.
    padding, shared prefixes counted once), ``real_tokens``, ``scored_tokens``,
    ``batches`` and ``shared_prefix_tokens`` (tokens not recomputed thanks to shared
    prefixes).

    The host never waits for the device inside the loop: batches reach the device
    through pinned non-blocking copies, scored hidden states and their losses stay on
    the device (:data:`LOSS_FLUSH_BYTES`), and the results are copied to the host once
    at the end."""
    opts = LossOptions(**kw) if options is None else replace(options, **kw)
    results: list[Optional[UnitLoss]] = [None] * len(units)
    weight = lm.head_weight()
    losses = _LossQueue(weight, opts)
    st = dict.fromkeys(STAT_KEYS, 0)
    with torch.inference_mode():
        for grp, bt in iter_batches(lm, units, opts):
            st["forward_tokens"] += bt.forward_tokens
            st["shared_prefix_tokens"] += (len(grp) - 1) * bt.shared
            st["real_tokens"] += bt.real_tokens
            st["batches"] += 1
            hidden = _forward(lm, bt, weight.device)
            if not opts.trunk_only:
                st["scored_tokens"] += len(bt.targets)
                losses.add(hidden, bt)
            del hidden
            advance(len(grp))  # units done: the progress bar's rows within a shard
        if not opts.trunk_only:
            losses.scatter(results)
    if stats is not None:
        stats.update({k: stats.get(k, 0) + v for k, v in st.items()})
    return [r if r is not None else _empty_loss(opts) for r in results]


def full_logits_losses(lm: Any, units: Sequence[Unit]) -> list[UnitLoss]:
    """Oracle: one unit at a time, the model's full forward (all logits) + log_softmax."""
    out = []
    with torch.inference_mode():
        for u in units:
            ids, pos = _effective(u)
            if not pos:
                out.append(UnitLoss(np.zeros(0)))
                continue
            x = torch.as_tensor([ids], dtype=torch.long, device=lm.device)
            logits = lm.model(input_ids=x).logits[0].float()
            lp = torch.log_softmax(logits, -1)
            p = torch.as_tensor(pos, dtype=torch.long, device=lm.device)
            nll = -lp[p - 1, x[0, p]]
            out.append(UnitLoss(nll.double().cpu().numpy()))
    return out


def last_position_hidden(
    lm: Any, seqs: Sequence[Sequence[int]], *, batch_tokens: int = 4096, one_per_call: bool = False
) -> torch.Tensor:
    """Hidden state [n, H] (final norm applied) at the last token of each sequence, for
    readouts at one position (judge prompts). Length-bucketed, right padding, no mask;
    ``one_per_call``: each sequence alone (the same bits whichever sequences come with it)."""
    if not isinstance(batch_tokens, int) or isinstance(batch_tokens, bool) or batch_tokens <= 0:
        raise ValueError(f"batch_tokens: expected a positive int, got {batch_tokens!r}")
    for i, s in enumerate(seqs):
        if len(s) == 0:
            raise ValueError(f"seqs[{i}]: empty sequence")
    weight = lm.head_weight()
    device = weight.device
    pad_id = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
    out = torch.empty((len(seqs), weight.shape[1]), dtype=weight.dtype, device=device)
    lengths = [len(s) for s in seqs]
    with torch.inference_mode():
        for grp in one_per_batch(lengths) if one_per_call else plan_buckets(lengths, batch_tokens):
            L = tiled_width(len(grp), max(lengths[i] for i in grp))
            ids_t = torch.full((len(grp), L), pad_id, dtype=torch.long)
            for b, i in enumerate(grp):
                ids_t[b, : lengths[i]] = torch.as_tensor(list(seqs[i]), dtype=torch.long)
            h = trunk_hidden(lm, ids_t.to(device), None, None)
            rows = torch.arange(len(grp), device=device)
            cols = torch.as_tensor([lengths[i] - 1 for i in grp], device=device)
            out[torch.as_tensor(grp, device=device)] = h[rows, cols]
            advance(len(grp))
    return out


def _cont_effective(conts: Sequence[Unit]) -> list[tuple[list[int], list[int]]]:
    """(ids cut after the last scored token, scored positions) of each continuation (t = 0 may be scored)."""
    eff = []
    for j, u in enumerate(conts):
        if len(u.ids) != len(u.score):
            raise ValueError(f"conts[{j}]: ids ({len(u.ids)}) and score ({len(u.score)}) differ in length")
        pos = [t for t, s in enumerate(u.score) if s]
        eff.append((list(u.ids[: pos[-1] + 1]) if pos else [], pos))
    return eff


def prefix_reuse_losses(
    lm: Any,
    prefix: Sequence[int],
    conts: Sequence[Unit],
    *,
    batch_tokens: int = 4096,
    backend: Optional[str] = None,
    one_per_call: bool = False,
) -> list[UnitLoss]:
    """Losses of ``prefix + cont`` for many continuations, the prefix's KV cache computed once.

    ``conts[j].score[t]`` marks continuation token t (its loss is predicted from the
    previous token, which for t = 0 is the prefix's last token). The prefix runs
    once with ``use_cache=True``; its cache is repeated over a batch of
    continuations (right-padded, so no attention mask is needed) and reused.
    Equals running each ``prefix + cont`` from scratch (see tests). ``one_per_call``: each
    continuation in its own forward (``mode="row"``: the same bits whichever continuations
    are scored with it).
    """
    if len(prefix) == 0:
        raise ValueError("prefix: must hold at least one token")
    weight = lm.head_weight()
    pad_id = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
    eff = _cont_effective(conts)
    lengths = [len(e[0]) for e in eff]
    results: list[Optional[UnitLoss]] = [None] * len(conts)
    with torch.inference_mode():
        trunk = lm.trunk()
        pre, cache = _prefix_cache(trunk, torch.as_tensor([list(prefix)], device=weight.device))
        last_prefix_h = pre.last_hidden_state[0, -1]
        plan = one_per_batch(lengths) if one_per_call else plan_buckets(lengths, max(batch_tokens - len(prefix), 1))
        for grp in plan:
            ids_t = torch.full(
                (len(grp), tiled_width(len(grp), max(lengths[i] for i in grp))), pad_id, dtype=torch.long
            )
            for b, i in enumerate(grp):
                ids_t[b, : lengths[i]] = torch.as_tensor(eff[i][0], dtype=torch.long)
            c = copy.deepcopy(cache)
            if len(grp) > 1:
                c.batch_repeat_interleave(len(grp))
            h = trunk(input_ids=ids_t.to(weight.device), use_cache=True, **{_cache_kw(trunk): c}).last_hidden_state
            # predictor of token t is position t-1; for t = 0 it is the prefix's last position
            hs = [h[b, t - 1] if t > 0 else last_prefix_h for b, i in enumerate(grp) for t in eff[i][1]]
            tg = torch.as_tensor([eff[i][0][t] for i in grp for t in eff[i][1]], dtype=torch.long, device=h.device)
            nll = token_loss(torch.stack(hs), weight, tg, backend=backend).nll.double().cpu().numpy()
            k = 0
            for i in grp:
                results[i] = UnitLoss(nll[k : k + len(eff[i][1])])
                k += len(eff[i][1])
            advance(len(grp))
    return [r if r is not None else UnitLoss(np.zeros(0)) for r in results]
