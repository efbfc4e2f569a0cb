"""Schema detection and normalisation of raw records into the sample table.

Supported schemas (detected from a record's keys, or forced with an explicit
field mapping):

* ``alpaca``       ``instruction``, optional ``input``, ``output``
* ``sharegpt``     ``conversations``: list of ``{"from": human|gpt|system|function_call|observation, "value": str}``
* ``openai``       ``messages``: list of ``{"role": system|developer|user|assistant|tool|function, "content": ...}``
                   (content a string, a list of text parts, or null beside ``tool_calls``)
* ``prompt``       ``prompt`` and ``response`` (or ``completion``)
* ``mapped``       an explicit mapping ``{"instruction": FIELD, "input": FIELD|None,
                   "output": FIELD, "id": FIELD, "group": FIELD}``

Multi-turn samples keep the whole dialogue in ``conversation`` (list of
``{"role", "content"}``); ``instruction``/``output`` hold the last user turn
and the last assistant turn so that single-turn criteria still see text; roles
are normalised to ``system``, ``user``, ``assistant`` and ``tool`` (see :data:`ROLES`).

The schema is detected from the pool's first good row and checked per row: a row
the pool's schema does not fit (a ``messages`` row in an Alpaca file) is read with
its own (:func:`row_schema`), so mixed pools work.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any, Optional

from ..errors import InputError, OptionError

SAMPLE_FIELDS = ("instruction", "input", "output")
ID_FIELDS = ("id", "idx", "uid", "sample_id")
GROUP_FIELDS = ("task", "source", "category", "dataset", "group")
# every chat role a turn may carry -> the sample table's role (system, user, assistant, tool)
ROLES = {
    "system": "system",
    "developer": "system",
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "bard": "assistant",
    "bing": "assistant",
    "model": "assistant",
    "function_call": "assistant",  # ShareGPT-style tool datasets: the assistant's call
    "tool": "tool",
    "function": "tool",  # OpenAI's legacy name for a tool result
    "observation": "tool",  # ShareGPT-style tool datasets: the tool's answer
    "ipython": "tool",
}
SHAREGPT_ROLES = ROLES  # the older name


def missing(v: Any) -> bool:
    """None, or a float NaN (a missing cell in a pandas frame)."""
    return v is None or (isinstance(v, float) and math.isnan(v))


def _missing_why(record: dict, name: Any) -> str:
    """Why a required field has no value: absent, or null (None, or NaN: a table's empty cell)."""
    return "missing field" if name not in record else "missing field (null)"


class DataError(InputError):
    """A bad row or file: names the file, the line (1-based) and the field.

    The io layer's name for :class:`thresher.errors.InputError` (kept for callers that import it).
    ``skippable``: whether ``--on-bad-row skip`` would get past it (a bad row), or not (the file
    itself: empty, not a JSON array, unterminated; see :func:`file_error`)."""

    skippable = True


def file_error(message: str, file: Any, line: Optional[int] = None) -> DataError:
    """A :class:`DataError` about a whole file, which skipping bad rows cannot get past."""
    err = DataError(message, file=file, line=line)
    err.skippable = False
    return err


@dataclass
class Schema:
    """How a raw record maps onto the sample table."""

    kind: str  # alpaca | sharegpt | openai | prompt | mapped
    instruction: Optional[str] = None
    input: Optional[str] = None
    output: Optional[str] = None
    conversation: Optional[str] = None
    id: Optional[str] = None
    group: Optional[str] = None
    extra: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v not in (None, {}, [])}


