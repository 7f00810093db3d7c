"""Compiled decoding of contract-v1 events: msgspec in front of the pydantic models.

Owns :func:`decode_events` (a batch of raw messages to the same model instances, or
:class:`EventError`, that :func:`~pathsentry.schemas.parse_event` gives for each) and the
msgspec Structs it decodes into. The pydantic models stay the contract: the Structs are
*derived* from their fields when this module is imported (types, ``Literal`` sets, bounds,
lengths, patterns, optional fields and defaults), and a field constraint with no msgspec
counterpart stops the import (:class:`UnmirroredConstraint`).

How one message goes (``parse_event`` is "the reference"):

1. msgspec decodes the bytes into the Structs of the kind its ``kind`` names, validating
   every constraint in C. The Structs refuse unknown fields, so a message with none
   (the usual case) is parsed once;
2. a message with extra fields (which the contract keeps, ``extra="allow"``) is decoded
   again by Structs that skip them at the top level, and its extra values are read by
   ``orjson`` (the reference's own parser) into ``model_extra``; with extra fields deeper
   down, by Structs that skip them everywhere, and orjson reads the whole message into
   dicts whose unknown keys become each nested model's ``model_extra``;
3. ``ts`` is validated by pydantic's own ``AwareDatetime`` validator, once per batch, and
   an address by the reference's own ``PlainValidator`` function, so both are equal to the
   reference by construction (pydantic's time zone objects included);
4. the model instances are built without re-validation, as ``model_construct`` does:
   the same ``__dict__`` (fields in the model's order, defaults filled), ``model_fields_set``
   (given fields and extra keys) and ``model_extra``.

msgspec is stricter than pydantic's lax mode (no ``"1.5"`` for a number, no ``64.0`` for an
integer, no number for ``ts``, integers only within int64), and it gives different error
texts. So every message the compiled path refuses is handed to the reference, which
accepts it or says why not: a refusal carries exactly the reference's reason and detail,
and the compiled path only ever *accepts* what the reference accepts
(``tests/test_fast_decode.py`` checks this on the hostile corpus, the simulator's events
and generated near-valid events). Refused and lax-typed messages therefore cost what they
cost before plus msgspec's attempt; :attr:`FastDecoder.fallbacks` counts them.

Where the time goes: msgspec's part is small; building the pydantic instances (one per
nested model: a traceroute's hops, an http_probe's target) is most of it
(``pathsentry bench --decode-only``).
"""

from __future__ import annotations

import re
import types
import typing
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Annotated, Any, Literal

import annotated_types as at
import msgspec
import orjson
from pydantic import AwareDatetime, BaseModel, PlainSerializer, PlainValidator, TypeAdapter, ValidationError
from pydantic.fields import FieldInfo
from pydantic.functional_serializers import WrapSerializer
from pydantic.json_schema import WithJsonSchema

from pathsentry.schemas.events import (
    MAX_EVENT_BYTES,
    EventError,
    HttpProbe,
    Login,
    RttProbe,
    Traceroute,
    parse_event,
)

__all__ = [
    "EVENT_MODELS",
    "FastDecoder",
    "UnmirroredConstraint",
    "decode_event",
    "decode_events",
    "mirror",
]

AnyEvent = Login | RttProbe | Traceroute | HttpProbe
Payload = bytes | bytearray | memoryview | str

#: The event kinds, each with its ``kind`` value (the tag msgspec dispatches on).
EVENT_MODELS: tuple[type[BaseModel], ...] = (Login, RttProbe, Traceroute, HttpProbe)

#: msgspec bounds integers to int64 (orjson reads larger ones as floats, or up to 2**64 - 1): the
#: compiled path leaves them to it.
_INT_MIN, _INT_MAX = -(2**63), 2**63 - 1

_UNSET = msgspec.UNSET
#: results of a plain validator (an address) kept per builder, cleared when this many
_CACHE = 65_536
_ts_batch = TypeAdapter(list[AwareDatetime])
_ts_one = TypeAdapter(AwareDatetime)


class UnmirroredConstraint(TypeError):
    """A pydantic field or constraint that the compiled decoder cannot reproduce."""


# -- the pydantic field -> msgspec type mapping ----------------------------------------------

