"""Criterion base classes: options resolved once, cache keys without loading a model, the batch loop.

Every criterion is a :class:`Criterion`: ``Scorer(**options)`` resolves its options through
the registry entry (``CRITERIA.register`` sets ``NAME``), ``scorer(batch) -> DataFrame``
scores a batch, and

* ``Scorer.cache_key_for(**options) -> str`` (a classmethod) is the key of the score
  cache, computed from the options and the fingerprints of the models and files they
  name, WITHOUT loading a model, so a pipeline can look the cache up first;
* ``scorer.cache_key()`` returns the same string (pool-scoped criteria fitted on a
  pool append that pool's digest).

Options that cannot change scores (:data:`RUNTIME_OPTIONS`: devices, batch sizes,
caches, backends) stay out of the key. ``dtype`` changes scores, so the key holds the
resolved dtype (:func:`thresher.device.key_dtype`: ``auto`` on the CPU is ``float32``, as
before the device policy, so older caches stay valid).

:class:`BatchCriterion` owns the loop shared by the model-based criteria: the batch as
pandas, sample ids, the per-row ``items`` (a row that cannot be scored raises
:class:`Skip` or :class:`thresher.render.SampleError`: NaN plus ``<name>.reason``), ONE
``run`` over the items of the whole batch, then ``columns``. :class:`LMCriterion` adds
the shared causal LM, rendering with the "empty answer" check, and truncation with its
"truncated away" reason. A loss-based criterion then states only its units and its
columns (see :mod:`thresher.criteria.loss`).

Model and embedder fingerprints without loading (:func:`model_fingerprint`,
:func:`embedder_fingerprint`) live in :mod:`thresher.models.identity` and
:mod:`thresher.embed.identity`: a model replaced in place changes its key; the same model
moved elsewhere keeps it.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional, Sequence

import numpy as np
import pandas as pd

from ..device import DTYPE_CHOICES, key_dtype
from ..embed.identity import embedder_fingerprint  # noqa: F401 - re-exported to criteria
from ..errors import OptionError
from ..features.loader import map_ranges, prefetch, prep_threads, windows
from ..frames import as_pandas
from ..models import DEFAULT_SPEC, LoadedLM, shared_lm
from ..models.identity import digest, model_fingerprint  # noqa: F401 - model_fingerprint re-exported
from ..progress import scaled
from ..registry import CRITERIA, Option
from ..render import Rendered, SampleError, Tokenized, get_conversation, get_str, render_sample, tokenize_rendered

VERSION = "1"

#: Options that change how a criterion runs, never its scores: kept out of cache keys.
RUNTIME_OPTIONS = frozenset(
    {
        "device",
        "batch_tokens",
        "batching",
        "backend",
        "share_prefix",
        "batch_size",
        "cache_dir",
        "progress",
        "store",
        "checkpoint_dir",
        "checkpoint_s",
    }
)

#: Options shared by every criterion that runs one causal LM.
MODEL_OPTIONS = [
    Option(
        "model",
        DEFAULT_SPEC,
        "causal LM: 'default' (SmolLM2-135M-Instruct), a local path or an HF id",
        type=(str, LoadedLM),
    ),
    Option(
        "dtype", "auto", "model dtype (auto: bfloat16 on a GPU that supports it, else float32)", choices=DTYPE_CHOICES
    ),
    Option("device", "auto", "torch device of the model: auto (cuda when visible), cpu, cuda, cuda:N", type=str),
    Option("batch_tokens", 4096, "token budget of one batch (rows x longest row)", min=1),
]


def row_batching(what: str) -> Option:
    """``batching`` of a criterion whose model reads one row per call in ``row`` mode (``what``: its batches)."""
    return Option(
        "batching",
        "bucket",
        f"bucket: {what}; row: one row per forward (no other row's padding): the same score bits under every "
        "shard layout, engine and thread count, slower",
        choices=("bucket", "row"),
    )


class Skip(Exception):
    """A row that cannot be scored: its main column is NaN and the message is its reason."""


# ------------------------------------------------------------------ keys and fingerprints
def make_key(name: str, version: str, options: dict) -> str:
    """``<name>-v<version>-<digest of the options that change scores>``."""
    return f"{name}-v{version}-" + digest({"criterion": name, "version": version, "options": options})


_FILE_MEMO: dict[tuple, str] = {}


def file_digest(path: Any) -> str:
    """sha256 of a file's bytes (memoised per path, size and mtime in this process)."""
    p = Path(path)
    st = p.stat()
    key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _FILE_MEMO:
        h = hashlib.sha256()
        with open(p, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 22), b""):
                h.update(chunk)
        _FILE_MEMO[key] = h.hexdigest()
    return _FILE_MEMO[key]


