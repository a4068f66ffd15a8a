"""The structure of a ``results.json`` as the report reads it, checked once when the file is loaded.

``results.json`` may be edited by hand or damaged; the report then must not end in an internal error
half-way through its tables and figures. :func:`check_results` walks the parts the report reads and
raises :class:`MalformedResults` naming the JSON path of the first field of the wrong kind (e.g.
``combinations[0]: expected an object, got the number 1``).

Only what the report relies on is checked, the way the report reads it: containers must be of the
right kind (objects, lists), names must be strings (they become table cells, dictionary keys and, for
the geometry's adapter names, parts of file names), seeds integers. Numbers the report shows (perplexities,
cosines, losses, timings) are not checked: a missing, null, non-finite or non-numeric value is shown as
"—" (see :func:`lorasum.report.summary.finite`). Keys the report does not read are not checked either.
"""

from __future__ import annotations

import json
import re
from typing import Any, Callable

from lorasum.storage import describe_json_value

__all__ = ["MalformedResults", "check_results"]

#: an adapter name of the geometry section: part of a figure's file name (layer_cosines_<a>+<b>.png)
_FILE_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,99}")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class MalformedResults(ValueError):
    """A field of a results dict is not what the report reads.

    Attributes:
        where: the field's JSON path, e.g. ``data.math`` or ``geometry[0].pairs[1].cosines``.
        what: what is wrong with it.
    """

    def __init__(self, where: str, what: str):
        super().__init__(f"{where or 'the top level'}: {what}")
        self.where, self.what = where, what


def _at(where: str, key: str | int) -> str:
    """The JSON path of ``key`` inside ``where``: ``a.b``, ``a[0]`` or ``a["odd key"]``."""
    if isinstance(key, int):
        return f"{where}[{key}]"
    if _IDENT.fullmatch(key):
        return f"{where}.{key}" if where else key
    return f"{where}[{json.dumps(key)}]"




def _fail(v: Any, where: str, expected: str):
    raise MalformedResults(where, f"expected {expected}, got {describe_json_value(v)}")


def _obj(v: Any, where: str) -> dict:
    if not isinstance(v, dict):
        _fail(v, where, "an object")
    return v


def _list(v: Any, where: str) -> list:
    if not isinstance(v, list):
        _fail(v, where, "a list")
    return v


def _text(v: Any, where: str) -> str:
    if not isinstance(v, str):
        _fail(v, where, "a string")
    return v


