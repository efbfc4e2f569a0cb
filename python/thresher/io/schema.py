"""Schema detection and normalisation of raw records into the sample table.

Supported schemas (detected from a record's keys, or forced with an explicit
field mapping):

* ``alpaca``       ``instruction``, optional ``input``, ``output``
* ``sharegpt``     ``conversations``: list of ``{"from": human|gpt|system, "value": str}``
* ``openai``       ``messages``: list of ``{"role": user|assistant|system, "content": str}``
* ``prompt``       ``prompt`` and ``response`` (or ``completion``)
* ``mapped``       an explicit mapping ``{"instruction": FIELD, "input": FIELD|None,
                   "output": FIELD, "id": FIELD, "group": FIELD}``

Multi-turn samples keep the whole dialogue in ``conversation`` (list of
``{"role", "content"}``); ``instruction``/``output`` hold the last user turn
and the last assistant turn so that single-turn criteria still see text.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Optional

from ..errors import InputError, OptionError

SAMPLE_FIELDS = ("instruction", "input", "output")
ID_FIELDS = ("id", "idx", "uid", "sample_id")
GROUP_FIELDS = ("task", "source", "category", "dataset", "group")
SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "bard": "assistant",
    "bing": "assistant",
    "system": "system",
}


class DataError(InputError):
    """A bad row or file: names the file, the line (1-based) and the field.

    The io layer's name for :class:`thresher.errors.InputError` (kept for callers that import it)."""


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
    keys = set(record)
    id_f = next((k for k in ID_FIELDS if k in keys), None)
    grp = group_field or next((k for k in GROUP_FIELDS if k in keys), None)
    if mapping:
        unknown = set(mapping) - {"instruction", "input", "output", "conversation", "id", "group"}
        if unknown:
            raise OptionError(
                f"fields: unknown target(s) {sorted(unknown)}; expected instruction, input, "
                "output, conversation, id, group"
            )
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
            for f in ("instruction", "output"):
                if not mapping.get(f):
                    raise OptionError(f"fields: mapping needs {f!r} (or 'conversation')")
            s.instruction, s.output, s.input = mapping["instruction"], mapping["output"], mapping.get("input")
        return s
    if "conversations" in keys:
        return Schema("sharegpt", conversation="conversations", id=id_f, group=grp)
    if "messages" in keys:
        return Schema("openai", conversation="messages", id=id_f, group=grp)
    if "conversation" in keys and isinstance(record["conversation"], list):
        conv = record["conversation"]
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


def _text(record: dict, name: Optional[str], *, file: Any, line: Optional[int], required: bool) -> str:
    if name is None:
        return ""
    if name not in record or record[name] is None:
        if required:
            raise DataError("missing field", file=file, line=line, field=name)
        return ""
    v = record[name]
    if isinstance(v, str):
        return v
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return str(v)
    raise DataError(f"expected a string, got {type(v).__name__}", file=file, line=line, field=name)


def _conversation(record: dict, s: Schema, *, file: Any, line: Optional[int]) -> list[dict]:
    name = s.conversation
    conv = record.get(name)
    if conv is None:
        raise DataError("missing field", file=file, line=line, field=name)
    if hasattr(conv, "tolist") and not isinstance(conv, list):  # numpy arrays from parquet
        conv = conv.tolist()
    if not isinstance(conv, list):
        raise DataError(f"expected a list of turns, got {type(conv).__name__}", file=file, line=line, field=name)
    out = []
    for i, turn in enumerate(conv):
        if not isinstance(turn, dict):
            raise DataError(
                f"turn {i}: expected an object, got {type(turn).__name__}", file=file, line=line, field=name
            )
        if s.kind == "sharegpt":
            role_raw, content = turn.get("from"), turn.get("value")
            role = SHAREGPT_ROLES.get(str(role_raw).lower()) if role_raw is not None else None
        else:
            role_raw, content = turn.get("role"), turn.get("content")
            role = role_raw if role_raw in ("system", "user", "assistant") else None
        if role is None:
            raise DataError(f"turn {i}: unknown role {role_raw!r}", file=file, line=line, field=name)
        if not isinstance(content, str):
            raise DataError(
                f"turn {i}: content must be a string, got {type(content).__name__}", file=file, line=line, field=name
            )
        out.append({"role": role, "content": content})
    if not any(t["role"] == "assistant" for t in out):
        raise DataError("conversation has no assistant turn", file=file, line=line, field=name)
    return out


CONVERSATION_FIELDS = ("conversation", "messages", "conversations")


def _row_schema(record: dict, s: Schema) -> Schema:
    """A dialogue row in a single-turn file (no instruction, a conversation list) is read as a dialogue."""
    if s.conversation or s.kind not in ("alpaca", "prompt") or record.get(s.instruction) is not None:
        return s
    for key in CONVERSATION_FIELDS:
        conv = record.get(key)
        if isinstance(conv, list) and conv:
            kind = "sharegpt" if isinstance(conv[0], dict) and "from" in conv[0] else "openai"
            return Schema(kind, conversation=key, id=s.id, group=s.group)
    return s


def normalize_record(record: dict, s: Schema, *, file: Any = None, line: Optional[int] = None) -> dict:
    """One raw record -> one sample-table row (without ``id``; see :func:`sample_id`)."""
    if not isinstance(record, dict):
        raise DataError(f"expected a JSON object, got {type(record).__name__}", file=file, line=line)
    row: dict[str, Any] = {}
    s = _row_schema(record, s)
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
        row["group"] = "" if g is None else str(g)
    own = None
    if s.id is not None and record.get(s.id) is not None:
        v = record[s.id]
        if isinstance(v, bool) or not isinstance(v, (str, int)):
            raise DataError(
                f"id must be a string or an integer, got {type(v).__name__}", file=file, line=line, field=s.id
            )
        own = str(v)
    row["_own_id"] = own
    return row


def content_hash(row: dict) -> str:
    """Stable hash of a sample's content (instruction, input, output, conversation): 32 hex chars."""
    payload = [row.get("instruction", ""), row.get("input", ""), row.get("output", "")]
    conv = row.get("conversation")
    if conv is not None and not (isinstance(conv, float)):
        payload.append([[t["role"], t["content"]] for t in conv])
    data = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return hashlib.blake2b(data, digest_size=16).hexdigest()