#: Metadata that does not change what is accepted (serialisation, JSON Schema) or that JSON
#: decoded by msgspec cannot break (a JSON number is always finite: msgspec refuses ``1e400``).
_NEUTRAL = (PlainSerializer, WrapSerializer, WithJsonSchema)


class _Post:
    """What happens to a decoded value before it goes into the model (None: nothing)."""

    __slots__ = ("func", "many", "model")

    def __init__(self, func: Callable[[Any], Any] | None = None, model: _Mirror | None = None,
                 many: bool = False) -> None:
        self.func, self.model, self.many = func, model, many


_TS = _Post()  # a timestamp: validated per batch by pydantic itself


def _constraints(items: Iterable[Any], where: str) -> tuple[dict[str, Any], Callable[[Any], Any] | None]:
    """msgspec ``Meta`` keywords (and a ``PlainValidator`` function) from pydantic metadata."""
    meta: dict[str, Any] = {}
    plain: Callable[[Any], Any] | None = None
    for m in items:
        if isinstance(m, FieldInfo):
            sub, p = _constraints(m.metadata, where)
            meta.update(sub)
            plain = p or plain
        elif isinstance(m, at.Ge | at.Le | at.Gt | at.Lt):
            name = type(m).__name__.lower()
            meta[name] = getattr(m, name)
        elif isinstance(m, at.MinLen):
            meta["min_length"] = m.min_length
        elif isinstance(m, at.MaxLen):
            meta["max_length"] = m.max_length
        elif isinstance(m, PlainValidator):
            if not callable(m.func) or m.json_schema_input_type is not Any:
                raise UnmirroredConstraint(f"{where}: PlainValidator {m!r}")
            plain = typing.cast(Callable[[Any], Any], m.func)
        elif isinstance(m, _NEUTRAL) or type(m).__name__ == "AllowInfNan":
            continue
        elif type(m).__name__ == "_PydanticGeneralMetadata":
            extra = dict(vars(m))
            pattern = extra.pop("pattern", None)
            extra.pop("allow_inf_nan", None)
            if extra:
                raise UnmirroredConstraint(f"{where}: {extra}")
            if pattern is not None:
                meta["pattern"] = _python_pattern(pattern, where)
        else:
            raise UnmirroredConstraint(f"{where}: no msgspec counterpart for {m!r}")
    return meta, plain


def _python_pattern(pattern: str, where: str) -> str:
    """A pydantic (Rust ``regex``) pattern as Python ``re`` reads it: there ``$`` also
    matches before a final newline, so an end anchor becomes ``\\Z``."""
    if "(?m" in pattern or "\\z" in pattern:
        raise UnmirroredConstraint(f"{where}: pattern {pattern!r}")
    out = re.sub(r"(?<!\\)\$$", r"\\Z", pattern)
    re.compile(out)
    return out


def _annotated(tp: Any, meta: dict[str, Any]) -> Any:
    return Annotated[tp, msgspec.Meta(**meta)] if meta else tp


def _mirror_type(tp: Any, extra: list[Any], where: str, strict: bool) -> tuple[Any, _Post | None]:
    """The msgspec type of a pydantic annotation carrying ``extra`` metadata, and its post step."""
    origin = typing.get_origin(tp)
    if origin is Annotated:
        base, *more = typing.get_args(tp)
        return _mirror_type(base, [*extra, *more], where, strict)
    meta, plain = _constraints(extra, where)
    if plain is not None:
        # a plain validator sees the raw JSON value: the same function runs on it
        if meta:
            raise UnmirroredConstraint(f"{where}: constraints beside a plain validator")
        return Any, _Post(plain)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        rest = [a for a in args if a is not type(None)]
        if len(rest) != 1 or meta:
            raise UnmirroredConstraint(f"{where}: union {tp!r}")
        inner, post = _mirror_type(rest[0], [], where, strict)
        return (inner | None) if len(rest) < len(args) else inner, post
    if origin is list:
        (item,) = typing.get_args(tp)
        inner, post = _mirror_type(item, [], where + "[]", strict)
        if post is not None and post.model is None:
            raise UnmirroredConstraint(f"{where}: a list of {item!r} needs a per-item step")
        many = _Post(model=post.model, many=True) if post is not None else None
        return _annotated(list[inner], meta), many  # type: ignore[valid-type]
    if origin is Literal:
        if meta or not all(isinstance(a, str) for a in typing.get_args(tp)):
            raise UnmirroredConstraint(f"{where}: {tp!r}")
        return tp, None
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        if meta:
            raise UnmirroredConstraint(f"{where}: constraints on a model")
        sub = mirror(tp, strict)
        return sub.struct, _Post(model=sub)
    if tp is AwareDatetime:
        if meta:
            raise UnmirroredConstraint(f"{where}: constraints on a timestamp")
        return str, _TS
    if tp is bool:
        if meta:
            raise UnmirroredConstraint(f"{where}: constraints on a bool")
        return bool, None
    if tp is int:
        meta.setdefault("ge", _INT_MIN)
        meta.setdefault("le", _INT_MAX)
        return _annotated(int, meta), None
    if tp is float:
        if meta.keys() - {"ge", "le", "gt", "lt"}:
            raise UnmirroredConstraint(f"{where}: {meta}")
        return _annotated(float, meta), None
    if tp is str:
        if meta.keys() - {"min_length", "max_length", "pattern"}:
            raise UnmirroredConstraint(f"{where}: {meta}")
        return _annotated(str, meta), None
    raise UnmirroredConstraint(f"{where}: type {tp!r}")