def _int(v: Any, where: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        _fail(v, where, "an integer")
    return v


def _texts(v: Any, where: str) -> list:
    for i, x in enumerate(_list(v, where)):
        _text(x, _at(where, i))
    return v


def _ints(v: Any, where: str) -> list:
    for i, x in enumerate(_list(v, where)):
        _int(x, _at(where, i))
    return v


def _file_part(v: Any, where: str) -> str:
    _text(v, where)
    if not _FILE_PART.fullmatch(v) or ".." in v:
        raise MalformedResults(where, f"adapter name {json.dumps(v)[:60]} is not a name "
                                      "lorasum gives (1-100 characters from A-Z a-z 0-9 _ . + -, not starting "
                                      "with one of . _ + - and without '..')")
    return v


def _get(d: dict, where: str, key: str, check: Callable[[Any, str], Any], *, null: bool = False,
         required: bool = False) -> Any:
    """``d[key]`` checked by ``check``; None where the key is absent (an error if ``required``) or, with
    ``null``, null (the report reads the field with ``.get(key) or default``)."""
    if key not in d:
        if required:
            raise MalformedResults(_at(where, key), "missing")
        return None
    v = d[key]
    if v is None and null:
        return None
    return check(v, _at(where, key))


def _each(items: list, where: str):
    """(index, object, its path) of a list that must hold objects."""
    for i, item in enumerate(items or ()):
        w = _at(where, i)
        yield i, _obj(item, w), w


def _no_surrogates(results: Any) -> None:
    """Every string and key must be writable as UTF-8 (JSON's ``\\ud800`` escapes give lone surrogates)."""
    stack: list[tuple[Any, str]] = [(results, "")]
    while stack:
        v, where = stack.pop()
        if isinstance(v, str):
            try:
                v.encode("utf-8")
            except UnicodeEncodeError:
                raise MalformedResults(where, "the string holds an unpaired UTF-16 surrogate (such as \\ud800), "
                                              "which is not text") from None
        elif isinstance(v, dict):
            for k, x in v.items():
                stack.append((k, where))
                stack.append((x, _at(where, k) if not _has_surrogate(k) else where))
        elif isinstance(v, list):
            stack.extend((x, _at(where, i)) for i, x in enumerate(v))


def _has_surrogate(s: str) -> bool:
    try:
        s.encode("utf-8")
        return False
    except UnicodeEncodeError:
        return True


def check_results(results: dict) -> None:
    """Check the parts of a results dict (schema_version 1 or 2) that the report reads.

    ``results`` is a dict with ``config`` (an object), ``evaluations`` and ``combinations`` (lists), as
    :func:`lorasum.report.load_results` has made sure.

    Raises:
        MalformedResults: the first field that the report could not read; ``where`` is its JSON path.
    """
    _no_surrogates(results)
    cfg = results["config"]
    _get(cfg, "config", "domains", _texts, null=True)
    _get(cfg, "config", "seeds", _ints, null=True)
    lora = _get(cfg, "config", "lora", _obj, null=True)
    if lora:
        _get(lora, "config.lora", "target_modules", _texts, null=True)
    _get(cfg, "config", "methods", _texts, null=True)
    params = _get(cfg, "config", "method_params", _obj, null=True)
    for name in params or {}:
        _get(params, "config.method_params", name, _obj, null=True)
    _get(cfg, "config", "train", _obj, null=True)

    model = _get(results, "", "model", _obj, null=True)
    if model:
        _get(model, "model", "target_modules", _texts, null=True)

    data = _get(results, "", "data", _obj, null=True)
    for dom, entry in (data or {}).items():
        w = _at("data", dom)
        _obj(entry, w)
        for _, source, ws in _each(_get(entry, w, "sources", _list), _at(w, "sources")):
            _get(source, ws, "path", _text)

    for _, a, w in _each(_get(results, "", "adapters", _list), "adapters"):
        _get(a, w, "name", _text)
        _get(a, w, "kind", _text)
        if a.get("train"):  # falsy: an adapter that was not trained
            train = _get(a, w, "train", _obj)
            _get(train, _at(w, "train"), "parallel_adapters", _int)

    seen: dict[tuple, str] = {}
    for _, e, w in _each(results["evaluations"], "evaluations"):
        _get(e, w, "model", _text, required=True)
        _get(e, w, "kind", _text)
        _get(e, w, "method", _text, null=True)
        _get(e, w, "domains", _texts, null=True)
        _get(e, w, "eval_domain", _text)
        _get(e, w, "seed", _int, null=True)
        # a row listed twice would be averaged as two seeds (a mean ± spread out of one number)
        key = (e["model"], e.get("seed"), e.get("eval_domain"))
        if key in seen:
            raise MalformedResults(w, f"evaluation of {e['model']} (seed {e.get('seed')}) on {e.get('eval_domain')} "
                                      f"is listed twice (also at {seen[key]})")
        seen[key] = w

    for _, c, w in _each(results["combinations"], "combinations"):
        _get(c, w, "domains", _texts)
        _get(c, w, "seed", _int, null=True)
        for key in ("module_cosines", "ppl_sum", "ppl_merged", "ppl_change_pct"):
            _get(c, w, key, _obj, null=True)

    for _, c, w in _each(_get(results, "", "compositions", _list, null=True), "compositions"):
        _get(c, w, "domains", _texts)
        _get(c, w, "seed", _int, null=True)
        _get(c, w, "kind", _text)
        for key in ("name", "method", "single"):
            _get(c, w, key, _text, null=True)
        for key in ("ppl", "ppl_merged", "ppl_change_pct"):
            _get(c, w, key, _obj, null=True)

    _check_geometry(_get(results, "", "geometry", _list, null=True) or [])


def _check_geometry(geometry: list) -> None:
    """Per seed: names, shapes (module → list) and pairs (a, b, cosines per module, RMS per layer index);
    where the shapes have layer indices, every pair needs a cosine of a module with one (the per-pair
    heatmap has nothing to draw otherwise)."""
    from lorasum.geometry.layers import layer_index  # lorasum.geometry loads torch: only where needed

    layered, pairs = False, {}
    for _, g, w in _each(geometry, "geometry"):
        _get(g, w, "names", _texts, null=True)
        shapes = _get(g, w, "shapes", _obj, null=True) or {}
        for module in shapes:
            _get(shapes, _at(w, "shapes"), module, _list)
        listed = _get(g, w, "pairs", _list, null=True)
        if not listed:  # the report skips a seed without pairs
            continue
        layered = layered or any(layer_index(m) is not None for m in shapes)
        for _, p, wp in _each(listed, _at(w, "pairs")):
            a = _get(p, wp, "a", _file_part, required=True)
            b = _get(p, wp, "b", _file_part, required=True)
            cosines = _get(p, wp, "cosines", _obj, null=True) or {}
            for key in _get(p, wp, "layer_rms", _obj, null=True) or {}:
                try:
                    int(key)
                except ValueError:
                    raise MalformedResults(_at(_at(wp, "layer_rms"), key), "key is not a layer index") from None
            where, has = pairs.get((a, b), (_at(wp, "cosines"), False))
            pairs[(a, b)] = (where, has or any(layer_index(m) is not None for m in cosines))
    if layered:
        for where, has in pairs.values():
            if not has:
                raise MalformedResults(where, "no cosine of a module path with a layer index (such as "
                                              "model.layers.0.self_attn.q_proj), though the shapes have layers")