def detect_schema(
    record: dict,
    mapping: Optional[dict] = None,
    *,
    file: Any = None,
    line: Optional[int] = None,
    group_field: Optional[str] = None,
) -> Schema:
    """Detect the schema from one record's keys; ``mapping`` overrides detection."""
    if not isinstance(record, dict):
        raise DataError(f"expected a JSON object (record), got {type(record).__name__}", file=file, line=line)
    keys = {k for k, v in record.items() if not missing(v)}
    id_f = next((k for k in ID_FIELDS if k in keys), None)
    grp = group_field or next((k for k in GROUP_FIELDS if k in keys), None)
    if mapping:
        check_mapping(mapping, file)
        s = Schema("mapped", id=mapping.get("id", id_f), group=mapping.get("group", grp))
        if mapping.get("conversation"):
            s.conversation = mapping["conversation"]
            conv = record.get(s.conversation)
            s.kind = (
                "sharegpt"
                if conv and isinstance(conv, list) and isinstance(conv[0], dict) and "from" in conv[0]
                else "openai"
            )
            s.extra["mapped"] = True
        else:
            s.instruction, s.output, s.input = mapping["instruction"], mapping["output"], mapping.get("input")
        return s
    if "conversations" in keys:
        return Schema("sharegpt", conversation="conversations", id=id_f, group=grp)
    if "messages" in keys:
        return Schema("openai", conversation="messages", id=id_f, group=grp)
    if "conversation" in keys and isinstance(_as_list(record["conversation"]), list):
        conv = _as_list(record["conversation"])
        kind = "sharegpt" if conv and isinstance(conv[0], dict) and "from" in conv[0] else "openai"
        return Schema(kind, conversation="conversation", id=id_f, group=grp)
    if "instruction" in keys and "output" in keys:
        # ``input`` is optional per row: rows after the first may have it even when the first has not
        return Schema("alpaca", instruction="instruction", input="input", output="output", id=id_f, group=grp)
    if "prompt" in keys and ("response" in keys or "completion" in keys):
        return Schema(
            "prompt",
            instruction="prompt",
            output="response" if "response" in keys else "completion",
            id=id_f,
            group=grp,
        )
    raise DataError(
        f"cannot detect the schema from fields {sorted(keys)}: expected instruction/output (Alpaca), "
        "conversations (ShareGPT), messages (OpenAI) or prompt/response; pass an explicit field mapping "
        "(--field instruction=COL --field output=COL)",
        file=file,
        line=line,
    )


MAPPING_TARGETS = ("instruction", "input", "output", "conversation", "id", "group")


def check_mapping(mapping: dict, file: Any = None) -> None:
    """An explicit field mapping (``--field TARGET=COLUMN``) before any row is read: known targets,
    and ``instruction`` with ``output`` or ``conversation``. OptionError naming the data."""
    where = f" for {file}" if file is not None else ""
    unknown = set(mapping) - set(MAPPING_TARGETS)
    if unknown:
        raise OptionError(f"fields: unknown target(s) {sorted(unknown)}{where}; expected {', '.join(MAPPING_TARGETS)}")
    if mapping.get("conversation"):
        return
    lack = [f for f in ("instruction", "output") if not mapping.get(f)]
    if lack:
        given = " ".join(f"--field {k}={v}" for k, v in mapping.items() if v)
        raise OptionError(
            f"fields: {given or 'the mapping'}{where} also needs "
            + " and ".join(f"--field {f}=COLUMN" for f in lack)
            + " (or --field conversation=COLUMN for chat rows)"
        )


def mapped_columns(mapping: Optional[dict]) -> dict:
    """``{column: target}`` of the columns an explicit mapping reads."""
    return {v: k for k, v in (mapping or {}).items() if isinstance(v, str) and v}


def _text(record: dict, name: Optional[str], *, file: Any, line: Optional[int], required: bool) -> str:
    if name is None:
        return ""
    if name not in record or missing(record[name]):
        if required:
            raise DataError(_missing_why(record, name), file=file, line=line, field=name)
        return ""
    v = record[name]
    if isinstance(v, str):
        return v
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return str(v)
    raise DataError(f"expected a string, got {type(v).__name__}", file=file, line=line, field=name)


def _as_list(v: Any) -> Any:
    """numpy arrays and tuples (Parquet, pandas) as lists; anything else unchanged."""
    if hasattr(v, "tolist") and not isinstance(v, (list, str)):
        return v.tolist()
    return list(v) if isinstance(v, tuple) else v


def _turn_content(turn: dict, i: int, *, file: Any, line: Optional[int], field: Optional[str]) -> str:
    """A turn's text: a string, a list of OpenAI content parts (their text joined), or, for an
    assistant turn that only calls tools, its ``tool_calls``/``function_call`` as JSON."""
    content = turn.get("content", turn.get("value"))
    content = _as_list(content)
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for p in content:
            if isinstance(p, str):
                parts.append(p)
            elif isinstance(p, dict) and isinstance(p.get("text"), str):
                parts.append(p["text"])
        return "\n".join(parts)
    calls = [turn.get(k) for k in ("tool_calls", "function_call") if not missing(turn.get(k))]
    if missing(content) and calls:
        return json.dumps(_as_list(calls[0]), ensure_ascii=False, sort_keys=True, default=_jsonable)
    if missing(content) and ROLES.get(str(turn.get("role", turn.get("from"))).lower()) == "tool":
        return ""
    raise DataError(
        f"turn {i}: content must be a string, got {type(content).__name__}", file=file, line=line, field=field
    )


turn_content = _turn_content  # public name (thresher.render reads raw turns the same way)


def _jsonable(v: Any) -> Any:
    if hasattr(v, "tolist"):
        return v.tolist()
    raise TypeError(f"{type(v).__name__} is not JSON serialisable")