# -- one mirrored model -------------------------------------------------------------------------

class _Mirror:
    """A pydantic model's Struct and the compiled function that builds the model from it."""

    def __init__(self, model: type[BaseModel], strict: bool, nested: bool) -> None:
        self.model = model
        self.kind: str | None = None
        fields: list[tuple[str, Any, Any]] = []
        self.posts: dict[str, _Post] = {}
        self.defaults: dict[str, Any] = {}
        self.required: list[str] = []
        #: fields that may be null (a post step runs only on a value)
        self.nullable: set[str] = set()
        for name, f in model.model_fields.items():
            where = f"{model.__name__}.{name}"
            if f.alias or f.validation_alias:
                raise UnmirroredConstraint(f"{where}: aliases")
            if name == "kind" and model in EVENT_MODELS:
                (self.kind,) = typing.get_args(f.annotation)
                continue
            tp, post = _mirror_type(f.annotation, list(f.metadata), where, nested)
            if post is _TS and (name != "ts" or model not in EVENT_MODELS or not f.is_required()):
                raise UnmirroredConstraint(f"{where}: a timestamp other than an event's ts")
            if post is not None:
                self.posts[name] = post
            if type(None) in typing.get_args(f.annotation):
                self.nullable.add(name)
            if f.is_required():
                fields.append((name, tp, msgspec.NODEFAULT))
                self.required.append(name)
            else:
                fields.append((name, tp | msgspec.UnsetType, _UNSET))
                self.defaults[name] = f
        self.names = tuple(model.model_fields)
        self.struct: type[msgspec.Struct] = msgspec.defstruct(
            f"{model.__name__}Struct",
            [(n, t) if d is msgspec.NODEFAULT else (n, t, d) for n, t, d in fields],
            kw_only=True, forbid_unknown_fields=strict, tag_field="kind" if self.kind else None,
            tag=self.kind, module=__name__,
        )
        self.build: Callable[[Any, dict[str, Any] | None, datetime | None], BaseModel] = self._compile()

    def _compile(self) -> Callable[[Any, dict[str, Any] | None, datetime | None], BaseModel]:
        """Generate the builder: straight-line code per field (a loop over the fields with
        per-field branches costs several times more per event)."""
        slots = {n: vars(BaseModel)[n].__set__ for n in (
            "__dict__", "__pydantic_fields_set__", "__pydantic_extra__", "__pydantic_private__")}
        env: dict[str, Any] = {
            "UNSET": _UNSET, "MODEL": self.model, "new": self.model.__new__, "FIELDS": frozenset(self.names),
            "set_dict": slots["__dict__"], "set_fs": slots["__pydantic_fields_set__"],
            "set_extra": slots["__pydantic_extra__"], "set_private": slots["__pydantic_private__"],
            "KIND": self.kind, "str": str, "len": len, "zip": zip, "type": type,
        }
        given = [*self.required, *(["kind"] if self.kind else [])]
        first = "    fs = {" + ", ".join(map(repr, given)) + "}" if given else "    fs = set()"
        body = ["def build(s, src, ts):", first]
        values: list[str] = []
        for i, name in enumerate(self.names):
            v = f"v{i}"
            values.append(f"{name!r}: {v}")
            if name == "kind" and self.kind is not None:
                body.append(f"    {v} = KIND")
                continue
            post = self.posts.get(name)
            if post is _TS:
                body.append(f"    {v} = ts")
                continue
            body.append(f"    {v} = s.{name}")
            ind = "    "
            if name in self.defaults:
                f = self.defaults[name]
                env[f"D{i}"] = f.default_factory if f.default_factory is not None else f.default
                call = "()" if f.default_factory is not None else ""
                body += [f"    if {v} is UNSET:", f"        {v} = D{i}{call}", "    else:",
                         f"        fs.add({name!r})"]
                ind = "        "
            if post is None:
                continue
            if name in self.nullable:
                body.append(f"{ind}if {v} is not None:")
                ind += "    "
            if post.func is not None:
                # a plain validator is a pure function of the text: its results are kept
                env[f"P{i}"], env[f"C{i}"] = post.func, {}
                body += [f"{ind}x = C{i}.get({v}) if type({v}) is str else None",
                         f"{ind}if x is None:",
                         f"{ind}    x = P{i}({v})",
                         f"{ind}    if type({v}) is str:",
                         f"{ind}        if len(C{i}) >= {_CACHE}:",
                         f"{ind}            C{i}.clear()",
                         f"{ind}        C{i}[{v}] = x",
                         f"{ind}{v} = x"]
            elif post.model is not None:
                env[f"B{i}"] = post.model.build
                if post.many:
                    body += [f"{ind}sub = src.get({name!r}) if src is not None else None",
                             f"{ind}if sub is None:",
                             f"{ind}    {v} = [B{i}(x, None, None) for x in {v}]",
                             f"{ind}else:",
                             f"{ind}    {v} = [B{i}(x, y, None) for x, y in zip({v}, sub)]"]
                else:
                    body.append(f"{ind}{v} = B{i}({v}, src.get({name!r}) if src is not None else None, None)")
        body += [
            "    if src is None:",
            "        extra = {}",
            "    else:",
            "        extra = {k: x for k, x in src.items() if k not in FIELDS}",
            "        fs.update(extra)",
            "    m = new(MODEL)",
            "    set_dict(m, {" + ", ".join(values) + "})",
            "    set_fs(m, fs)",
            "    set_extra(m, extra)",
            "    set_private(m, None)",
            "    return m",
        ]
        exec(compile("\n".join(body), f"<build {self.model.__name__}>", "exec"), env)
        return typing.cast(Callable[[Any, dict[str, Any] | None, datetime | None], BaseModel], env["build"])


