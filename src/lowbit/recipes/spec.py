"""What to do to which module: QuantSpec and Recipe dataclasses, with a ``kind`` string,
a ``version`` and ``to_dict``/``from_dict`` so they save as JSON beside the weights."""

from __future__ import annotations

import fnmatch
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

from lowbit.errors import InvalidInputError, InvalidSpecError, LowbitError, UnsupportedFormatError
from lowbit.formats.granularity import Granularity, PerAxis, PerGroup, PerTensor
from lowbit.formats.qtypes import QTYPES, FloatType
from lowbit.formats.weight_format import WeightFormat
from lowbit.kernels.registry import check_per_token
from lowbit.tensors.base import granularity_from_dict, granularity_to_dict

RECIPE_VERSION = 1
ActivationMode = Literal["weight_only", "dynamic", "static"]
RecipeKind = Literal["ptq", "cast", "qat"]


@dataclass(frozen=True)
class WeightSpec:
    """How weights are stored.

    Attributes:
        format: a format name of lowbit.formats.qtypes: "int8", "int4", "nf4", "ternary",
            "binary", "fp8_e4m3", ...
        granularity: PerAxis(0) (per output channel) or PerGroup(size) along the input dim.
        symmetric: integer formats: symmetric (no zero point) or asymmetric.
        form: asymmetric integer formats: "offset" or "zero_point".
        scale_dtype: "float32" or "float16" for stored scales.
    """

    format: str = "int8"
    granularity: Granularity = PerAxis(0)
    symmetric: bool = True
    form: str = "offset"
    scale_dtype: str = "float32"

    def weight_format(self) -> WeightFormat:
        """The L0 WeightFormat this spec names (what RTN, GPTQ and size accounting take)."""
        return WeightFormat.of(
            self.format,
            self.granularity,
            symmetric=self.symmetric,
            form=self.form,  # type: ignore[arg-type]
            scale_dtype=self.scale_dtype,
        )

    def describe(self) -> str:
        g = self.granularity
        where = (
            "per-tensor"
            if isinstance(g, PerTensor)
            else "per-channel"
            if isinstance(g, PerAxis)
            else f"group {g.size}"
        )
        sym = "" if self.symmetric or not self.format.startswith("int") else " asym"
        return f"{self.format} {where}{sym}"


@dataclass(frozen=True)
class ActivationSpec:
    """How activations are treated: kept in float ("weight_only", computed in bf16 where a
    kernel needs it), quantized per batch at run time ("dynamic"), or quantized with ranges
    from calibration ("static", int8 per tensor, chosen by ``observer``)."""

    mode: ActivationMode = "weight_only"
    observer: str = "minmax"
    observer_options: tuple[tuple[str, Any], ...] = ()
    per_token: bool = False  # dynamic: a scale per token (row) instead of per batch
    token_zero_point: bool = False  # per_token: a zero point per token too (asymmetric)

    def __post_init__(self) -> None:
        check_per_token(self.mode, self.per_token, self.token_zero_point)


@dataclass(frozen=True)
class QuantSpec:
    """One module's treatment: weight storage, activation handling, and the algorithm that
    chooses the codes.

    ``algorithm``: "rtn" (round to nearest), "gptq" (error-compensating rounding from the
    input Hessian), "awq" (activation-aware channel scales and clipping, then rounding) or
    "smoothquant" (activation outliers moved into the weights, then W8A8) or
    "input-transform" (dynamic int8: per input, a shrinking SmoothQuant multiply or float
    outlier channels, by measured error). All but "rtn" need calibration data.
    ``algorithm_options`` are its keyword options, e.g. (("damp", 0.01), ("act_order", True)),
    (("alpha", 0.5),) or (("alphas", (0.7, 0.8)), ("outliers", 8)).
    """

    weight: WeightSpec = field(default_factory=WeightSpec)
    activation: ActivationSpec = field(default_factory=ActivationSpec)
    algorithm: str = "rtn"
    algorithm_options: tuple[tuple[str, Any], ...] = ()

    def describe(self) -> str:
        a = self.activation
        act = {"weight_only": "float activations", "dynamic": "int8 dynamic activations"}.get(
            a.mode, f"int8 static activations ({a.observer})"
        )
        algo = "" if self.algorithm == "rtn" else f", {self.algorithm}"
        return f"{self.weight.describe()}, {act}{algo}"


@dataclass(frozen=True)
class Rule:
    """Modules whose qualified name matches ``pattern`` (fnmatch, e.g. "*.fc*") get ``spec``;
    ``spec=None`` skips them (they stay float)."""

    pattern: str
    spec: QuantSpec | None = None


def embedding_spec(embeddings: str) -> WeightSpec:
    """The WeightSpec of a table format: "int8" (a scale per row) or "int4-g32" (a scale
    per 32 values of a row, stored float16 as the grouped presets store them). Raises
    InvalidSpecError for a name that cannot store an embedding table."""
    format, _, group = embeddings.partition("-g")
    qtype = QTYPES.get(format)
    if qtype is None or (isinstance(qtype, FloatType) and not qtype.scaled):
        usable = [n for n, q in QTYPES.items() if not isinstance(q, FloatType) or q.scaled]
        raise InvalidSpecError(
            f"{embeddings!r} is not an embedding format; use one of {', '.join(usable)} (a "
            "scale per row), FORMAT-gSIZE (int4-g32: a scale per SIZE values of a row), or "
            "'float' to keep embedding tables float"
        )
    if not group:
        return WeightSpec(format, PerAxis(0))
    if not group.isdigit() or int(group) < 1:
        raise InvalidSpecError(f"{embeddings!r}: the group after -g must be a positive integer")
    return WeightSpec(format, PerGroup(int(group)), scale_dtype="float16")


