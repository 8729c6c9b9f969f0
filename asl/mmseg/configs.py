"""Finding configs by name, for ``ASL_retrain.sh`` and ``ASL_search.sh``.

``python -m asl.mmseg.configs find NAME DIR`` prints the path of the config ``NAME`` under
``DIR`` (searched recursively; ``.py`` may be omitted; an existing path is returned
as is) or exits with status 2 and a message listing near matches.
"""
from __future__ import annotations

import difflib
import os
import sys
from typing import List

__all__ = ['ConfigNotFoundError', 'find_config', 'list_configs']


class ConfigNotFoundError(FileNotFoundError):
    """No config of that name (or several with the same name)."""


def list_configs(root: str) -> List[str]:
    """All ``.py`` configs under ``root`` (not ``_base_``), as paths relative to it."""
    out = []
    for d, dirs, files in os.walk(root):
        dirs[:] = sorted(x for x in dirs if not x.startswith(('_', '.')))
        for f in sorted(files):
            if f.endswith('.py') and not f.startswith('_'):
                out.append(os.path.relpath(os.path.join(d, f), root))
    return out


def find_config(name: str, root: str) -> str:
    """Resolve a config name or path.

    Args:
        name (str): a path to an existing file, or a file name (with or without
            ``.py``), or a path relative to ``root``.
        root (str): directory searched recursively.

    Returns:
        str: the config path.

    Raises:
        ConfigNotFoundError: nothing matches (the message lists near matches), or the
            name is ambiguous (the message lists the candidates).
    """
    if os.path.isfile(name):
        return name
    candidates = [name] if name.endswith('.py') else [name, name + '.py']
    for c in candidates:
        p = os.path.join(root, c)
        if os.path.isfile(p):
            return p
    configs = list_configs(root) if os.path.isdir(root) else []
    by_base = [c for c in configs if os.path.basename(c) in
               {os.path.basename(x) for x in candidates}]
    if len(by_base) == 1:
        return os.path.join(root, by_base[0])
    if len(by_base) > 1:
        raise ConfigNotFoundError(
            f'config name {name!r} is ambiguous under {root}/; use one of: '
            + ', '.join(os.path.join(root, c) for c in by_base))
    names = [os.path.basename(c) for c in configs]
    near = _near_matches(os.path.basename(name).replace('.py', ''), names)
    hint = (' Did you mean: ' + ', '.join(near) + '?') if near else ''
    raise ConfigNotFoundError(f'config {name!r} not found (looked for a file and under '
                              f'{root}/).{hint} `ls {root}` lists the configs.')


def _near_matches(query: str, names: List[str], n: int = 5) -> List[str]:
    """Names sharing the longest run of characters with ``query`` (long MMSeg-style
    names make plain edit ratios prefer short, unrelated names)."""
    scored = []
    for name in names:
        m = difflib.SequenceMatcher(None, query.lower(), name.lower())
        longest = m.find_longest_match(0, len(query), 0, len(name)).size
        scored.append((longest / max(len(query), 1), m.ratio(), name))
    scored.sort(key=lambda t: (-t[0], -t[1]))
    return [name for score, _, name in scored[:n] if score >= 0.4]


def _main(argv: List[str]) -> int:
    if len(argv) != 3 or argv[0] != 'find':
        print('usage: python -m asl.mmseg.configs find NAME DIR', file=sys.stderr)
        return 2
    try:
        print(find_config(argv[1], argv[2]))
    except ConfigNotFoundError as e:
        print(f'error: {e.args[0]}', file=sys.stderr)
        return 2
    return 0


if __name__ == '__main__':
    sys.exit(_main(sys.argv[1:]))
