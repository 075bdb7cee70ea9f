"""The benchmark's methods: a registry from name to how the method predicts a unit, and its label in reports.

A method is one of three kinds:

- `trained`: the training recipe plus overrides (the paper's Table 2 ablations); it trains a run folder through the
  benchmark's `train_fn` and predicts with it.
- `zero_shot`: the base LLM prompted without training; its predictions do not depend on the seed or K.
- `support`: a classifier fitted on the unit's support set by a function (the prototype baselines, CONTaiNER and
  ProML). It can only label types it has examples of, so in INTER it takes the target's support set, as in the
  domain-transfer protocol of the literature. It is given the benchmark and the unit, so an INTER method may also
  train on the source data (CONTaiNER and ProML do).

Add a method with `register_method(Method(...))`; `BenchmarkConfig.methods` accepts every registered name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cllmfs_trainer.baselines import TokenPrototypeNER

if TYPE_CHECKING:
    from cllmfs_trainer.benchmark.protocol import Benchmark, Unit
    from cllmfs_trainer.data.io import Sentence, Span
    from cllmfs_trainer.data.registry import EntityType

# (benchmark, unit, support sentences, query sentences, test types) -> (predicted spans per query sentence, extra)
FitPredict = Callable[
    ["Benchmark", "Unit", "list[Sentence]", "list[Sentence]", "list[EntityType]"],
    "tuple[list[list[Span]], dict[str, Any]]",
]
KINDS = ("trained", "zero_shot", "support")


@dataclass(frozen=True)
class Method:
    """One benchmark method.

    Args:
        name (`str`):
            The key used in configs and unit files.
        title (`str`):
            The label in reports.
        kind (`str`):
            `trained`, `zero_shot` or `support` (see the module docstring).
        overrides (`dict`, *optional*, defaults to `{}`):
            For `trained` methods, the recipe keys this method changes.
        fit_predict (`FitPredict`, *optional*):
            For `support` methods, the function that fits and predicts.
        trains_on_source (`bool`, *optional*, defaults to `False`):
            For `support` methods, whether INTER first trains on the source (OntoNotes) data; reports say so.
    """

    name: str
    title: str
    kind: str
    overrides: dict[str, Any] = field(default_factory=dict)
    fit_predict: FitPredict | None = None
    trains_on_source: bool = False

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"method {self.name!r}: kind must be one of {KINDS}, got {self.kind!r}")
        if (self.kind == "support") != (self.fit_predict is not None):
            raise ValueError(f"method {self.name!r}: fit_predict is required for, and only for, kind 'support'")

    @property
    def uses_target_support(self) -> bool:
        """Whether the method reads the target's support set in INTER (it cannot label types it never saw)."""
        return self.kind == "support"


METHODS: dict[str, Method] = {}


def register_method(method: Method) -> Method:
    """Add `method` to the registry (replacing one of the same name) and return it."""
    METHODS[method.name] = method
    return method


def get_method(name: str) -> Method:
    """The registered method called `name`.

    Raises:
        `ValueError`: naming the known methods.
    """
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; choose from {sorted(METHODS)}") from None


def method_title(name: str) -> str:
    """The report label of a method (its name, if it is not registered)."""
    return METHODS[name].title if name in METHODS else name


def method_order(name: str) -> int:
    """Position of a method in reports: registration order, unknown names last."""
    names = list(METHODS)
    return names.index(name) if name in names else len(names)


def _prototype(method: str) -> FitPredict:
    def fit_predict(benchmark, unit, support, query, test_types):
        ner = TokenPrototypeNER(benchmark.encoder(), [t.label for t in test_types], method=method)
        return ner.fit(support).predict(query), {}

    return fit_predict


register_method(Method("cllmfs", "CLLMFS (LoRA+CL+Noise)", "trained"))  # the recipe as written
register_method(Method("lora", "LoRA only", "trained", {"cl_weight": 0.0}))
register_method(Method("lora_cl", "LoRA+CL (no noise)", "trained", {"cl_noise_site": "none"}))
register_method(Method("cllmfs_format2", "CLLMFS, prompt format 2", "trained", {"prompt_format": 2}))
register_method(Method("zero_shot", "zero-shot prompting", "zero_shot"))
register_method(Method("protobert", "ProtoBERT", "support", fit_predict=_prototype("proto")))
register_method(Method("nnshot", "NNShot", "support", fit_predict=_prototype("nnshot")))


def _trains_encoder(module: str) -> FitPredict:
    """CONTaiNER and ProML (`cllmfs_trainer.baselines.<module>.fit_predict`) fine-tune their encoder on the support
    set, after training it on OntoNotes in INTER; their module is imported on first use (it needs torch)."""

    def fit_predict(benchmark, unit, support, query, test_types):
        from importlib import import_module

        method = import_module(f"cllmfs_trainer.baselines.{module}")
        return method.fit_predict(benchmark, unit, support, query, test_types)

    return fit_predict


register_method(
    Method("container", "CONTaiNER", "support", fit_predict=_trains_encoder("container"), trains_on_source=True)
)
register_method(Method("proml", "ProML", "support", fit_predict=_trains_encoder("proml"), trains_on_source=True))