def table_digest(data: Any) -> str:
    """Digest of a file's bytes (a path) or of a table's rows (a frame, a pyarrow table, a list of rows)."""
    if isinstance(data, (str, Path)):
        p = Path(data).expanduser()
        if not p.is_file():
            raise OptionError(f"file {str(data)!r} does not exist")
        return file_digest(p)
    if isinstance(data, list):
        return digest(data, 32)
    return digest(as_pandas(data).to_dict("records"), 32)


# ------------------------------------------------------------------ rows
def sample_ids(df: Any) -> list[str]:
    """The ``id`` column as strings, or row positions when there is none."""
    if "id" not in df.columns:
        return [str(i) for i in range(len(df))]
    out = []
    for i, v in enumerate(df["id"].tolist()):
        out.append(str(i) if v is None or (isinstance(v, float) and math.isnan(v)) else str(v))
    return out


def single_turn(row: dict, sid: str, who: str) -> tuple[str, str, str]:
    """(instruction, input, output) of a single-turn row; SampleError for multi-turn rows or bad fields."""
    if get_conversation(row, sid) is not None:
        raise SampleError(
            f"sample {sid!r}: multi-turn samples are not supported by {who} (score each turn as its own row)"
        )
    return (
        get_str(row, "instruction", sid, required=True),
        get_str(row, "input", sid, required=False),
        get_str(row, "output", sid, required=True),
    )


def mean_or_nan(x: np.ndarray) -> float:
    return float(x.mean()) if x.size else float("nan")


@dataclass
class Batch:
    """One batch being scored: its rows and ids, and per row the reason it is not scored and tokens cut."""

    df: pd.DataFrame
    ids: list[str]
    rows: list[dict]
    reason: list[str]
    n_cut: np.ndarray

    @classmethod
    def of(cls, batch: Any) -> "Batch":
        if isinstance(batch, Batch):
            return batch
        df = as_pandas(batch)
        n = len(df)
        return cls(df, sample_ids(df), df.to_dict("records"), [""] * n, np.zeros(n, dtype=np.int64))

    def part(self, sl: slice) -> "Batch":
        """Rows ``sl`` as a batch of their own (ids kept: a window of a batch without ids keeps positions)."""
        return Batch(
            self.df.iloc[sl].reset_index(drop=True), self.ids[sl], self.rows[sl], self.reason[sl], self.n_cut[sl].copy()
        )

    @property
    def n(self) -> int:
        return len(self.ids)


# ------------------------------------------------------------------ base classes
class Criterion:
    """Options through the registry entry, the cache key from options and fingerprints."""

    NAME = ""  # set by CRITERIA.register on each registered subclass
    VERSION = VERSION
    RUNTIME = RUNTIME_OPTIONS
    # a pool-scoped criterion whose call on a pool is ``score_embeddings(ids, vectors, keys, empty)`` of the
    # pool's embeddings (:meth:`pool_embedder`): a run can hand it the vectors instead of the pool's texts
    SCORES_FROM_EMBEDDINGS = False

    def __init__(self, **options: Any) -> None:
        self.options = self.resolve(options)

    @classmethod
    def resolve(cls, options: dict) -> dict:
        """Defaults filled in, every value validated (OptionError naming the option)."""
        return CRITERIA.get(cls.NAME).resolve_options(options)

    @classmethod
    def key_options(cls, options: dict) -> dict:
        """The resolved options that change scores, with models and files replaced by their
        fingerprints. Subclasses extend it; it never loads a model."""
        out = {k: v for k, v in options.items() if k not in cls.RUNTIME}
        if "dtype" in out:  # the resolved dtype changes scores; "auto" on the CPU keys as float32 did
            out["dtype"] = key_dtype(out["dtype"], options.get("device"))
        return out

    @classmethod
    def pool_embedder(cls, options: dict) -> Optional[tuple[str, Optional[str]]]:
        """(embedder, device) of the pool embedding a call with these (runtime) options reads through the
        embeddings cache (``cache_dir``), so a run's workers can fill it first; None when it reads none."""
        emb = options.get("embedder")
        if isinstance(emb, str) and options.get("cache_dir") is not None:
            return emb, options.get("device")
        return None

    @classmethod
    def cache_key_for(cls, **options: Any) -> str:
        """The score-cache key of a scorer built with ``options`` (given or resolved), without building it."""
        return make_key(cls.NAME, cls.VERSION, cls.key_options(cls.resolve(options)))

    def cache_key(self) -> str:
        return type(self).cache_key_for(**self.options)