_MIRRORS: dict[tuple[type[BaseModel], bool, bool], _Mirror] = {}


def mirror(model: type[BaseModel], strict: bool = True, nested: bool | None = None) -> _Mirror:
    """The Struct mirror of ``model``: unknown fields refused (``strict``) or skipped, and
    the same (``nested``, by default as ``strict``) in the models it holds."""
    key = (model, strict, strict if nested is None else nested)
    got = _MIRRORS.get(key)
    if got is None:
        got = _MIRRORS[key] = _Mirror(*key)
    return got


# -- decoding ---------------------------------------------------------------------------------

class FastDecoder:
    """Decodes batches of raw messages; counts what the compiled path left to the reference."""

    def __init__(self) -> None:
        # unknown fields: refused anywhere / skipped at the top only / skipped anywhere
        modes = [[mirror(x, strict, nested) for x in EVENT_MODELS]
                 for strict, nested in ((True, True), (False, True), (False, False))]
        self._dec, self._dec_top, self._dec_loose = (
            msgspec.json.Decoder(typing.Union[tuple(m.struct for m in ms)])  # noqa: UP007
            for ms in modes)
        self._fields = {m.struct: frozenset(m.names) for m in modes[1]}
        self._keys = msgspec.json.Decoder(dict[str, msgspec.Raw])
        self._by_struct = {m.struct: m.build for ms in modes for m in ms}
        #: messages the compiled path handed to the reference (refused, lax-typed or oversized)
        self.fallbacks = 0
        #: messages with extra fields (decoded twice by the compiled path)
        self.with_extras = 0

    def structs(self, payloads: Sequence[Payload]) -> list[msgspec.Struct | None]:
        """msgspec's part alone: each payload decoded and validated into its Struct (extra
        fields skipped, ``ts`` and addresses left as text), None where msgspec refuses it.
        What building the model instances adds is the difference to :meth:`decode`."""
        out: list[msgspec.Struct | None] = []
        for raw in payloads:
            try:
                out.append(self._dec_loose.decode(raw))
            except (msgspec.DecodeError, RecursionError):
                out.append(None)
        return out

    def _struct(self, raw: Payload) -> tuple[Any, dict[str, Any] | None]:
        """The message's Struct, and when it has extra fields a dict that holds them: its
        extra top-level keys (values read by orjson) or, with extras deeper down, the
        whole message as orjson reads it."""
        try:
            return self._dec.decode(raw), None
        except msgspec.ValidationError as e:
            if "unknown field" not in str(e):
                raise
        self.with_extras += 1
        try:
            s = self._dec_top.decode(raw)
        except msgspec.ValidationError as e:
            if "unknown field" not in str(e):
                raise
            return self._dec_loose.decode(raw), orjson.loads(raw)
        known = self._fields[type(s)]
        keys = self._keys.decode(raw)
        # each value one level down, as in the message: orjson's depth limit counts the same
        return s, {k: orjson.loads(b"".join((b"[", memoryview(v), b"]")))[0]
                   for k, v in keys.items() if k not in known}

    def decode(self, payloads: Sequence[Payload]) -> list[AnyEvent | EventError]:
        """Each payload's event (the model instance ``parse_event`` returns) or its refusal."""
        out: list[Any] = [None] * len(payloads)
        got: list[tuple[int, Any, dict[str, Any] | None]] = []
        for i, raw in enumerate(payloads):
            if isinstance(raw, str) or len(raw) > MAX_EVENT_BYTES:
                continue
            try:
                s, src = self._struct(raw)
            except (msgspec.DecodeError, orjson.JSONDecodeError, RecursionError):
                continue
            got.append((i, s, src))
        stamps = [s.ts for _, s, _ in got]
        try:
            times: list[Any] = _ts_batch.validate_python(stamps)
        except ValidationError:
            times = []
            for t in stamps:
                try:
                    times.append(_ts_one.validate_python(t))
                except ValidationError:
                    times.append(None)
        by_struct = self._by_struct
        for (i, s, src), ts in zip(got, times, strict=True):
            if ts is None:
                continue
            try:
                out[i] = by_struct[type(s)](s, src, ts)
            except ValueError:
                continue  # a plain validator (an address) refused: the reference says why
        for i, ev in enumerate(out):
            if ev is None:
                self.fallbacks += 1
                raw = payloads[i]
                try:
                    out[i] = parse_event(bytes(raw) if isinstance(raw, bytearray | memoryview) else raw)
                except EventError as err:
                    out[i] = err
        return out


