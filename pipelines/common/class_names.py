"""Class lists: the checks every list of class names passes, and the one reader of classes.txt files."""

from __future__ import annotations

import os

from maskdex.operators.common.labels import IGNORE_INDEX, MAX_CLASSES

# A class whose name starts with this is known by its examples only (its name is never used as text).
UNNAMED_PREFIX = "@"


def check_class_names(names, where: str = "class list") -> list[str]:
    """The names as a list; a ValueError for blank, repeated or surrounded-by-space names, or too many."""
    if isinstance(names, str):
        raise ValueError(f"{where}: expected a list of class names, got the string {names!r}")
    names = list(names)
    if not names:
        raise ValueError(f"{where} is empty")
    if len(names) > MAX_CLASSES:
        raise ValueError(f"{where} has {len(names)} classes; at most {MAX_CLASSES} fit a label map "
                         f"({IGNORE_INDEX} means ignore)")
    for index, name in enumerate(names):
        if not isinstance(name, str) or not name.strip() or name != name.strip() or name == UNNAMED_PREFIX:
            raise ValueError(f"{where}: class {index} has a bad name {name!r} (names are non-blank, without "
                             f"surrounding spaces; '{UNNAMED_PREFIX}' needs a name after it)")
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(f"{where} names {', '.join(map(repr, repeated))} more than once")
    return names


def read_classes_file(path: str | os.PathLike) -> list[str]:
    """One class per line, line n (from 0) being label n. Trailing blank lines are ignored, inner ones refused
    (they would silently shift every later label)."""
    with open(path, encoding="utf-8") as handle:
        lines = [line.rstrip("\r\n") for line in handle]
    while lines and not lines[-1].strip():
        lines.pop()
    return check_class_names(lines, where=f"classes file {path}")
