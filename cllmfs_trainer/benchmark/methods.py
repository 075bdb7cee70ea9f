"""The benchmark's methods: each knows how it predicts a unit, and its label in reports; a registry names them.

- `TrainedMethod`: the training recipe plus overrides (the paper's Table 2 ablations); it trains a run folder and
  predicts with it.
- `ZeroShotMethod`: the base LLM prompted without training, or with the shipped NER prior (`prior_zero_shot`); its
  predictions do not depend on the seed or K, so a unit of the same dataset under another seed, K or setting is reused.
- `SupportMethod`: a classifier fitted on the unit's support set by a `fit_predict` function of
  `cllmfs_trainer.benchmark.baselines` (the prototype baselines, CONTaiNER and ProML), given a `BaselineContext`.
  It can only label types it has examples of, so in INTER it takes the target's support set, as in the
  domain-transfer protocol of the literature. CONTaiNER and ProML also train on the source data first.

Add a method with `register_method(...)`; `BenchmarkConfig.methods` accepts every registered name and the names of
its own `settings` (trained methods that are never registered).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cllmfs_trainer.benchmark.baselines import TokenPrototypeNER, container, proml
from cllmfs_trainer.benchmark.baselines.context import BaselineContext
from cllmfs_trainer.data.io import Sentence, Span
from cllmfs_trainer.data.registry import EntityType
from cllmfs_trainer.data.sampling import SupportSet
from cllmfs_trainer.errors import UnknownNameError
from cllmfs_trainer.models.priors import PRIOR_START, PRIOR_ZERO_SHOT_DECODING

if TYPE_CHECKING:
    from cllmfs_trainer.benchmark.config import Unit
    from cllmfs_trainer.benchmark.runner import Benchmark

# The recipe keys that shape prompts and prediction: a zero-shot method reads them from the recipe (or its `decoding`).
DECODING_KEYS = ("prompt_format", "answer_format", "type_descriptions", "end_penalty", "one_type_per_span")

# (context, support sentences, query sentences, test types) -> (predicted spans per query sentence, extra facts)
FitPredict = Callable[
    [BaselineContext, list[Sentence], list[Sentence], list[EntityType]], tuple[list[list[Span]], dict[str, Any]]
]
Prediction = tuple[list[list[Span]], dict[str, Any]]


@dataclass(frozen=True)
class Method:
    """One benchmark method: how it predicts a unit, and how reports name it.

    Args:
        name (`str`):
            The key used in configs and unit files.
        title (`str`):
            The label in reports.
    """

    name: str
    title: str
    # What the runner and the reports need to know of a method's behaviour.
    needs_recipe = False  # trains an LLM run folder from the benchmark's recipe
    uses_target_support = False  # reads the target's support set in INTER (it cannot label types it never saw)
    same_for_every_seed = False  # predicts without the support set: one prediction per dataset serves every unit
    trains_on_source = False  # in INTER, trains on the source (OntoNotes) data first; reports say so

    def definition(self) -> dict[str, Any]:
        """What this method changes that changes results, for the benchmark's fingerprint (empty: nothing to record)."""
        return {}

    def predict(
        self,
        runner: Benchmark,
        unit: Unit,
        support: SupportSet,
        query: list[Sentence],
        train_types: list[EntityType],
        test_types: list[EntityType],
    ) -> Prediction:
        """Predict the unit's query.

        Args:
            runner (`Benchmark`):
                The benchmark run, for what it shares between units (trained run folders, loaded models).
            unit (`Unit`):
                The unit.
            support (`SupportSet`):
                The unit's support set.
            query (`list[Sentence]`):
                The sentences to predict.
            train_types (`list[EntityType]`):
                The types of the support set's source.
            test_types (`list[EntityType]`):
                The types of the query.

        Returns:
            `tuple[list[list[Span]], dict[str, Any]]`: the predicted spans per query sentence, and facts to record.
        """
        raise NotImplementedError


@dataclass(frozen=True)
class TrainedMethod(Method):
    """The training recipe with `overrides` (recipe keys this method changes), trained per source, K and seed."""

    overrides: dict[str, Any] = field(default_factory=dict)
    needs_recipe = True

    def definition(self) -> dict[str, Any]:
        return {"overrides": dict(self.overrides)} if self.overrides else {}

    def predict(self, runner, unit, support, query, train_types, test_types) -> Prediction:
        run_dir = runner.train(unit, self.overrides)
        extractor = runner.extractor(run_dir, test_types)
        predicted = [p.spans for p in extractor.predict(query)]
        extra: dict[str, Any] = {"parse_stats": extractor.stats.as_dict()}
        extra["train_seconds"] = runner.train_seconds(run_dir)
        extra["train_dtype"] = runner.train_dtype(run_dir)
        if runner.measures_support_fit(unit):
            extra["support_fit"] = runner.support_fit(extractor, support, train_types)
        return predicted, extra