def check_embedding_format(format: str) -> None:
    """Raise InvalidSpecError unless ``format`` can store an embedding table."""
    embedding_spec(format)


@dataclass(frozen=True)
class Recipe:
    """A named way to quantize a model.

    kind "ptq": post-training quantization of Linear and Conv2d modules with ``spec`` unless
    a rule says otherwise; "cast": the whole model cast to ``cast_dtype``; "qat": fake
    quantization for training first (``lowbit.prepare_qat``), then ``lowbit.convert``.
    """

    name: str
    kind: RecipeKind = "ptq"
    spec: QuantSpec | None = None
    cast_dtype: str | None = None
    rules: tuple[Rule, ...] = ()
    embeddings: str | None = None
    version: int = RECIPE_VERSION

    @property
    def needs_calibration(self) -> bool:
        """Whether quantizing with it needs calibration data: a calibrated algorithm or
        static activations in its spec or any rule's."""
        specs = [self.spec, *(rule.spec for rule in self.rules)]
        return any(
            s is not None and (s.algorithm != "rtn" or s.activation.mode == "static") for s in specs
        )

    def spec_for(self, module_name: str) -> QuantSpec | None:
        """The spec for a module: the first matching rule wins, else the recipe's spec."""
        for rule in self.rules:
            if fnmatch.fnmatchcase(module_name, rule.pattern):
                return rule.spec
        return self.spec

    def with_rules(self, *rules: Rule) -> Recipe:
        """A copy with extra rules (checked before the existing ones)."""
        return replace(self, rules=(*rules, *self.rules))

    def skip(self, *patterns: str) -> Recipe:
        """A copy that leaves modules matching any pattern in float."""
        return self.with_rules(*(Rule(p, None) for p in patterns))

    def with_embeddings(self, format: str | None = "int8") -> Recipe:
        """A copy that quantizes nn.Embedding tables per row in ``format`` ("int8", "int4",
        ...) or per group of a row ("int4-g32"), or keeps them float with None or "float" (an
        LM head tied to a table follows it). Raises InvalidSpecError for a format that cannot
        store an embedding table."""
        if format == "float":
            format = None
        if format is not None:
            check_embedding_format(format)
        return replace(self, embeddings=format)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (granularities as dicts)."""

        def spec_dict(spec: QuantSpec | None) -> dict[str, Any] | None:
            if spec is None:
                return None
            w = asdict(spec.weight)
            w["granularity"] = granularity_to_dict(spec.weight.granularity)
            a = asdict(spec.activation)
            a["observer_options"] = [list(kv) for kv in spec.activation.observer_options]
            options = [list(kv) for kv in spec.algorithm_options]
            return {
                "weight": w,
                "activation": a,
                "algorithm": spec.algorithm,
                "algorithm_options": options,
            }

        return {
            "kind": self.kind,
            "version": self.version,
            "name": self.name,
            "spec": spec_dict(self.spec),
            "cast_dtype": self.cast_dtype,
            "rules": [{"pattern": r.pattern, "spec": spec_dict(r.spec)} for r in self.rules],
            "embeddings": self.embeddings,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Recipe:
        """Inverse of ``to_dict``; unknown versions or kinds raise a clear error, and so does
        a damaged document (missing or mistyped fields: InvalidInputError)."""
        if not isinstance(d, dict):
            raise InvalidInputError(
                f"a recipe is a JSON object, not {type(d).__name__}; re-create it with lowbit"
            )
        version = d.get("version")
        if version != RECIPE_VERSION:
            raise UnsupportedFormatError(
                f"recipe version {version!r} is not supported by this lowbit (it reads "
                f"version {RECIPE_VERSION}); upgrade lowbit or re-create the recipe"
            )
        if d.get("kind") not in ("ptq", "cast", "qat"):
            raise InvalidSpecError(f"unknown recipe kind {d.get('kind')!r}")

        def spec_parse(s: dict[str, Any] | None) -> QuantSpec | None:
            if s is None:
                return None
            w = dict(s["weight"])
            w["granularity"] = granularity_from_dict(w["granularity"])
            a = dict(s["activation"])
            a["observer_options"] = tuple(tuple(kv) for kv in a.get("observer_options", ()))
            options = tuple(tuple(kv) for kv in s.get("algorithm_options", ()))
            return QuantSpec(
                WeightSpec(**w), ActivationSpec(**a), s.get("algorithm", "rtn"), options
            )

        try:
            return cls(
                name=d["name"],
                kind=d["kind"],
                spec=spec_parse(d.get("spec")),
                cast_dtype=d.get("cast_dtype"),
                rules=tuple(Rule(r["pattern"], spec_parse(r["spec"])) for r in d.get("rules", ())),
                embeddings=d.get("embeddings"),
                version=version,
            )
        except LowbitError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            # the document's fields were missing or of the wrong type
            raise InvalidInputError(
                f"the recipe is damaged ({type(exc).__name__}: {str(exc)[:200]}); re-create it "
                "with lowbit (lowbit.quantize writes it into the save folder)"
            ) from exc