class BatchCriterion(Criterion):
    """The batch loop: ``items`` per row, ONE ``run`` over all items of the batch, ``columns``.

    ``items(b, i, row)`` returns ``[(tag, item)]`` (raise :class:`Skip` or SampleError
    for a row that cannot be scored); ``run(items)`` returns one result per item;
    ``columns(b, results)`` gets per row ``{tag: [results]}`` and returns the columns:
    ``""`` is the main column, other keys become ``<name>.<key>``. Rows with a reason
    (``b.reason``, which ``columns`` may also set) get NaN in the main column.

    ``window_rows`` (None: the whole batch at once) and ``prefetch`` (windows prepared ahead
    in a background thread) only change how a call runs; :class:`LMCriterion` sets both, so
    the model never waits for rendering and tokenisation (see :mod:`thresher.features.loader`).
    ``prepare`` then runs in the background thread: ``items`` must not touch what ``run`` and
    ``columns`` of an earlier batch use, besides the read-only model. A criterion that
    overrides ``begin`` (per-batch state) is never windowed nor prefetched."""

    window_rows: Optional[int] = None
    prefetch: int = 0
    prep_threads: int = 1  # threads that prepare a batch's rows (``items`` must then not mutate shared state)

    @property
    def chunk_rows(self) -> Optional[int]:
        """Rows a call may be cut at (or at any multiple of them) and still give the scores of one
        call, bit for bit: the window, when windows apply (a call scores each window on its own);
        None: only whole calls (thresher.pipeline.checkpoint then checkpoints whole shards)."""
        return self.window_rows if self._windowed() else None

    def begin(self, b: Batch) -> None:
        """Hook before the rows (e.g. per-batch anchors); may set reasons."""

    def items(self, b: Batch, i: int, row: dict) -> list[tuple[Any, Any]]:  # pragma: no cover - abstract
        raise NotImplementedError

    def run(self, items: list) -> list:  # pragma: no cover - abstract
        raise NotImplementedError

    def columns(self, b: Batch, results: list[dict]) -> dict:  # pragma: no cover - abstract
        raise NotImplementedError

    def prepare(self, batch: Any) -> dict:
        """Rows -> items without running the model: ``units`` (the items), ``owner`` ((row, tag)
        per item), ``batch``; benchmarks reuse it to time the model call alone. With
        ``prep_threads > 1`` (and no ``begin`` override) consecutive ranges of rows are prepared
        on that many threads (:func:`~thresher.features.loader.map_ranges`), in row order."""
        b = Batch.of(batch)
        self.begin(b)
        threads = self.prep_threads if self._windowed() else 1
        items: list = []
        owner: list[tuple[int, Any]] = []
        for part_items, part_owner in map_ranges(lambda r: self._items_of(b, r), b.n, threads):
            items += part_items
            owner += part_owner
        return {"batch": b, "units": items, "owner": owner}

    def _items_of(self, b: Batch, rows: range) -> tuple[list, list]:
        """``items`` of ``rows`` (a row that cannot be scored gets its reason instead)."""
        items: list = []
        owner: list[tuple[int, Any]] = []
        for i in rows:
            if b.reason[i]:
                continue
            try:
                got = self.items(b, i, b.rows[i])
            except (SampleError, Skip) as exc:
                b.reason[i] = str(exc)
                continue
            for tag, item in got:
                items.append(item)
                owner.append((i, tag))
        return items, owner

    def __call__(self, batch: Any) -> pd.DataFrame:
        """Scores of ``batch``; more than ``window_rows`` rows are scored window by window, the next
        window rendered and tokenised in the background while the model runs the current one."""
        b = Batch.of(batch)
        w = self.window_rows if self._windowed() else None
        if not w or b.n <= w:
            return self.finish(self.prepare(b))
        return pd.concat(list(self.stream(b.part(sl) for sl in windows(b.n, w))), ignore_index=True)

    def stream(self, batches: Iterable[Any]) -> Iterator[pd.DataFrame]:
        """One frame per batch, in order; batch k+1 is prepared (``prepare``: rendering,
        tokenisation) in a background thread while batch k runs (``prefetch`` batches ahead;
        0: in this thread). An error raised while preparing a batch reaches the caller when
        that batch's turn comes; rows that cannot be scored keep their reasons as in a call."""
        for prep in prefetch(self.prepare, batches, depth=self.prefetch if self._windowed() else 0):
            yield self.finish(prep)

    def _windowed(self) -> bool:
        """Windows and prefetching apply: ``begin`` is not overridden (a criterion that keeps
        per-batch state there, e.g. nuggets' anchors, scores each call in one piece, in order)."""
        return type(self).begin is BatchCriterion.begin

    def finish(self, prep: dict) -> pd.DataFrame:
        """Run the prepared units (:meth:`prepare`) and build the batch's frame."""
        b = prep["batch"]
        # the run reports its units as it goes (thresher.progress.advance); the batch's rows are done after it
        with scaled(b.n, len(prep["units"])):
            out = self.run(prep["units"]) if prep["units"] else []
        per: list[dict] = [{} for _ in range(b.n)]
        for (i, tag), res in zip(prep["owner"], out):
            per[i].setdefault(tag, []).append(res)
        return self.frame(b, self.columns(b, per))

    def frame(self, b: Batch, cols: dict) -> pd.DataFrame:
        cols = dict(cols)
        main = np.array(cols.pop(""), dtype=np.float64)
        main[np.array([bool(r) for r in b.reason], dtype=bool)] = np.nan
        out: dict = {"id": b.ids, self.NAME: main}
        out.update({f"{self.NAME}.{k}": v for k, v in cols.items()})
        out[f"{self.NAME}.reason"] = b.reason
        return pd.DataFrame(out)