@dataclass(frozen=True)
class ZeroShotMethod(Method):
    """The base LLM prompted with the instruction alone; with `adapter`, the base with that adapter merged."""

    adapter: str | None = None  # an `init_adapter` value: `prior` is the shipped NER prior of the base model
    decoding: dict[str, Any] = field(default_factory=dict)  # prediction keys (end_penalty, ...) over the recipe's
    same_for_every_seed = True

    def __post_init__(self) -> None:
        unknown = sorted(set(self.decoding) - set(DECODING_KEYS))
        if unknown:
            raise ValueError(f"{self.name}: decoding keys {unknown} are not prediction keys; known: {DECODING_KEYS}")

    def definition(self) -> dict[str, Any]:
        return {key: value for key, value in (("adapter", self.adapter), ("decoding", self.decoding)) if value}

    def predict(self, runner, unit, support, query, train_types, test_types) -> Prediction:
        extractor = runner.extractor(None, test_types, adapter=self.adapter, decoding=self.decoding)
        predicted = [p.spans for p in extractor.predict(query)]
        return predicted, {"parse_stats": extractor.stats.as_dict()}


@dataclass(frozen=True)
class SupportMethod(Method):
    """A baseline fitted on the unit's support set; `fit_predict` sees a `BaselineContext`, never the benchmark."""

    fit_predict: FitPredict | None = None
    trains_on_source: bool = False
    uses_target_support = True

    def predict(self, runner, unit, support, query, train_types, test_types) -> Prediction:
        return self.fit_predict(runner.baseline_context(unit), support.sentences, query, test_types)


METHODS: dict[str, Method] = {}


def register_method(method: Method) -> Method:
    """Add `method` to the registry (replacing one of the same name) and return it."""
    METHODS[method.name] = method
    return method


def get_method(name: str) -> Method:
    """The registered method called `name`.

    Raises:
        `UnknownNameError`: naming the known methods.
    """
    try:
        return METHODS[name]
    except KeyError:
        raise UnknownNameError(f"unknown method {name!r}; choose from {sorted(METHODS)}") from None


def method_title(name: str) -> str:
    """The report label of a method (its name, if it is not registered)."""
    return METHODS[name].title if name in METHODS else name


def method_order(name: str) -> tuple[int, str]:
    """Position of a method in reports: registration order, then unregistered names (settings) by name."""
    names = list(METHODS)
    return (names.index(name), "") if name in names else (len(names), name)


def _prototype(method: str) -> FitPredict:
    def fit_predict(context, support, query, test_types):
        ner = TokenPrototypeNER(context.frozen_encoder(), [t.label for t in test_types], method=method)
        return ner.fit(support).predict(query), {}

    return fit_predict


register_method(TrainedMethod("cllmfs", "CLLMFS (LoRA+CL+Noise)"))  # the recipe as written
register_method(TrainedMethod("lora", "LoRA only", {"cl_weight": 0.0}))
register_method(TrainedMethod("lora_cl", "LoRA+CL (no noise)", {"cl_noise_site": "none"}))
register_method(TrainedMethod("cllmfs_format2", "CLLMFS, prompt format 2", {"prompt_format": 2}))
register_method(ZeroShotMethod("zero_shot", "zero-shot prompting"))
# NER-pretrained setting, not the paper's protocol: the 5-shot stage starts from the shipped NER prior as chosen on
# dev (PRIOR_START: merged into the base under a fresh LoRA, a lower end penalty).
register_method(TrainedMethod("cllmfs_prior", "CLLMFS from the NER prior", dict(PRIOR_START)))
register_method(TrainedMethod("lora_prior", "LoRA only from the NER prior", {**PRIOR_START, "cl_weight": 0.0}))
register_method(
    ZeroShotMethod(
        "prior_zero_shot", "the NER prior, zero-shot", adapter="prior", decoding=dict(PRIOR_ZERO_SHOT_DECODING)
    )
)
register_method(SupportMethod("protobert", "ProtoBERT", fit_predict=_prototype("proto")))
register_method(SupportMethod("nnshot", "NNShot", fit_predict=_prototype("nnshot")))
# CONTaiNER and ProML fine-tune their encoder on the support set, after training it on OntoNotes in INTER.
register_method(SupportMethod("container", "CONTaiNER", fit_predict=container.fit_predict, trains_on_source=True))
register_method(SupportMethod("proml", "ProML", fit_predict=proml.fit_predict, trains_on_source=True))
