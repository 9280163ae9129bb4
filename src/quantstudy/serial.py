"""Typed records to JSON and back: one codec for every record quantstudy stores or writes.

Records are frozen dataclasses (hashable, free of pydantic state, cheap to build); pydantic's
`TypeAdapter` turns them into JSON-able values and validates JSON back into them, nested
records, tuples, unions and all. A file that does not fit the record is one line naming the
first field that is wrong, never a traceback.
"""

from __future__ import annotations

import functools

from quantstudy.errors import QuantstudyError


@functools.lru_cache(maxsize=None)
def _adapter(cls):
    from pydantic import TypeAdapter

    return TypeAdapter(cls)


def to_json(record) -> dict:
    """A record as JSON-able values (tuples become lists, dataclasses dicts)."""
    return _adapter(type(record)).dump_python(record, mode="json")


def from_json(cls, data, what: str = "record"):
    """`cls` validated from JSON-able `data`; a mismatch is a one-line QuantstudyError."""
    from pydantic import ValidationError

    if isinstance(data, cls):
        return data
    try:
        return _adapter(cls).validate_python(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        raise QuantstudyError(f"{what} does not fit {cls.__name__}: {where}: {err['msg']} "
                              f"({exc.error_count()} problem(s))") from None