class LMCriterion(BatchCriterion):
    """A batch criterion over one shared causal LM (option ``model``): rendering and truncation.

    Calls of more than ``window_rows`` rows run window by window, the next window rendered
    and tokenised while the model scores the current one; batches are packed by token
    count within a window (a subclass overriding ``begin`` is scored in one piece)."""

    window_rows: Optional[int] = 2048
    # On a CPU a window of 2,048 rows runs for minutes; windows are also the unit of the checkpoints
    # inside a shard (thresher.pipeline.checkpoint), so a CPU scorer uses smaller ones (about a minute
    # of SmolLM2 IFD on two cores; packing by token count needs no more rows than this).
    cpu_window_rows: int = 256
    prefetch: int = 2

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        o = self.options
        self.lm = shared_lm(o["model"], dtype=o["dtype"], device=o["device"])
        self.prep_threads = prep_threads(self.lm.device)
        if self.window_rows and str(self.lm.device).split(":")[0] == "cpu":
            self.window_rows = min(self.window_rows, self.cpu_window_rows)
        self.setup()

    def setup(self) -> None:
        """Hook after the model is loaded (checks that need the tokenizer)."""

    @classmethod
    def key_options(cls, options: dict) -> dict:
        out = super().key_options(options)
        out["model"] = model_fingerprint(options["model"])
        return out

    @property
    def tokenizer(self) -> Any:
        return self.lm.tokenizer

    def max_length(self) -> Optional[int]:
        """The ``max_length`` option capped by the model's context (either may be None)."""
        ml = self.options.get("max_length")
        ctx = self.lm.max_length
        if ml is None:
            return ctx
        return min(ml, ctx) if ctx else ml

    def render(
        self, b: Batch, i: int, row: dict, template: Optional[str] = None, *, require_answer: bool = True
    ) -> Rendered:
        """The rendered row; Skip("empty answer") when every answer span is blank."""
        r = render_sample(row, template or self.options["template"], self.tokenizer, sid=b.ids[i])
        if require_answer and all(not r.text[a:e].strip() for a, e in r.spans):
            raise Skip("empty answer")
        return r

    def tokenize(self, b: Batch, i: int, r: Rendered, what: str = "answer", **kw: Any) -> Tokenized:
        """Tokenised with the ``max_length``/``truncation`` options; records the tokens cut and
        raises Skip when no ``what`` token is left to score."""
        ml = self.max_length()
        tk = tokenize_rendered(r, self.tokenizer, max_length=ml, truncation=self.options["truncation"], **kw)
        b.n_cut[i] = tk.n_cut
        if tk.answer_kept == 0:
            if tk.truncated and tk.answer_total:
                raise Skip(f"{what} truncated away (max_length={ml})")
            raise Skip(f"{what} has no scorable token")
        return tk

    def context_ids(self) -> list[int]:
        """[BOS] (or [EOS] when the tokenizer has no BOS): the one-token context of a direct pass."""
        tok = self.tokenizer
        bos = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
        if bos is None:
            raise OptionError(f"{self.NAME}: context=bos but the tokenizer has neither a BOS nor an EOS token")
        return [bos]


def split_list(v: Any, name: str) -> list:
    """A comma-separated string or a list/tuple as a list."""
    if isinstance(v, str):
        return [x.strip() for x in v.split(",") if x.strip()]
    if isinstance(v, (list, tuple)):
        return list(v)
    raise OptionError(f"option {name}: expected a comma-separated string or a list, got {type(v).__name__}")


def concat(parts: Optional[Sequence[np.ndarray]]) -> np.ndarray:
    return np.concatenate(list(parts)) if parts else np.zeros(0)