def _conversation(record: dict, s: Schema, *, file: Any, line: Optional[int]) -> list[dict]:
    """The turns as ``[{"role", "content"}]`` with roles system, user, assistant or tool.

    A turn may be written either way (``role``/``content`` or ShareGPT's ``from``/``value``)."""
    name = s.conversation
    conv = record.get(name)
    if missing(conv):
        raise DataError(_missing_why(record, name), file=file, line=line, field=name)
    conv = _as_list(conv)
    if not isinstance(conv, list):
        raise DataError(f"expected a list of turns, got {type(conv).__name__}", file=file, line=line, field=name)
    out = []
    for i, turn in enumerate(conv):
        if not isinstance(turn, dict):
            raise DataError(
                f"turn {i}: expected an object, got {type(turn).__name__}", file=file, line=line, field=name
            )
        role_raw = turn.get("role", turn.get("from"))
        role = ROLES.get(str(role_raw).lower()) if isinstance(role_raw, str) else None
        if role is None:
            raise DataError(
                f"turn {i}: unknown role {role_raw!r} (known: {', '.join(sorted(ROLES))})",
                file=file,
                line=line,
                field=name,
            )
        out.append({"role": role, "content": _turn_content(turn, i, file=file, line=line, field=name)})
    if not any(t["role"] == "assistant" for t in out):
        raise DataError("conversation has no assistant turn", file=file, line=line, field=name)
    return out


CONVERSATION_FIELDS = ("conversation", "messages", "conversations")


def _fits(record: dict, s: Schema) -> bool:
    if s.conversation:
        return not missing(record.get(s.conversation))
    return not missing(record.get(s.instruction)) and not missing(record.get(s.output))


def row_schema(record: dict, s: Schema) -> Schema:
    """The schema of one row: the pool's, or (per-row detection, for pools that mix Alpaca,
    prompt/response and chat rows) the row's own when the pool's does not fit it. An explicit
    field mapping is never second-guessed; a row no schema fits keeps the pool's (whose error
    then names the missing field)."""
    if s.kind == "mapped" or s.extra.get("mapped") or _fits(record, s):
        return s
    try:
        own = detect_schema(record)
    except DataError:
        return s
    return dataclasses.replace(own, id=s.id or own.id, group=s.group)


def normalize_record(record: dict, s: Schema, *, file: Any = None, line: Optional[int] = None) -> dict:
    """One raw record -> one sample-table row (without ``id``; see :func:`content_hash`)."""
    if not isinstance(record, dict):
        raise DataError(f"expected a JSON object, got {type(record).__name__}", file=file, line=line)
    row: dict[str, Any] = {}
    s = row_schema(record, s)
    if s.conversation:
        conv = _conversation(record, s, file=file, line=line)
        last_a = max(i for i, t in enumerate(conv) if t["role"] == "assistant")
        users = [t for t in conv[:last_a] if t["role"] == "user"]
        row["instruction"] = users[-1]["content"] if users else ""
        row["input"] = ""
        row["output"] = conv[last_a]["content"]
        row["conversation"] = conv
    else:
        row["instruction"] = _text(record, s.instruction, file=file, line=line, required=True)
        row["input"] = _text(record, s.input, file=file, line=line, required=False)
        row["output"] = _text(record, s.output, file=file, line=line, required=True)
    if s.group is not None:
        g = record.get(s.group)
        row["group"] = "" if missing(g) else str(g)
    row["_own_id"] = own_id(record.get(s.id) if s.id is not None else None, file=file, line=line, field=s.id)
    return row


def own_id(v: Any, *, file: Any = None, line: Optional[int] = None, field: Optional[str] = None) -> Optional[str]:
    """A row's own id as a string (None when it has none); a float, list, ... is a DataError."""
    if missing(v):
        return None
    if isinstance(v, bool) or not isinstance(v, (str, int)):
        if hasattr(v, "item") and isinstance(v.item(), int) and not isinstance(v.item(), bool):  # numpy ints
            return str(v.item())
        raise DataError(f"id must be a string or an integer, got {type(v).__name__}", file=file, line=line, field=field)
    return str(v)


def content_hash(row: dict) -> str:
    """Stable hash of a sample's content (instruction, input, output, conversation): 32 hex chars."""
    payload = [row.get("instruction", ""), row.get("input", ""), row.get("output", "")]
    conv = row.get("conversation")
    if conv is not None and not (isinstance(conv, float)):
        payload.append([[t["role"], t["content"]] for t in conv])
    data = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return hashlib.blake2b(data, digest_size=16).hexdigest()
