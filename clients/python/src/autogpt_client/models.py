"""What AutoGPTClient returns: small dataclasses with attribute access
(`task.task_id`), each keeping the JSON it was built from in `.raw`, and
`Record`, an attribute dict for the less structured answers (status,
pagination, delete/restart results)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Generic, Iterator, List, Optional, TypeVar

T = TypeVar("T")


class Record(dict):
    """A dict whose keys are also attributes, nested dicts included:
    `client.get_status().memory_usage.used`."""

    def __getattr__(self, name: str) -> Any:
        try:
            return _wrap(self[name])
        except KeyError:
            raise AttributeError(name) from None

    @property
    def raw(self) -> dict:
        return dict(self)


def _wrap(value: Any) -> Any:
    if isinstance(value, dict) and not isinstance(value, Record):
        return Record(value)
    if isinstance(value, list):
        return [_wrap(v) for v in value]
    return value


def _known(cls, data: dict) -> dict:
    """The entries of `data` that are fields of `cls` (unknown keys stay in raw)."""
    names = {f.name for f in fields(cls)} - {"raw"}
    return {k: v for k, v in data.items() if k in names}


@dataclass
class Artifact:
    artifact_id: str
    file_name: str = ""
    relative_path: str = ""
    file_size: Optional[int] = None
    created_at: Optional[str] = None
    agent_created: bool = False
    raw: dict = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, data: dict) -> "Artifact":
        return cls(**_known(cls, data), raw=data)


def _artifacts(data: dict) -> List[Artifact]:
    return [Artifact.from_json(a) for a in data.get("artifacts") or []]


@dataclass
class Task:
    task_id: str
    input: Optional[str] = None
    additional_input: dict = field(default_factory=dict)
    status: Optional[str] = None
    created_at: Optional[str] = None
    modified_at: Optional[str] = None
    artifacts: List[Artifact] = field(default_factory=list)
    raw: dict = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, data: dict) -> "Task":
        known = _known(cls, data) | {"artifacts": _artifacts(data)}
        known["additional_input"] = data.get("additional_input") or {}
        return cls(**known, raw=data)


@dataclass
class Step:
    step_id: str
    task_id: str = ""
    name: Optional[str] = None
    # created, running or completed; whether the work succeeded is in `state`.
    status: Optional[str] = None
    input: Optional[str] = None
    additional_input: dict = field(default_factory=dict)
    output: Optional[str] = None
    additional_output: dict = field(default_factory=dict)
    artifacts: List[Artifact] = field(default_factory=list)
    is_last: bool = False
    created_at: Optional[str] = None
    # completed, failed or stopped (agentd's addition).
    state: Optional[str] = None
    raw: dict = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, data: dict) -> "Step":
        known = _known(cls, data) | {"artifacts": _artifacts(data)}
        known["additional_input"] = data.get("additional_input") or {}
        known["additional_output"] = data.get("additional_output") or {}
        return cls(**known, raw=data)


@dataclass
class TaskEvent:
    """One entry of a task's event log (start, step, tool_call, ..., end)."""

    type: str
    task_id: str = ""
    seq: int = 0
    timestamp: float = 0.0
    message: Optional[str] = None
    result: Optional[str] = None
    error: Optional[str] = None
    data: dict = field(default_factory=dict)
    raw: dict = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, data: dict) -> "TaskEvent":
        known = _known(cls, data)
        known["data"] = data.get("data") or {}
        return cls(**known, raw=data)


@dataclass
class Page(Generic[T]):
    """One page of a list: iterate it, or read `items` and `pagination`
    (page, size, total, pages, and the official spec's names too)."""

    items: List[T]
    pagination: Record
    raw: dict = field(default_factory=dict, repr=False, compare=False)

    def __iter__(self) -> Iterator[T]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> T:
        return self.items[index]