_default = FastDecoder()


def decode_events(payloads: Sequence[Payload]) -> list[AnyEvent | EventError]:
    """Decode and validate a batch of raw messages: for each, the event ``parse_event``
    would return, or the :class:`EventError` it would raise (returned, not raised).

    >>> ok, bad = decode_events([
    ...     b'{"kind": "rtt_probe", "event_id": "p1", "ts": "2026-01-01T00:00:00Z",'
    ...     b' "src_ip": "10.0.0.1", "vantage_id": "kr-sel-1", "method": "icmp",'
    ...     b' "rtt_ms": [31.5, 30.9], "isp": "x"}',
    ...     b'{"kind": "rtt_probe", "event_id": "p2"}'])
    >>> type(ok).__name__, ok.rtt_ms, str(ok.src_ip), ok.model_extra
    ('RttProbe', [31.5, 30.9], '10.0.0.1', {'isp': 'x'})
    >>> bad.reason, bad.detail.split(";")[0]
    ('invalid', 'rtt_probe.ts: Field required')
    """
    return _default.decode(payloads)


def decode_event(raw: Payload) -> AnyEvent:
    """One message, as :func:`decode_events` decodes it; raises :class:`EventError`."""
    (got,) = _default.decode([raw])
    if isinstance(got, EventError):
        raise got
    return got
